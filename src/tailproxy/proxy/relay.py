"""Bidirectional byte relay between two connected stream sockets (hot path).

Design: two one-way pumps driven by ``loop.add_reader``/``add_writer`` with
non-blocking ``recv_into`` into a preallocated buffer and ``send`` from a
memoryview of it -- no streams, no per-chunk buffers. A pump reads only when
its buffer is empty, so back-pressure is the kernel's.

Half-close: EOF on one side -> ``shutdown(SHUT_WR)`` on the other; the relay
ends when both directions reached EOF, on an error (the other side is then
reset, so the peer sees ECONNRESET as it would directly), on idle timeout or
on cancellation. **Both sockets are always closed** when :func:`relay`
returns or raises.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import socket
import struct
import threading
import time
from dataclasses import dataclass

__all__ = ["relay", "start_relay", "drain", "relay_outcome", "Relay", "RelayResult",
           "DEFAULT_BUFSIZE"]

DEFAULT_BUFSIZE = 256 * 1024
_READS_PER_WAKEUP = 8
_LINGER_RST = struct.pack("ii", 1, 0)
_SIOCINQ = 0x541B
_TCP_CLOSE_WAIT = 8


def _unread(fd: int) -> int:
    """Bytes waiting on fd for us to read (SIOCINQ); 0 if unknown."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, _SIOCINQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


@dataclass(slots=True)
class RelayResult:
    up: int = 0            # bytes a -> b
    down: int = 0          # bytes b -> a
    error: int = 0         # errno that ended it (0 = clean both-ways EOF)
    reason: str = "eof"    # "eof" | "error" | "idle" | "cancelled"
    duration: float = 0.0


def relay_outcome(error: int, reason: str) -> str:
    """The --verbose word for how a relay ended: Python's (reason a word, error an errno) or
    the node's (reason "" when clean, else why it was cut, with the errno the cut side got)."""
    if reason == "idle":
        return "ok idle-timeout"
    if reason == "cancelled":
        return "ok cancelled"
    if error:
        name = errno.errorcode.get(error, str(error))
        return f"ok then {name}" if reason in ("error", "eof") else f"ok then {name} ({reason})"
    if reason and reason != "eof":
        return f"ok then cut ({reason})"
    return "ok"


_local = threading.local()


def _shared_view(bufsize: int) -> memoryview:
    """One receive buffer per thread (one event loop per thread): a pump only holds bytes of
    its own between wake-ups when a send was partial, so idle relays cost no buffer memory."""
    views = _local.__dict__.setdefault("views", {})
    view = views.get(bufsize)
    if view is None:
        view = views[bufsize] = memoryview(bytearray(bufsize))
    return view


class _Pump:
    """One direction src -> dst."""

    __slots__ = ("r", "src", "dst", "sfd", "dfd", "view", "pending", "count", "done",
                 "reading", "writing")

    def __init__(self, r: "Relay", src: socket.socket, dst: socket.socket, bufsize: int):
        self.r = r
        self.src, self.dst = src, dst
        self.sfd, self.dfd = src.fileno(), dst.fileno()
        self.view = _shared_view(bufsize)
        self.pending: memoryview | None = None   # unsent bytes (own copy) after a partial send
        self.count = 0
        self.done = False
        self.reading = self.writing = False

    def preload(self, data: bytes) -> None:
        if len(data) > len(self.view):
            raise ValueError("initial data larger than relay buffer")
        self.pending = memoryview(bytes(data)) if data else None

    def begin(self) -> None:
        if self.pending is not None:
            self._on_writable()
        else:
            self._want_read()

    def _want_read(self) -> None:
        if not self.reading:
            self.r.loop.add_reader(self.sfd, self._on_readable)
            self.reading = True

    def _want_write(self) -> None:
        if not self.writing:
            self.r.loop.add_writer(self.dfd, self._on_writable)
            self.writing = True

    def stop(self) -> None:
        loop = self.r.loop
        if self.reading:
            loop.remove_reader(self.sfd)
            self.reading = False
        if self.writing:
            loop.remove_writer(self.dfd)
            self.writing = False

    def _on_readable(self) -> None:
        src_recv = self.src.recv_into
        dst_send = self.dst.send
        view = self.view
        for _ in range(_READS_PER_WAKEUP):
            try:
                n = src_recv(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.r.fail(exc, self.src)
                return
            if n == 0:
                self._eof()
                return
            self.count += n
            self.r.active = True
            try:
                sent = dst_send(view[:n])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.r.fail(exc, self.dst)
                return
            if sent < n:
                self.pending = memoryview(bytes(view[sent:n]))
                if self.reading:
                    self.r.loop.remove_reader(self.sfd)
                    self.reading = False
                self._want_write()
                return
            if n < len(view):     # drained the socket most likely; wait
                return

    def _on_writable(self) -> None:
        pending = self.pending
        try:
            sent = self.dst.send(pending)
        except (BlockingIOError, InterruptedError):
            self._want_write()
            return
        except OSError as exc:
            self.r.fail(exc, self.dst)
            return
        self.r.active = True
        if sent < len(pending):
            self.pending = pending[sent:]
            self._want_write()
            return
        self.pending = None
        if self.writing:
            self.r.loop.remove_writer(self.dfd)
            self.writing = False
        self._want_read()

    def _eof(self) -> None:
        self.stop()
        self.done = True
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.r.check_done()


class Relay:
    """A running relay (from :func:`start_relay`). ``on_done(result)`` is called once, after
    both sockets are closed; :meth:`abort` ends it early (reason "cancelled")."""

    __slots__ = ("loop", "a", "b", "up", "down", "idle_timeout", "active", "timer", "error",
                 "reason", "t_start", "finished", "on_done")

    def __init__(self, loop, a, b, bufsize, idle_timeout, on_done):
        self.loop = loop
        self.a, self.b = a, b
        self.on_done = on_done
        self.finished = False
        self.up = _Pump(self, a, b, bufsize)
        self.down = _Pump(self, b, a, bufsize)
        self.idle_timeout = idle_timeout
        self.active = False
        self.timer: asyncio.TimerHandle | None = None
        self.error = 0
        self.reason = "eof"
        self.t_start = time.monotonic()

    def fail(self, exc: OSError, culprit: socket.socket) -> None:
        if self.finished:
            return
        self.error = exc.errno or errno.EIO
        self.reason = "error"
        # Propagate a reset to the other side, like a direct connection would.
        other = self.b if culprit is self.a else self.a
        _set_rst(other)
        self._finish()

    def check_done(self) -> None:
        if self.up.done and self.down.done:
            self._finish()

    def bytes_so_far(self) -> tuple[int, int]:
        return self.up.count, self.down.count

    def delivering(self) -> bool:
        """Is data from ``a``'s peer (the program) still on its way, or its end still to be
        passed on? True while we hold bytes it sent, while ``a`` has unread bytes, or while
        its FIN waits (CLOSE_WAIT). What we passed to ``b`` the kernel delivers on its own, even
        after we close it. An idle connection the program keeps open is not delivering."""
        if self.finished:
            return False
        up = self.up
        if up.pending is not None or _unread(up.sfd):
            return True
        try:
            return self.a.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE_WAIT
        except OSError:
            return False

    def abort(self) -> None:
        """End now (proxy shutting down); on_done still runs, synchronously."""
        if not self.finished:
            self.reason = "cancelled"
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.stop()
        self.a.close()
        self.b.close()
        res = RelayResult(self.up.count, self.down.count, self.error, self.reason,
                          time.monotonic() - self.t_start)
        if self.on_done is not None:
            self.on_done(res)

    def _tick(self) -> None:
        if self.finished:
            return
        if self.active:
            self.active = False
            self.timer = self.loop.call_later(self.idle_timeout, self._tick)
            return
        self.reason = "idle"
        self.error = errno.ETIMEDOUT
        _set_rst(self.a)
        _set_rst(self.b)
        self._finish()

    def stop(self) -> None:
        self.up.stop()
        self.down.stop()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _set_rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass


def start_relay(a: socket.socket, b: socket.socket, on_done=None, *,
                idle_timeout: float | None = None, bufsize: int = DEFAULT_BUFSIZE,
                initial_up: bytes = b"", initial_down: bytes = b"") -> Relay:
    """Start relaying between ``a`` and ``b`` on the running loop, without a task (the
    channel's hot path). ``on_done(RelayResult)`` runs once both are closed. On an error
    while starting, both are closed and it raises."""
    loop = asyncio.get_running_loop()
    try:
        if a.gettimeout() != 0.0:       # skip the syscall for sockets made non-blocking
            a.setblocking(False)
        if b.gettimeout() != 0.0:
            b.setblocking(False)
        r = Relay(loop, a, b, bufsize, idle_timeout, on_done)
        if initial_up:
            r.up.preload(initial_up)
            r.up.count += len(initial_up)
        if initial_down:
            r.down.preload(initial_down)
            r.down.count += len(initial_down)
        r.up.begin()
        r.down.begin()
        if idle_timeout:
            r.timer = loop.call_later(idle_timeout, r._tick)
    except BaseException:
        a.close()
        b.close()
        raise
    return r


async def drain(relays, timeout: float, settle: float = 0.02) -> int:
    """Wait (at most ``timeout`` s) until none of ``relays`` is still delivering what the
    program sent (Relay.delivering), e.g. after the program exited right after sending. Idle
    connections the program holds open are not waited for. Returns how many were busy."""
    if not relays:
        return 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.sleep(settle)     # let the EOFs of an exited program's sockets arrive
    while True:
        busy = sum(1 for r in list(relays) if r.delivering())
        if not busy or loop.time() >= deadline:
            return busy
        await asyncio.sleep(0.01)


async def relay(a: socket.socket, b: socket.socket, *, idle_timeout: float | None = None,
                bufsize: int = DEFAULT_BUFSIZE, initial_up: bytes = b"",
                initial_down: bytes = b"", track: set | None = None) -> RelayResult:
    """Relay between ``a`` and ``b`` until done; always closes both.

    ``initial_up``/``initial_down`` are bytes already read from ``a``/``b``
    (e.g. after a proxy handshake) to be sent to the other side first. ``track``: a set
    that holds the running Relay (for :func:`drain`). The idle timeout fires after between ``idle_timeout`` and twice that of
    no traffic in either direction. Cancellation-safe.
    """
    fut = asyncio.get_running_loop().create_future()

    def done(res: RelayResult) -> None:
        if not fut.done():
            fut.set_result(res)

    r = start_relay(a, b, done, idle_timeout=idle_timeout, bufsize=bufsize,
                    initial_up=initial_up, initial_down=initial_down)
    if track is not None:
        track.add(r)
    try:
        return await fut
    except asyncio.CancelledError:
        r.abort()
        raise
    finally:
        if track is not None:
            track.discard(r)


async def relay_outbound(a: socket.socket, b, *, idle_timeout: float | None = None,
                         bufsize: int = DEFAULT_BUFSIZE, initial_up: bytes = b"",
                         track: set | None = None) -> tuple[int, int, int, str]:
    """Relay between the program's side ``a`` and an outbound connection ``b`` (a socket, relayed
    here, or an Upstream that relays itself) until both directions ended; ``a`` is closed.
    Returns (up, down, errno, reason); see relay_outcome."""
    if isinstance(b, socket.socket):
        if len(initial_up) > bufsize:
            await asyncio.get_running_loop().sock_sendall(b, initial_up)
            initial_up = b""
        res = await relay(a, b, idle_timeout=idle_timeout, bufsize=bufsize,
                          initial_up=initial_up, track=track)
        return res.up, res.down, res.error, res.reason
    fut = asyncio.get_running_loop().create_future()

    def ended(up: int, down: int, error: int, reason: str) -> None:
        if not fut.done():
            fut.set_result((up, down, error, reason))

    try:
        joined = b.join(a, ended, initial_up)   # it closes ``a`` when done
    except BaseException:
        a.close()
        raise
    if track is not None:
        track.add(joined)
    try:
        return await fut
    finally:
        if track is not None:
            track.discard(joined)

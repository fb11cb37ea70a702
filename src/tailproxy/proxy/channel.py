"""asyncio server of the private preload channel (docs/CHANNEL.md).

One SOCK_SEQPACKET Unix listener; each connection carries requests
(normally exactly one). A CONNECT brings the program's socket (SCM_RIGHTS).
Every socket is parked at once (blocking ones too); the duplicate is kept
until the dial has an outcome: success completes the parked connect by a
simultaneous open from a connector socket, which becomes our end of the
relay (fallback: relay listener); failure points the socket at a closed
port. See :mod:`.loopback`. The outcome is recorded under the token before
the kernel shows it (the preload's SO_ERROR hook relies on that).

Blocking: nothing here blocks the loop (loopback connects of program
sockets are made with O_NONBLOCK set for the call).
Cancellation: :meth:`ChannelServer.close` cancels every task; every received
fd is closed on every path.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import os
import socket
import stat
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Awaitable
from typing import Callable

from . import channel_proto as cp
from .accept import accepted
from .connwatch import ConnWatch
from .handoff import Forwarded, ParkedHandoff, decode_forwarded
from .dialer import (DialError, Dialer, Joined, Outbound, as_dial_error, errno_name,
                     guarded_dial)
from .loopback import LoopbackEndpoints, clear_error
from .relay import DEFAULT_BUFSIZE, relay_outcome, start_relay
from .relay import drain as drain_relays
from .udp_assoc import UdpAssociations

__all__ = ["ChannelServer", "TokenStore", "ConnLog"]

# (source, destination, outcome, bytes_up, bytes_down, duration_s)
ConnLog = Callable[[str, str, str, int, int, float], None]

_MAX_FDS = 8
_RECV_BUF = 1024
_ANC_BUF = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_UCRED = struct.Struct("3i")        # pid, uid, gid (SCM_CREDENTIALS)
_DGRAM_ANC_BUF = _ANC_BUF + socket.CMSG_SPACE(_UCRED.size)
_DGRAM_SUFFIX = ".dgram"            # the parked-CONNECT datagram socket: channel path + this
_DGRAM_BATCH = 64                   # datagrams handled per wake-up
_FORWARD_BUF = 2048                 # a forwarded datagram: header, message, reason
_PENDING_TTL = 30.0        # a relay connection must arrive within this


def _syn_give_up_s() -> float:
    """Seconds after which the kernel abandons a SYN_SENT socket."""
    try:
        with open("/proc/sys/net/ipv4/tcp_syn_retries") as f:
            n = int(f.read())
    except (OSError, ValueError):
        n = 6
    return float(2 ** (n + 1) - 1)


class TokenStore:
    """token -> final errno (0 ok, EINPROGRESS while pending). Bounded LRU,
    entries expire ``ttl`` seconds after their last update."""

    def __init__(self, maxsize: int = 65536, ttl: float = 600.0, clock=time.monotonic):
        self.maxsize, self.ttl, self.clock = maxsize, ttl, clock
        self._d: OrderedDict[int, tuple[int, float]] = OrderedDict()

    def set(self, token: int, err: int) -> None:
        d = self._d
        d[token] = (err, self.clock())
        d.move_to_end(token)
        while len(d) > self.maxsize:
            d.popitem(last=False)

    def get(self, token: int) -> int | None:
        item = self._d.get(token)
        if item is None:
            return None
        err, t = item
        if self.clock() - t > self.ttl:
            del self._d[token]
            return None
        return err

    def expire(self) -> None:
        now = self.clock()
        d = self._d
        while d:
            tok, (_err, t) = next(iter(d.items()))
            if now - t <= self.ttl:
                break
            d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


@dataclass(eq=False)
class _Pending:
    remote: socket.socket
    dst: cp.Address
    label: str
    token: int
    t0: float
    pid: int = 0
    timer: asyncio.TimerHandle | None = None


_TCP_SYN_SENT = 2


@dataclass(eq=False)
class _Job:
    """One CONNECT whose socket is parked."""
    sock: socket.socket
    dst: cp.Address
    host: str
    timeout: float
    token: int
    label: str
    t0: float
    bound: tuple | None
    park: cp.Address
    pid: int = 0


@dataclass
class _Stats:
    connects: int = 0
    relays: int = 0
    rejected_relay: int = 0
    protocol_errors: int = 0
    extra: dict = field(default_factory=dict)


class ChannelServer:
    def __init__(self, path: str, dialer: Dialer, *, endpoints: LoopbackEndpoints | None = None,
                 connect_timeout: float = 30.0, idle_timeout: float | None = None,
                 make_parent: bool = False, on_conn: ConnLog | None = None,
                 log: Callable[[str], None] | None = None, bufsize: int = DEFAULT_BUFSIZE,
                 on_listen: Callable[[cp.ListenReq], Awaitable[None]] | None = None,
                 on_names: Callable[[cp.NameRequest], Awaitable[bytes]] | None = None,
                 handoff: ParkedHandoff | None = None, watch: ConnWatch | None = None):
        self.path = path
        self.watch = watch          # the agent's measurements (connwatch.py), or None
        self.handoff = handoff      # reads the parked CONNECTs first (the node's fast path)
        self.on_listen = on_listen
        self.on_names = on_names    # RESOLVE/REVERSE/QUERY -> encoded reply (the name service)
        self.dialer = dialer
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.make_parent = make_parent
        self.on_conn = on_conn
        self.log = log or (lambda msg: None)
        self.bufsize = bufsize
        self._own_endpoints = endpoints is None
        self._endpoints = endpoints
        self._listener: socket.socket | None = None
        self._dgram: socket.socket | None = None
        self._forwarded: socket.socket | None = None     # what the hand-off passes back
        self._tasks: set[asyncio.Task] = set()
        self._relays: set[Joined] = set()
        self._pending: dict[cp.Address, _Pending] = {}
        self._peers: dict[cp.Address, cp.Address] = {}
        self.tokens = TokenStore()
        self._next_token = 1
        self._park_limit = max(1.0, _syn_give_up_s() - 2.0)
        self.stats = _Stats()
        self._closing = False
        self.udp = UdpAssociations(dialer, log=self.log)   # the preload's UDP associations

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._endpoints is None:
            self._endpoints = LoopbackEndpoints()
        parent = os.path.dirname(os.path.abspath(self.path))
        if self.make_parent:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.chmod(parent, 0o700)
        lst = _bind_private(socket.SOCK_SEQPACKET, self.path)
        try:
            lst.listen(128)
            lst.setblocking(False)
        except BaseException:
            lst.close()
            raise
        self._listener = lst
        self._dgram = self._bind_dgram(loop)
        if self._dgram is not None and self.handoff is not None:
            self._hand_off(loop, self._dgram)
        self._spawn(self._accept_channel(loop, lst))
        for rl in self._endpoints.relay_listeners:
            self._spawn(self._accept_relay(loop, rl))
        self._spawn(self._housekeeping())

    async def close(self) -> None:
        self._closing = True
        if self._forwarded is not None:
            self.handoff.close()
            asyncio.get_running_loop().remove_reader(self._forwarded.fileno())
            self._forwarded.close()
            self._forwarded = None
        if self._dgram is not None:
            asyncio.get_running_loop().remove_reader(self._dgram.fileno())
            self._dgram.close()
            self._dgram = None
            try:
                os.unlink(self.path + _DGRAM_SUFFIX)
            except OSError:
                pass
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
        for r in list(self._relays):
            r.abort()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for p in list(self._pending.values()):
            self._drop_pending(p)
        self._pending.clear()
        self._peers.clear()
        if self._own_endpoints and self._endpoints is not None:
            self._endpoints.close()
            self._endpoints = None

    async def drain(self, timeout: float) -> int:
        """See relay.drain; the hand-off's connections too."""
        if self._forwarded is None:
            return await drain_relays(self._relays, timeout)
        ours, handed = await asyncio.gather(drain_relays(self._relays, timeout),
                                            self.handoff.drain(timeout))
        return ours + handed

    @property
    def relay_addresses(self) -> list[tuple]:
        return [s.getsockname() for s in self._endpoints.relay_listeners] if self._endpoints else []

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60)
            self.tokens.expire()

    # ------------------------------------------------------------ channel
    async def _accept_channel(self, loop, lst: socket.socket) -> None:
        async for conn, _ in accepted(loop, lst, "channel", self.log):
            self._spawn(self._serve_conn(loop, conn))

    def _bind_dgram(self, loop) -> socket.socket | None:
        """The datagram socket for parked CONNECTs (docs/CHANNEL.md), next to the channel
        and as private; None if it cannot be had (the preload then uses the channel)."""
        d = None
        try:
            d = _bind_private(socket.SOCK_DGRAM, self.path + _DGRAM_SUFFIX)
            d.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            d.setblocking(False)
            loop.add_reader(d.fileno(), self._on_dgram, d)
        except OSError as exc:
            if d is not None:
                d.close()
            self.log(f"channel: no datagram socket ({exc}); parked connects use the channel")
            return None
        return d

    def _hand_off(self, loop, dgram: socket.socket) -> None:
        """Let the hand-off read the datagrams; what it passes back comes over a socket
        pair. If it cannot start, the proxy keeps reading them itself."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.handoff.start(dgram, theirs, self.park_ports, self.connect_timeout,
                               self._park_limit,
                               self._on_handoff_done
                               if self.on_conn is not None or self.watch is not None else None,
                               report_each=self.on_conn is not None)
        except OSError as exc:
            ours.close()
            self.log(f"channel: parked connects stay with the proxy: {exc}")
            return
        finally:
            theirs.close()
        loop.remove_reader(dgram.fileno())
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_forwarded, ours)
        self._forwarded = ours

    def _on_dgram(self, d: socket.socket) -> None:
        for _ in range(_DGRAM_BATCH):
            try:
                data, anc, flags, _ = d.recvmsg(_RECV_BUF, _DGRAM_ANC_BUF, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"channel: datagram socket: {exc}")
                return
            pid = 0
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS and \
                        len(cdata) >= _UCRED.size:
                    pid = _UCRED.unpack_from(cdata)[0]
            self._take_datagram(pid, data, self._take_fds(anc),
                                bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)))

    def _on_forwarded(self, s: socket.socket) -> None:
        for _ in range(_DGRAM_BATCH):
            try:
                data, anc, flags, _ = s.recvmsg(_FORWARD_BUF, _ANC_BUF, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"channel: hand-off socket: {exc}")
                return
            fds = self._take_fds(anc)
            fwd = decode_forwarded(data) if data else None
            if fwd is None or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for fd in fds:
                    _close_fd(fd)
                if not data and not fds:         # the hand-off closed its end
                    asyncio.get_running_loop().remove_reader(s.fileno())
                    return
                self.log("channel: a message from the hand-off that does not parse")
                continue
            if fwd.errno:
                self._fail_handed_back(fwd, fds)
            else:
                self._take_datagram(fwd.pid, fwd.message, fds, fwd.truncated)

    def _take_datagram(self, pid: int, data: bytes, fds: list[int], truncated: bool) -> None:
        """One parked CONNECT datagram (from the preload, or passed on by the hand-off)."""
        try:
            if truncated:
                raise cp.ProtoError(errno.EPROTO, "message or fds truncated")
            req = cp.decode_request(data, len(fds))
            if not isinstance(req, cp.ConnectReq) or not req.flags & cp.FLAG_PARKED:
                raise cp.ProtoError(errno.EPROTO, "only parked CONNECTs come as datagrams")
        except cp.ProtoError as exc:
            # nobody to reply to: the preload does not wait, its socket stays parked
            # until the kernel gives up on it
            self.stats.protocol_errors += 1
            self.log(f"channel: bad datagram: {exc} ({errno_name(exc.errno)})")
            for fd in fds:
                _close_fd(fd)
            return
        try:
            sock = socket.socket(fileno=fds[0])
        except OSError:
            _close_fd(fds[0])
            return
        if self._check_socket(sock, req.dst):
            self.stats.protocol_errors += 1
            self.log("channel: parked CONNECT for a socket that is not TCP of the right family")
            sock.close()
            return
        self.stats.connects += 1
        self._adopt_parked(pid, req, sock)

    def _fail_handed_back(self, fwd: Forwarded, fds: list[int]) -> None:
        """The hand-off's dial failed: fail the program's connect with its errno, as a dial
        of ours would have been."""
        try:
            req = cp.decode_request(fwd.message, len(fds))
            sock = socket.socket(fileno=fds.pop(0)) if isinstance(req, cp.ConnectReq) else None
        except (cp.ProtoError, OSError):
            req, sock = None, None
        for fd in fds:
            _close_fd(fd)
        if sock is None:
            self.log("channel: the hand-off passed back a failed dial that does not parse")
            return
        self.stats.connects += 1
        _, _, label = self._dial_params(req)
        self.tokens.set((fwd.pid << 32) | req.seq, fwd.errno)   # before the kernel shows it
        self.log(f"{label}: {fwd.reason}")
        self._fail_parked(sock, req.dst, None)
        self._failed(label, errno_name(fwd.errno), time.monotonic(), fwd.pid, req, source="node")
        sock.close()

    def _on_handoff_done(self, ev: dict) -> None:
        """Connections the hand-off took have ended (the node sends their reports in batches,
        node/parked_reports.go)."""
        if ev.get("ev") != "done_batch":
            return
        for one in ev.get("done") or ():
            self._handed_off_ended(one)

    def _handed_off_ended(self, ev: dict) -> None:
        label = ev.get("dst") or "?"    # the node's canonical "ip:port" (IPv4-mapped unmapped)
        outcome = relay_outcome(ev.get("errno", 0), ev.get("reason", ""))
        up, down, duration = ev.get("up", 0), ev.get("down", 0), ev.get("ms", 0) / 1000
        if self.watch is not None:
            self.watch.relayed_by_node(ev.get("pid", 0), label, ev.get("connect_us", 0) / 1e6,
                                       duration, up, down, outcome)
        self._report(label, outcome, up, down, time.monotonic() - duration, source="node")

    async def _recvmsg(self, loop, conn: socket.socket):
        fd = conn.fileno()
        while True:
            try:
                return conn.recvmsg(_RECV_BUF, _ANC_BUF, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                pass
            fut = loop.create_future()
            loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
            try:
                await fut
            finally:
                loop.remove_reader(fd)

    @staticmethod
    def _take_fds(ancdata) -> list[int]:
        fds: list[int] = []
        for level, typ, data in ancdata:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(data[: len(data) - (len(data) % a.itemsize)])
                fds.extend(a)
        return fds

    async def _serve_conn(self, loop, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            while True:
                try:
                    data, anc, flags, _ = await self._recvmsg(loop, conn)
                except OSError:
                    return
                fds = self._take_fds(anc)
                if not data and not fds:
                    return            # EOF
                try:
                    if flags & socket.MSG_TRUNC:
                        raise cp.ProtoError(errno.EPROTO, "message too long")
                    if flags & socket.MSG_CTRUNC:
                        raise cp.ProtoError(errno.EBADF, "too many fds")
                    req = cp.decode_request(data, len(fds))
                except cp.ProtoError as exc:
                    self.stats.protocol_errors += 1
                    self.log(f"channel: bad request: {exc} ({errno_name(exc.errno)})")
                    self._send(conn, cp.encode_error_reply(exc.op, exc.errno))
                    return
                if isinstance(req, cp.ConnectReq):
                    fd, fds = fds[0], []
                    if not await self._handle_connect(loop, conn, req, fd):
                        return
                elif isinstance(req, cp.ListenReq):
                    # A notice: no reply (the preload does not wait), never fatal.
                    if self.on_listen is not None:
                        self._spawn(self._notify_listen(req))
                elif isinstance(req, (cp.ResolveReq, cp.ReverseReq, cp.QueryReq)):
                    self._send(conn, await self._names(req))
                elif isinstance(req, cp.UdpReq):
                    self._send(conn, await self._udp(req))
                elif isinstance(req, cp.StatusReq):
                    err = self.tokens.get(req.token)
                    self._send(conn, cp.encode_status_reply(errno.ENOENT if err is None else err))
                else:
                    dst = self._peers.get(req.local.normalized())
                    if dst is None and self._forwarded is not None:
                        dst = self.handoff.peer_of(req.local.normalized())
                    self._send(conn, cp.encode_peer_reply(errno.ENOENT if dst is None else 0, dst))
        finally:
            for fd in fds:
                _close_fd(fd)
            conn.close()

    async def _notify_listen(self, req: cp.ListenReq) -> None:
        try:
            await self.on_listen(req)
        except Exception as exc:  # a broken exporter must not take the channel down
            self.log(f"channel: listen notice for port {req.port}: {exc}")

    async def _names(self, req) -> bytes:
        op = cp.OP_RESOLVE if isinstance(req, cp.ResolveReq) else (
            cp.OP_REVERSE if isinstance(req, cp.ReverseReq) else cp.OP_QUERY)
        if self.on_names is None:
            return cp.encode_error_reply(op, errno.ENOSYS)
        try:
            return await self.on_names(req)
        except Exception as exc:  # a broken name service must not take the channel down
            self.log(f"channel: name service: {exc!r}")
            return cp.encode_error_reply(op, errno.EAGAIN)

    async def _udp(self, req: cp.UdpReq) -> bytes:
        try:
            return await self.udp.answer(req)
        except Exception as exc:  # a bug here must not take the channel down
            self.log(f"channel: udp {req.local} -> {req.dst}: {exc!r}")
            return cp.encode_udp_reply(errno.EAGAIN)

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> bool:
        try:
            conn.send(data)     # SEQPACKET: one message; tiny, never EAGAIN in practice
            return True
        except OSError:
            return False

    # ------------------------------------------------------------ CONNECT
    async def _handle_connect(self, loop, conn, req: cp.ConnectReq, fd: int) -> bool:
        """Returns False when the channel connection must be closed.

        Every program socket is parked first (blocking ones too, with
        O_NONBLOCK set for that one call), so a connect interrupted on the
        program's side (EINTR, SO_SNDTIMEO) goes on like a kernel connect.
        Non-blocking socket (and no BLOCKING flag): reply {0, token} at once.
        Otherwise reply when the dial has an outcome."""
        self.stats.connects += 1
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            _close_fd(fd)
            self._send(conn, cp.encode_connect_reply(errno.EBADF))
            return False
        try:
            bad = self._check_socket(sock, req.dst)
        except OSError:
            bad = errno.EBADF
        if bad:
            sock.close()
            self._send(conn, cp.encode_connect_reply(bad))
            return False
        if req.flags & cp.FLAG_PARKED or self.watch is not None:
            try:
                pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          12))[0]
            except OSError:
                pid = 0
            if req.flags & cp.FLAG_PARKED:
                self._adopt_parked(pid, req, sock)
                return True
        else:
            pid = 0
        try:
            nonblocking = bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
            bound = sock.getsockname()
            err, park = self._endpoints.park(sock, req.dst)
        except OSError as exc:
            err, park = exc.errno or errno.EINVAL, None
        token = self._next_token
        self._next_token += 1
        host, timeout, label = self._dial_params(req)
        t0 = time.monotonic()
        if err:
            sock.close()
            self._send(conn, cp.encode_connect_reply(err))
            self._failed(label, errno_name(err), t0, pid, req)
            return True
        self.tokens.set(token, errno.EINPROGRESS)
        job = _Job(sock, req.dst, host, timeout, token, label, t0, bound, park, pid)

        if nonblocking and not req.blocking:
            self._begin_dial(job)
            self._send(conn, cp.encode_connect_reply(0, token))
            return True

        # blocking: reply when the dial has an outcome
        try:
            try:
                remote = await self._dial(host, req.dst.port, timeout)
            except DialError as exc:
                self.tokens.set(token, exc.errno)
                self._failed(label, exc.name, t0, pid, req)
                # unconnected again *before* the reply, so a retry can connect
                self._endpoints.unpark(sock, bound)
                if not self._send(conn, cp.encode_connect_reply(exc.errno, token)):
                    # the preload gave up (EINTR/SO_SNDTIMEO): leave it failed
                    self._to_closed(sock, req.dst)
                return True
            except asyncio.CancelledError:
                self.tokens.set(token, errno.ECONNRESET)
                self._fail_parked(sock, req.dst, bound)
                raise
            err = self._complete(job, remote)
            if err == 0:
                self._endpoints.mark_connected(sock)
            self._send(conn, cp.encode_connect_reply(err, token))
            return True
        finally:
            sock.close()

    def _dial_params(self, req: cp.ConnectReq) -> tuple[str, float, str]:
        """(what to dial, timeout bounded by the parked socket's life, label for logs)."""
        timeout = min(req.timeout_ms / 1000.0 if req.timeout_ms else self.connect_timeout,
                      self._park_limit)
        host = req.host or req.dst.ip
        label = f"{host}:{req.dst.port}" if ":" not in host else f"[{host}]:{req.dst.port}"
        return host, timeout, label

    def _adopt_parked(self, pid: int, req: cp.ConnectReq, sock: socket.socket) -> None:
        """The preload's fast path: it parked the socket at our parking listener and does
        not wait for a reply. Its token is its pid (from the kernel) and the seq."""
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except OSError:
            state = -1
        fs = self._endpoints.v4 if sock.family == socket.AF_INET else self._endpoints.v6
        if not pid or state != _TCP_SYN_SENT or fs is None:
            self.stats.protocol_errors += 1
            self.log(f"channel: parked CONNECT for a socket that is not parked (state {state})")
            sock.close()
            return
        token = (pid << 32) | req.seq
        park = (cp.Address(cp.FAMILY_V4, "127.0.0.1", fs.park_port) if sock.family == socket.AF_INET
                else cp.Address(cp.FAMILY_V6, "::1", fs.park_port))
        host, timeout, label = self._dial_params(req)
        self.tokens.set(token, errno.EINPROGRESS)
        job = _Job(sock, req.dst, host, timeout, token, label, time.monotonic(), None, park, pid)
        self._begin_dial(job)

    @property
    def park_ports(self) -> tuple[int, int]:
        """(IPv4, IPv6) parking ports for the preload's TAILPROXY_PARK (0: none)."""
        e = self._endpoints
        return (e.v4.park_port if e else 0, e.v6.park_port if e and e.v6 else 0)

    @staticmethod
    def _check_socket(sock: socket.socket, dst: cp.Address) -> int:
        # family, type and proto were read from the kernel by socket(fileno=...)
        if sock.type != socket.SOCK_STREAM:
            return errno.EINVAL
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return errno.EINVAL
        if sock.proto not in (0, socket.IPPROTO_TCP):
            return errno.EINVAL
        if sock.family == socket.AF_INET and dst.family != cp.FAMILY_V4:
            return errno.EINVAL
        return 0

    async def _dial(self, host: str, port: int, timeout: float, started=None) -> Outbound:
        return await guarded_dial(self.dialer, host, port, timeout, self.log, started)

    def _begin_dial(self, job: "_Job") -> None:
        """Dial for a parked socket. The dialer often has a direct connection at once: then
        no task, no loop round trip (the hot path)."""
        try:
            res = self.dialer.start_dial(job.host, job.dst.port, job.timeout)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            err = as_dial_error(exc, job.host, job.dst.port, self.log)
            self.tokens.set(job.token, err.errno)
            self._fail_parked(job.sock, job.dst, job.bound)
            self._failed_job(job, err.name)
            job.sock.close()
            return
        if not isinstance(res, Awaitable):
            try:
                self._complete(job, res)
            finally:
                job.sock.close()
            return
        self._spawn(self._finish_parked(job, res))

    async def _finish_parked(self, job: "_Job", started=None) -> None:
        """Background dial of a parked non-blocking socket (``started``: an awaitable
        from the dialer's start_dial)."""
        sock = job.sock
        try:
            try:
                remote = await self._dial(job.host, job.dst.port, job.timeout, started)
            except DialError as exc:
                # record the outcome *before* the kernel shows it
                self.tokens.set(job.token, exc.errno)
                self._fail_parked(sock, job.dst, job.bound)
                self._failed_job(job, exc.name)
                return
            self._complete(job, remote)
        except asyncio.CancelledError:
            # proxy shutting down: fail the program's connect now rather than
            # leave it in SYN_SENT until the kernel gives up
            self.tokens.set(job.token, errno.ECONNRESET)
            if sock.fileno() != -1:
                self._fail_parked(sock, job.dst, job.bound)
            raise
        finally:
            sock.close()

    def _fail_parked(self, sock, dst, bound) -> None:
        """Parked socket -> failed (SO_ERROR ECONNREFUSED, POLLERR)."""
        try:
            if self._endpoints.unpark_to(sock, dst, "closed", bound) == 0:
                return
        except OSError:
            pass
        self._to_closed(sock, dst)

    def _to_closed(self, sock, dst) -> None:
        """Mark an unconnected socket failed (ECONNREFUSED)."""
        try:
            clear_error(sock)
            self._endpoints.to_closed(sock, dst)
        except OSError:
            pass

    def _complete(self, job: "_Job", remote: Outbound) -> int:
        """Dial succeeded: complete the parked socket's connect and start the
        relay. Primary: simultaneous open from a connector socket (no visible
        transition). Fallback: disconnect and connect to the relay listener.
        Returns 0 or an errno (``remote`` closed, socket marked failed)."""
        sock, dst = job.sock, job.dst
        self.tokens.set(job.token, 0)       # the outcome is recorded first
        try:
            connector, local = self._endpoints.open_connector(sock, job.park)
        except OSError as exc:
            self.log(f"connector for {job.label}: {exc}; using the relay listener")
        else:
            self._peers[local] = dst
            self.stats.relays += 1
            self.stats.extra["via_connector"] = self.stats.extra.get("via_connector", 0) + 1
            self._start_relay(connector, remote, dst, job.label, job.t0, local, job.pid)
            return 0
        try:
            err = self._endpoints.unpark_to(sock, dst, "relay", job.bound)
            if err:
                raise OSError(err, os.strerror(err))
            local = cp.Address.from_sockaddr(sock.getsockname())
        except OSError as exc:
            err = exc.errno or errno.ECONNRESET
            remote.close()
            self.tokens.set(job.token, err)
            self._to_closed(sock, dst)
            self._failed_job(job, errno_name(err))
            return err
        old = self._pending.pop(local, None)
        if old is not None:
            self._drop_pending(old)
        p = _Pending(remote, dst, job.label, job.token, job.t0, job.pid)
        p.timer = asyncio.get_running_loop().call_later(_PENDING_TTL, self._expire_pending, local)
        self._pending[local] = p
        self._peers[local] = dst
        return 0

    def _expire_pending(self, local) -> None:
        p = self._pending.pop(local, None)
        if p is not None:
            self._drop_pending(p)
            if self._peers.get(local) is p.dst:
                del self._peers[local]
            self._report(p.label, "ETIMEDOUT(relay)", 0, 0, p.t0)
            if self.watch is not None:
                self.watch.failed(p.pid, p.label, _addr(p.dst), "ETIMEDOUT(relay)", p.t0)

    @staticmethod
    def _drop_pending(p: _Pending) -> None:
        if p.timer is not None:
            p.timer.cancel()
        p.remote.close()

    # ------------------------------------------------------------ relay
    async def _accept_relay(self, loop, lst: socket.socket) -> None:
        async for conn, addr in accepted(loop, lst, "relay", self.log):
            try:
                key = cp.Address.from_sockaddr(addr)
            except ValueError:
                key = None
            p = self._pending.pop(key, None) if key is not None else None
            if p is None:
                self.stats.rejected_relay += 1
                try:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                except OSError:
                    pass
                conn.close()
                continue
            if p.timer is not None:
                p.timer.cancel()
            self.stats.relays += 1
            self.stats.extra["via_relay_listener"] = self.stats.extra.get("via_relay_listener", 0) + 1
            self._start_relay(conn, p.remote, p.dst, p.label, p.t0, key, p.pid)

    def _start_relay(self, conn: socket.socket, remote: Outbound, dst, label, t0,
                     key, pid: int = 0) -> None:
        """Relay with no task of its own (a callback ends it): the hot path. A socket is
        relayed here; an Upstream (the tailnet node) relays itself."""
        relays = self._relays
        r = None
        watched = None

        def ended(up: int, down: int, error: int, reason: str) -> None:
            if r is not None:
                relays.discard(r)
            outcome = relay_outcome(error, reason)
            self._report(label, outcome, up, down, t0)
            if watched is not None:
                self.watch.closed(watched, up, down, outcome)
            # Forget at once: the local port may be reused by an unrelated socket, and a PEER
            # answer for it would then lie (the preload's fd table covers the live socket).
            self._forget_peer(key, dst)

        try:
            if isinstance(remote, socket.socket):
                r = start_relay(conn, remote, lambda res: ended(res.up, res.down, res.error,
                                                                res.reason),
                                idle_timeout=self.idle_timeout, bufsize=self.bufsize)
            else:
                r = remote.join(conn, ended)
        except OSError as exc:
            outcome = f"ok then {errno_name(exc.errno or errno.EIO)}"
            self._report(label, outcome, 0, 0, t0)
            if self.watch is not None:
                self.watch.failed(pid, label, _addr(dst), outcome, t0)
            self._forget_peer(key, dst)
            return
        if not r.finished:
            relays.add(r)
            if self.watch is not None:
                watched = self.watch.opened(pid, label, _addr(dst), not isinstance(remote, socket.socket),
                                            t0, r)

    def _forget_peer(self, key, dst) -> None:
        if self._peers.get(key) is dst:
            del self._peers[key]

    def _failed(self, label, outcome, t0, pid, req: cp.ConnectReq, source: str = "channel") -> None:
        """A connect that failed: the --verbose line and the watcher."""
        self._report(label, outcome, 0, 0, t0, source)
        if self.watch is not None:
            self.watch.failed(pid, label, _addr(req.dst), outcome, t0)

    def _failed_job(self, job: "_Job", outcome: str) -> None:
        self._report(job.label, outcome, 0, 0, job.t0)
        if self.watch is not None:
            self.watch.failed(job.pid, job.label, _addr(job.dst), outcome, job.t0)

    def _report(self, label, outcome, up, down, t0, source: str = "channel") -> None:
        if self.on_conn is not None:
            try:
                self.on_conn(source, label, outcome, up, down, time.monotonic() - t0)
            except Exception:
                pass


def _bind_private(kind: int, path: str) -> socket.socket:
    """A Unix socket of ``kind`` bound at ``path``, mode 0600 from the start (a stale socket
    file there is replaced). Raises OSError."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    except BaseException:
        sock.close()
        raise
    return sock


def _addr(dst: cp.Address) -> str:
    """ip:port or [ip]:port, the address the program connected to."""
    return f"[{dst.ip}]:{dst.port}" if ":" in dst.ip else f"{dst.ip}:{dst.port}"


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass

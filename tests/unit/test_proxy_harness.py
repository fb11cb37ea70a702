"""Shared helpers for the proxy tests (no tests here).

The proxy runs in a background thread with its own event loop, so the tests
drive it with plain blocking sockets -- the way libtailproxy.so does.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import sys
import threading
import time

try:
    import tailproxy.proxy  # noqa: F401
except ImportError:  # running from a checkout without installation
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from tailproxy.proxy import channel_proto as cp  # noqa: E402
from tailproxy.proxy.dialer import DialError  # noqa: E402
from tailproxy.proxy.server import Proxy  # noqa: E402


def count_fds() -> int:
    # Collect first: sockets dropped by earlier tests may sit in reference
    # cycles and close at a random later moment, skewing a before/after count.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def assert_no_fd_leak(before: int, wait: float = 2.0) -> None:
    """Fail if this process holds more fds than ``before``.

    Fewer is fine: unrelated garbage may close meanwhile. The proxy thread
    closes its side asynchronously, so give it ``wait`` seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        now = count_fds()
        if now <= before:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"fd leak: {now} open, {before} before")
        time.sleep(0.02)


def wait_until(condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll `condition()` until true; fail after `timeout` s (instead of sleeping a fixed time
    and hoping the state was reached)."""
    t_end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > t_end:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        time.sleep(0.005)


class FakeDialer:
    """Scripted dialer. ``script[(host, port)] = outcome`` where outcome is
    ``"echo"`` (an AF_UNIX socketpair whose far end echoes), an errno (int),
    ``("tcp", host, port)`` (really connect there, loopback only), or a
    callable. ``gate(host, port)`` makes dials to that destination wait until
    ``release``. Unknown destinations -> EHOSTUNREACH."""

    def __init__(self):
        self.script: dict = {}
        self.gates: dict = {}
        self.calls: list = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._echo_tasks: set = set()

    def gate(self, host, port):
        ev = threading.Event()
        self.gates[(host, port)] = ev
        return ev

    def start_dial(self, host: str, port: int, timeout: float):
        return self.dial(host, port, timeout)

    async def dial(self, host: str, port: int, timeout: float) -> socket.socket:
        self.loop = asyncio.get_running_loop()
        self.calls.append((host, port, timeout))
        ev = self.gates.get((host, port))
        if ev is not None:
            t_end = time.monotonic() + timeout
            while not ev.is_set():
                if time.monotonic() > t_end:
                    raise DialError(errno.ETIMEDOUT)
                await asyncio.sleep(0.005)
        outcome = self.script.get((host, port), errno.EHOSTUNREACH)
        if callable(outcome):
            outcome = outcome()
        if isinstance(outcome, int):
            raise DialError(outcome, f"{host}:{port}: {os.strerror(outcome)}")
        if outcome == "echo":
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            t = asyncio.get_running_loop().create_task(self._echo(b))
            self._echo_tasks.add(t)
            t.add_done_callback(self._echo_tasks.discard)
            return a
        if outcome[0] == "tcp":
            s = socket.socket(socket.AF_INET6 if ":" in outcome[1] else socket.AF_INET)
            s.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(s, outcome[1:3])
            except OSError as exc:
                s.close()
                raise DialError(exc.errno) from None
            return s
        raise AssertionError(outcome)

    async def dial_udp(self, host: str, port: int, timeout: float) -> socket.socket:
        """``script[(host, port)]``: "echo" (a SOCK_SEQPACKET pair whose far end echoes each
        datagram, as the node's relay carries them) or an errno."""
        self.calls.append(("udp", host, port, timeout))
        outcome = self.script.get((host, port), errno.EHOSTUNREACH)
        if isinstance(outcome, int):
            raise DialError(outcome, f"{host}:{port}: {os.strerror(outcome)}")
        assert outcome == "echo", outcome
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a.setblocking(False)
        b.setblocking(False)
        t = asyncio.get_running_loop().create_task(self._echo_datagrams(b))
        self._echo_tasks.add(t)
        t.add_done_callback(self._echo_tasks.discard)
        return a

    @staticmethod
    async def _echo_datagrams(s: socket.socket):
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(s, 65536):
                await loop.sock_sendall(s, data)
        except OSError:
            pass
        finally:
            s.close()

    @staticmethod
    async def _echo(s: socket.socket):
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(s, 65536)
                if not data:
                    s.shutdown(socket.SHUT_WR)
                    # wait for the other side to go away
                    await loop.sock_recv(s, 1)
                    return
                await loop.sock_sendall(s, data)
        except OSError:
            pass
        finally:
            s.close()


class ProxyThread:
    def __init__(self, dialer, **kw):
        self.dialer = dialer
        self.loop = asyncio.new_event_loop()
        self.logs: list[str] = []
        kw.setdefault("log", self.logs.append)
        self.proxy = Proxy(dialer, **kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.proxy.start())

    def call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        try:
            self.call(self.proxy.close())
            # let the fake's echo tasks finish
            async def drain():
                for _ in range(100):
                    if not getattr(self.dialer, "_echo_tasks", None):
                        return
                    await asyncio.sleep(0.01)
                for t in list(self.dialer._echo_tasks):
                    t.cancel()
            self.call(drain())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def channel_request(path: str, msg: bytes, fds=(), timeout: float = 5.0) -> cp.Reply | None:
    """One request on a fresh channel connection, like the preload. Returns
    the decoded reply, or None if the proxy closed without one."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        c.settimeout(timeout)
        c.connect(path)
        if fds:
            socket.send_fds(c, [msg], list(fds))
        else:
            c.send(msg)
        data = c.recv(4096)
        return cp.decode_reply(data) if data else None
    finally:
        c.close()


def connect_via_channel(path: str, sock: socket.socket, ip: str, port: int, *,
                        blocking=None, host: str = "", timeout_ms: int = 0) -> cp.Reply:
    fam = 6 if ":" in ip else 4
    if blocking is None:
        blocking = sock.gettimeout() is None or sock.gettimeout() > 0
    msg = cp.encode_connect(cp.Address(fam, ip, port), blocking=blocking, host=host,
                            timeout_ms=timeout_ms)
    return channel_request(path, msg, [sock.fileno()], timeout=30)


def wait_writable(sock: socket.socket, timeout: float) -> int:
    import select
    p = select.poll()
    p.register(sock, select.POLLOUT)
    ev = p.poll(timeout * 1000)
    return ev[0][1] if ev else 0

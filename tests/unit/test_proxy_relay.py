"""relay(): half-close, errors, idle timeout, cancellation, any family."""

import asyncio
import errno
import socket

import pytest

from test_proxy_harness import assert_no_fd_leak, count_fds  # sets sys.path
from tailproxy.proxy.relay import relay


def pairs():
    """(program side, relay side a) and (relay side b, far side)."""
    p, a = socket.socketpair()
    b, f = socket.socketpair()
    for s in (p, f):
        s.setblocking(False)
    return p, a, b, f


def run(coro):
    return asyncio.run(coro)


async def recv_all(loop, s, n=None):
    out = b""
    while n is None or len(out) < n:
        chunk = await loop.sock_recv(s, 65536)
        if not chunk:
            break
        out += chunk
    return out


def test_both_directions_and_half_close():
    async def main():
        loop = asyncio.get_running_loop()
        p, a, b, f = pairs()
        task = loop.create_task(relay(a, b))
        data_up = bytes(range(256)) * 4000           # > buffer, exercises partial sends
        async def send():
            await loop.sock_sendall(p, data_up)
            p.shutdown(socket.SHUT_WR)
        got, _ = await asyncio.gather(recv_all(loop, f), send())
        assert got == data_up                         # EOF propagated
        await loop.sock_sendall(f, b"reply after half-close")
        f.shutdown(socket.SHUT_WR)
        assert await recv_all(loop, p) == b"reply after half-close"
        res = await asyncio.wait_for(task, 5)
        assert (res.up, res.down, res.reason, res.error) == (len(data_up), 22, "eof", 0)
        assert a.fileno() == -1 and b.fileno() == -1
        p.close()
        f.close()
    run(main())


def test_tcp_loopback_large_both_ways():
    async def main():
        loop = asyncio.get_running_loop()
        l1 = socket.create_server(("127.0.0.1", 0))
        l2 = socket.create_server(("127.0.0.1", 0))
        for s in (l1, l2):
            s.setblocking(False)
        p = socket.socket()
        p.setblocking(False)
        await loop.sock_connect(p, l1.getsockname())
        a, _ = await loop.sock_accept(l1)
        f = socket.socket()
        f.setblocking(False)
        await loop.sock_connect(f, l2.getsockname())
        b, _ = await loop.sock_accept(l2)
        task = loop.create_task(relay(a, b, bufsize=4096))
        n = 8 << 20
        blob = b"\xab" * n

        async def send_close(s):
            await loop.sock_sendall(s, blob)
            s.shutdown(socket.SHUT_WR)
        r1, r2, *_ = await asyncio.gather(recv_all(loop, f), recv_all(loop, p),
                                          send_close(p), send_close(f))
        assert len(r1) == n and len(r2) == n
        res = await asyncio.wait_for(task, 10)
        assert res.up == n and res.down == n
        for s in (p, f, l1, l2):
            s.close()
    run(main())


def test_initial_data():
    async def main():
        loop = asyncio.get_running_loop()
        p, a, b, f = pairs()
        task = loop.create_task(relay(a, b, initial_up=b"HEAD", initial_down=b"hello"))
        assert await recv_all(loop, f, 4) == b"HEAD"
        assert await recv_all(loop, p, 5) == b"hello"
        p.close()
        f.close()
        res = await asyncio.wait_for(task, 5)
        assert res.up == 4 and res.down == 5
    run(main())


def test_reset_propagates():
    async def main():
        loop = asyncio.get_running_loop()
        l1 = socket.create_server(("127.0.0.1", 0))
        l2 = socket.create_server(("127.0.0.1", 0))
        p = socket.create_connection(l1.getsockname())
        a, _ = l1.accept()
        f = socket.create_connection(l2.getsockname())
        b, _ = l2.accept()
        p.setblocking(False)
        task = loop.create_task(relay(a, b))
        # far side resets
        f.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        f.close()
        res = await asyncio.wait_for(task, 5)
        assert res.reason == "error" and res.error == errno.ECONNRESET
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(recv_all(loop, p), 5)
        p.close()
        l1.close()
        l2.close()
    run(main())


def test_idle_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        p, a, b, f = pairs()
        task = loop.create_task(relay(a, b, idle_timeout=0.1))
        await loop.sock_sendall(p, b"x")
        assert await recv_all(loop, f, 1) == b"x"
        res = await asyncio.wait_for(task, 2)
        assert res.reason == "idle" and res.up == 1
        p.close()
        f.close()
    run(main())


def test_idle_timeout_not_while_active():
    async def main():
        loop = asyncio.get_running_loop()
        p, a, b, f = pairs()
        task = loop.create_task(relay(a, b, idle_timeout=0.15))
        for _ in range(8):
            await loop.sock_sendall(p, b"x")
            await recv_all(loop, f, 1)
            await asyncio.sleep(0.05)
        assert not task.done()
        p.close()
        f.close()
        res = await asyncio.wait_for(task, 2)
        assert res.reason == "eof"
    run(main())


def test_cancellation_closes_both():
    async def main():
        loop = asyncio.get_running_loop()
        p, a, b, f = pairs()
        task = loop.create_task(relay(a, b))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert a.fileno() == -1 and b.fileno() == -1
        assert await recv_all(loop, p) == b""
        p.close()
        f.close()
    run(main())


def test_no_fd_leak():
    async def main():
        loop = asyncio.get_running_loop()
        before = count_fds()
        for _ in range(200):
            p, a, b, f = pairs()
            t = loop.create_task(relay(a, b))
            await loop.sock_sendall(p, b"abc")
            await recv_all(loop, f, 3)
            p.close()
            f.close()
            await t
        assert_no_fd_leak(before)
    run(main())


def test_start_relay_calls_back_once_with_the_result():
    from tailproxy.proxy.relay import start_relay

    async def main():
        loop = asyncio.get_running_loop()
        p, a, b, f = pairs()
        results = []
        done = asyncio.Event()
        r = start_relay(a, b, lambda res: (results.append(res), done.set()))
        await loop.sock_sendall(p, b"ping")
        assert await recv_all(loop, f, 4) == b"ping"
        p.shutdown(socket.SHUT_WR)
        f.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.05)
        assert len(results) == 1 and r.finished
        assert (results[0].up, results[0].down, results[0].reason) == (4, 0, "eof")
        assert a.fileno() == -1 and b.fileno() == -1
        r.abort()                                   # after the end: nothing happens
        assert len(results) == 1
        p.close()
        f.close()
    run(main())


def test_start_relay_abort_closes_both_and_reports_cancelled():
    from tailproxy.proxy.relay import start_relay

    async def main():
        loop = asyncio.get_running_loop()
        p, a, b, f = pairs()
        results = []
        r = start_relay(a, b, results.append, idle_timeout=30)
        await loop.sock_sendall(p, b"x")
        assert await recv_all(loop, f, 1) == b"x"
        r.abort()
        assert [x.reason for x in results] == ["cancelled"]
        assert a.fileno() == -1 and b.fileno() == -1
        assert await recv_all(loop, p) == b""       # the program side sees the end
        p.close()
        f.close()
    run(main())


class _SettlingSocket(socket.socket):
    """Like the node's dial connection: the relay lets it drain before a half-close."""
    settle_before_half_close = True


def _half_close_delay(nbytes):
    """Seconds from the program's EOF to the settling side seeing it, after nbytes went up."""
    import time

    async def main():
        loop = asyncio.get_running_loop()
        p, a = socket.socketpair()
        x, f = socket.socketpair()
        b = _SettlingSocket(fileno=x.detach())
        for s in (p, f):
            s.setblocking(False)
        task = loop.create_task(relay(a, b))
        payload = b"x" * nbytes
        reader = loop.create_task(recv_all(loop, f))
        await loop.sock_sendall(p, payload)
        t0 = time.monotonic()
        p.shutdown(socket.SHUT_WR)
        got = await asyncio.wait_for(reader, 10)
        delay = time.monotonic() - t0
        assert got == payload
        f.close()
        await asyncio.wait_for(task, 10)
        p.close()
        return delay
    return run(main())



"""Ordinary programs under the preload: Python's socket and asyncio, which use
non-blocking connects with poll/epoll and SO_ERROR underneath."""
import sys
import textwrap

import pytest

from preload_env import UNREACH4, V4, V6

SERVER = textwrap.dedent("""
    import asyncio, errno, socket, sys, threading
    ip = sys.argv[1]

    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    lst = socket.socket(fam); lst.bind((ip, 0)); lst.listen(16)
    port = lst.getsockname()[1]

    def echo():
        while True:
            c, _ = lst.accept()
            c.sendall(c.recv(100).upper()); c.close()
    threading.Thread(target=echo, daemon=True).start()
""")


def py(run, body, *args, **kw):
    return run.run_cmd([sys.executable, "-c", SERVER + textwrap.dedent(body), *args], **kw)


@pytest.mark.parametrize("ip", [V4, V6])
def test_python_create_connection_with_timeout(run, ip):
    py(run, """
        s = socket.create_connection((ip, port), timeout=5)   # non-blocking connect + poll
        assert s.getpeername()[:2] == (ip, port), s.getpeername()
        s.sendall(b"hi"); assert s.recv(10) == b"HI"
        print("ok")
    """, ip)


@pytest.mark.parametrize("ip", [V4, V6])
def test_python_asyncio(run, ip):
    py(run, """
        async def main():
            r, w = await asyncio.open_connection(ip, port)
            w.write(b"hey"); await w.drain()
            assert await r.read(10) == b"HEY"
            w.close()
            try:
                await asyncio.open_connection(sys.argv[2], 80)
            except OSError as e:
                assert e.errno == errno.EHOSTUNREACH, e
            else:
                raise AssertionError("connected to an unreachable address")
        asyncio.run(main())
        print("ok")
    """, ip, UNREACH4)


def test_python_blocking_refused_and_unreachable(run):
    py(run, """
        closed = socket.socket(); closed.bind((ip, 0))
        for dst, want in (((ip, closed.getsockname()[1]), errno.ECONNREFUSED),
                          ((sys.argv[2], 80), errno.EHOSTUNREACH)):
            s = socket.socket()
            try:
                s.connect(dst)
            except OSError as e:
                assert e.errno == want, (dst, e)
            else:
                raise AssertionError(dst)
            for timeout in (5,):
                try:
                    socket.create_connection(dst, timeout=timeout)
                except OSError as e:
                    assert e.errno == want, (dst, e)
        print("ok")
    """, V4, UNREACH4)

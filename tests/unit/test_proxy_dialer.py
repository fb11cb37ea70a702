"""DirectDialer on loopback only, and the DialError type."""

import asyncio
import errno
import socket

import pytest

from test_proxy_harness import assert_no_fd_leak, count_fds  # sets sys.path
from tailproxy.proxy.dialer import DialError, Dialer, DirectDialer


def dial(host, port, timeout=5.0, dialer=None):
    async def main():
        s = await (dialer or DirectDialer()).dial(host, port, timeout)
        try:
            assert s.getblocking() is False
            assert s.type == socket.SOCK_STREAM
            return s.getpeername()
        finally:
            s.close()
    return asyncio.run(main())


def dial_err(host, port, timeout=5.0, dialer=None):
    with pytest.raises(DialError) as ei:
        dial(host, port, timeout, dialer)
    return ei.value


def test_protocol():
    assert isinstance(DirectDialer(), Dialer)


def test_success():
    lst = socket.create_server(("127.0.0.1", 0))
    assert dial("127.0.0.1", lst.getsockname()[1])[1] == lst.getsockname()[1]
    lst.close()


def test_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))        # bound, not listening: refused
    e = dial_err("127.0.0.1", s.getsockname()[1])
    assert e.errno == errno.ECONNREFUSED and e.name == "ECONNREFUSED"
    assert "refused" in str(e).lower()
    s.close()


def test_timeout():
    park = socket.socket()
    park.bind(("127.0.0.1", 0))
    park.listen(0)
    filler = socket.create_connection(park.getsockname())   # accept queue now full
    before = count_fds()
    e = dial_err("127.0.0.1", park.getsockname()[1], timeout=0.3)
    assert e.errno == errno.ETIMEDOUT
    assert_no_fd_leak(before)
    filler.close()
    park.close()


def test_name_not_found(monkeypatch):
    async def fake_gai(self, host, port, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_gai)
    e = dial_err("no-such-host.invalid", 80)
    assert e.errno == errno.EHOSTUNREACH
    assert "resolve" in str(e)


def test_name_resolution_used(monkeypatch):
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]

    async def fake_gai(self, host, p, **kw):
        assert host == "db.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))]
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_gai)
    assert dial("db.example", port)[1] == port
    lst.close()


def test_second_address_after_refusal(monkeypatch):
    lst = socket.create_server(("127.0.0.1", 0))
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))

    async def fake_gai(self, host, p, **kw):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", dead.getsockname()[1])),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", lst.getsockname()[1]))]
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", fake_gai)
    assert dial("two.example", 1)[1] == lst.getsockname()[1]
    lst.close()
    dead.close()


def test_ipv6_loopback():
    try:
        lst = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6")
    assert dial("::1", lst.getsockname()[1])[1] == lst.getsockname()[1]
    lst.close()


def test_dialerror_defaults():
    e = DialError(errno.ENETUNREACH)
    assert e.errno == errno.ENETUNREACH and str(e) == "Network is unreachable"
    assert e.args[0] == errno.ENETUNREACH


# ---- start_dial: the channel's hot path (a local destination is connected at once)

def start_dial(host, port, timeout=5.0):
    """Returns ("now", peer) or ("later", peer) or raises DialError."""
    async def main():
        res = DirectDialer().start_dial(host, port, timeout)
        when = "now" if isinstance(res, socket.socket) else "later"
        s = res if when == "now" else await res
        try:
            assert s.getblocking() is False
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            return when, s.getpeername()
        finally:
            s.close()
    return asyncio.run(main())


def test_start_dial_local_is_connected_at_once():
    lst = socket.create_server(("127.0.0.1", 0))
    when, peer = start_dial("127.0.0.1", lst.getsockname()[1])
    assert when == "now" and peer == lst.getsockname()
    lst.close()


def test_start_dial_refused_raises_at_once():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    before = count_fds()
    with pytest.raises(DialError) as ei:
        DirectDialer().start_dial("127.0.0.1", s.getsockname()[1], 5.0)
    assert ei.value.errno == errno.ECONNREFUSED
    assert_no_fd_leak(before)
    s.close()


def test_start_dial_in_flight_then_timeout():
    park = socket.socket()
    park.bind(("127.0.0.1", 0))
    park.listen(0)
    filler = socket.create_connection(park.getsockname())   # accept queue full: SYN dropped
    before = count_fds()
    with pytest.raises(DialError) as ei:
        start_dial("127.0.0.1", park.getsockname()[1], timeout=0.3)
    assert ei.value.errno == errno.ETIMEDOUT
    assert_no_fd_leak(before)
    filler.close()
    park.close()


def test_start_dial_names_and_ipv6_take_the_full_dial():
    lst = socket.create_server(("127.0.0.1", 0))
    when, peer = start_dial("localhost", lst.getsockname()[1])
    assert when == "later" and peer[1] == lst.getsockname()[1]
    lst.close()
    try:
        lst6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        return
    when, peer = start_dial("::1", lst6.getsockname()[1])
    assert peer[1] == lst6.getsockname()[1]
    lst6.close()

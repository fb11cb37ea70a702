"""SOCKS5 UDP ASSOCIATE (proxy/socks5_udp.py): the codec, and the server with a fake dialer
whose UDP destinations echo (the tailnet path is tested end to end)."""

import errno
import os
import socket
import struct
import time

import pytest

from test_proxy_harness import FakeDialer, ProxyThread, assert_no_fd_leak, count_fds, wait_until
from test_socks5_server import USER, PW, auth, recvn
from tailproxy.proxy import socks5_udp as su

ECHO = ("100.64.0.5", 7)
ECHO6 = ("fd7a:115c:a1e0::5", 7)
NAME = ("peer.ts.test", 7)
UNREACH = ("100.64.0.6", 7)


# ---- codec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("atyp,host", [(1, "100.64.0.5"), (4, "fd7a:115c:a1e0::5"),
                                       (3, "peer.ts.test")])
def test_header_round_trip(atyp, host):
    hdr = su.encode_udp_header(atyp, host, 5353)
    assert su.parse_udp_header(hdr + b"data") == (atyp, host, 5353, len(hdr))


@pytest.mark.parametrize("data,why", [
    (b"", "truncated"), (b"\0\0\0", "truncated"),
    (b"\0\0\1\1" + bytes(4) + b"\0\x07", "fragment"),
    (b"\0\0\0\2" + bytes(6), "address type"),
    (b"\0\0\0\1\1\2\3", "truncated"), (b"\0\0\0\1\1\2\3\4\0", "truncated"),
    (b"\0\0\0\4" + bytes(10), "truncated"),
    (b"\0\0\0\3\0\0\7", "empty"), (b"\0\0\0\3\x05ab", "truncated"),
    (b"\0\0\0\3\x02\xff\xfe\0\7", "ASCII"), (b"\0\0\0\3\x02a b\0\7"[:7] + b"\0\7", "bad"),
    (b"\0\0\0\1\1\2\3\4\0\0", "port 0"),
])
def test_header_refusals(data, why):
    with pytest.raises(su.UdpHeaderError, match=why):
        su.parse_udp_header(data)


# ---- server -----------------------------------------------------------------------------------

@pytest.fixture
def env():
    d = FakeDialer()
    for dst in (ECHO, ECHO6, NAME):
        d.script[dst] = "echo"
    d.script[UNREACH] = errno.EHOSTUNREACH
    pt = ProxyThread(d, socks_listen=("127.0.0.1", 0), socks_auth=(USER, PW), verbose=True)
    pt.addr = pt.proxy.socks_address
    yield pt
    pt.stop()


def associate(env, port=0):
    """A control connection with a UDP ASSOCIATE; returns (control, relay address)."""
    c = socket.create_connection(env.addr, timeout=5)
    assert auth(c) == b"\x01\x00"
    c.sendall(bytes([5, 3, 0, 1]) + bytes(4) + struct.pack("!H", port))
    head = recvn(c, 4)
    assert head[:2] == b"\x05\x00" and head[3] == 1, head
    tail = recvn(c, 6)
    return c, (socket.inet_ntoa(tail[:4]), struct.unpack("!H", tail[4:])[0])


def udp_client():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(3)
    return u


def roundtrip(u, relay, atyp, host, port, payload):
    hdr = su.encode_udp_header(atyp, host, port)
    u.sendto(hdr + payload, relay)
    data, src = u.recvfrom(70000)
    assert src == relay
    return data[:len(hdr)], data[len(hdr):]


@pytest.mark.parametrize("atyp,dst", [(1, ECHO), (4, ECHO6), (3, NAME)])
def test_datagrams_cross_whole_with_their_header(env, atyp, dst):
    c, relay = associate(env)
    u = udp_client()
    for size in (1, 1200, 60000):
        payload = os.urandom(size)
        hdr, back = roundtrip(u, relay, atyp, dst[0], dst[1], payload)
        assert hdr == su.encode_udp_header(atyp, *dst) and back == payload
    assert ("udp", dst[0], dst[1], env.proxy.connect_timeout) in env.dialer.calls
    u.close()
    c.close()


def test_only_the_clients_pinned_port_is_served(env):
    c, relay = associate(env)
    first, other = udp_client(), udp_client()
    assert roundtrip(first, relay, 1, *ECHO, b"mine")[1] == b"mine"   # pins first's port
    other.sendto(su.encode_udp_header(1, *ECHO) + b"intruder", relay)
    other.settimeout(0.5)
    with pytest.raises(socket.timeout):
        other.recvfrom(100)
    assert roundtrip(first, relay, 1, *ECHO, b"still mine")[1] == b"still mine"
    first.close(), other.close(), c.close()


def test_the_port_asked_for_is_the_only_one_served(env):
    u, stranger = udp_client(), udp_client()
    c, relay = associate(env, port=u.getsockname()[1])
    stranger.sendto(su.encode_udp_header(1, *ECHO) + b"first!", relay)   # would pin, but not asked
    stranger.settimeout(0.5)
    with pytest.raises(socket.timeout):
        stranger.recvfrom(100)
    assert roundtrip(u, relay, 1, *ECHO, b"ok")[1] == b"ok"
    u.close(), stranger.close(), c.close()


def test_bad_datagrams_are_dropped_and_the_association_goes_on(env):
    c, relay = associate(env)
    u = udp_client()
    for bad in (b"\0\0\1\1" + socket.inet_aton(ECHO[0]) + struct.pack("!H", 7) + b"frag",
                b"\0\0\0\2xx", b"\0\0"):
        u.sendto(bad, relay)
    u.sendto(su.encode_udp_header(1, *UNREACH) + b"nowhere", relay)
    assert roundtrip(u, relay, 1, *ECHO, b"after")[1] == b"after"
    wait_until(lambda: any("unreach" in l.lower() or "EHOSTUNREACH" in l for l in env.logs),
               what="the unreachable destination logged")
    u.close(), c.close()


def test_the_association_ends_with_its_control_connection(env):
    before = count_fds()
    c, relay = associate(env)
    u = udp_client()
    assert roundtrip(u, relay, 1, *ECHO, b"x")[1] == b"x"
    c.close()
    wait_until(lambda: any(" udp " in l and "up=" in l for l in env.logs), what="the report")
    u.sendto(su.encode_udp_header(1, *ECHO) + b"late", relay)
    u.settimeout(0.5)
    with pytest.raises((socket.timeout, ConnectionRefusedError)):
        u.recvfrom(100)
    u.close()
    assert_no_fd_leak(before)


def test_destinations_per_association_are_bounded(env, monkeypatch):
    monkeypatch.setattr(su, "MAX_FLOWS", 2)
    env.dialer.script[("100.64.0.20", 7)] = "echo"
    c, relay = associate(env)
    u = udp_client()
    assert roundtrip(u, relay, 1, *ECHO, b"a")[1] == b"a"
    assert roundtrip(u, relay, 4, *ECHO6, b"b")[1] == b"b"
    u.sendto(su.encode_udp_header(1, "100.64.0.20", 7) + b"third", relay)
    u.settimeout(0.5)
    with pytest.raises(socket.timeout):
        u.recvfrom(100)
    wait_until(lambda: any("more than 2 destinations" in l for l in env.logs), what="the log line")
    u.close(), c.close()


def test_associate_needs_the_password_like_connect(env):
    c = socket.create_connection(env.addr, timeout=5)
    assert auth(c, pw="wrong") == b"\x01\x01"
    c.close()

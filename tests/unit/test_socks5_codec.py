"""Pure SOCKS5 codec: well-formed and malformed messages."""

import errno
import struct

import pytest

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)
from tailproxy.proxy import socks5 as s5


def test_greeting():
    assert s5.parse_greeting(b"\x05\x02\x00\x02") == (frozenset({0, 2}), 4)
    assert s5.parse_greeting(b"\x05\x01\x00extra") == (frozenset({0}), 3)


@pytest.mark.parametrize("data", [b"", b"\x05", b"\x05\x03\x00\x02"])
def test_greeting_incomplete(data):
    assert s5.parse_greeting(data) is None


@pytest.mark.parametrize("data", [b"\x04\x01\x00", b"\x05\x00", b"GET / HTTP/1.1"])
def test_greeting_malformed(data):
    with pytest.raises(s5.SocksError) as ei:
        s5.parse_greeting(data)
    assert ei.value.reply is None


def test_choose_method():
    assert s5.choose_method({0}, False) == 0
    assert s5.choose_method({0, 2}, False) == 0
    assert s5.choose_method({2}, False) == 2
    assert s5.choose_method({0}, True) == 0xFF
    assert s5.choose_method({0, 2}, True) == 2
    assert s5.choose_method({1}, False) == 0xFF


def test_userpass():
    msg = b"\x01\x04user\x06secret"
    assert s5.parse_userpass(msg) == ((b"user", b"secret"), len(msg))
    assert s5.parse_userpass(b"\x01\x01u\x00") == ((b"u", b""), 4)
    for n in range(len(msg)):
        assert s5.parse_userpass(msg[:n]) is None


@pytest.mark.parametrize("data", [b"\x05\x04user\x00", b"\x01\x00\x01p"])
def test_userpass_malformed(data):
    with pytest.raises(s5.SocksError):
        s5.parse_userpass(data)


def req(cmd, atyp, addr, port):
    return bytes([5, cmd, 0, atyp]) + addr + struct.pack("!H", port)


def test_request_v4_v6_domain():
    r, n = s5.parse_request(req(1, 1, bytes([100, 64, 0, 5]), 80))
    assert (r.host, r.port, r.atyp, n) == ("100.64.0.5", 80, 1, 10)
    v6 = bytes.fromhex("fd7a115ca1e000000000000000000005")
    r, n = s5.parse_request(req(1, 4, v6, 443))
    assert (r.host, r.port, n) == ("fd7a:115c:a1e0::5", 443, 22)
    assert r.label == "[fd7a:115c:a1e0::5]:443"
    r, n = s5.parse_request(req(1, 3, b"\x0bexample.org", 8080))
    assert (r.host, r.port, n) == ("example.org", 8080, 18)


def test_request_incomplete():
    for full in (req(1, 1, b"\1\2\3\4", 1), req(1, 3, b"\x03abc", 1),
                 req(1, 4, bytes(16), 1)):
        for n in range(len(full)):
            assert s5.parse_request(full[:n]) is None, n


@pytest.mark.parametrize("cmd", [2, 9])
def test_request_unsupported_command(cmd):
    with pytest.raises(s5.SocksError) as ei:
        s5.parse_request(req(cmd, 1, bytes(4), 80))
    assert ei.value.reply == 0x07


def test_request_bad_atyp():
    with pytest.raises(s5.SocksError) as ei:
        s5.parse_request(bytes([5, 1, 0, 2]) + bytes(10))
    assert ei.value.reply == 0x08


@pytest.mark.parametrize("name", [b"", b"a b", b"a\0b", b"-x", b"\xff\xfe", b"a\x1b[2Jb",
                                  b"a\rb", b"a\x7fb", b"a/b"])
def test_request_bad_domain_is_host_unreachable(name):
    # 0x04: no resolver could find such a name (it used to be 0x01, a "general failure")
    with pytest.raises(s5.SocksError) as ei:
        s5.parse_request(req(1, 3, bytes([len(name)]) + name, 80))
    assert ei.value.reply == 0x04


def test_request_bad_version():
    with pytest.raises(s5.SocksError) as ei:
        s5.parse_request(bytes([4, 1, 0, 1]) + bytes(6))
    assert ei.value.reply is None


def test_encode_reply():
    assert s5.encode_reply(0) == b"\x05\x00\x00\x01" + bytes(6)
    assert s5.encode_reply(5, ("10.1.2.3", 258)) == b"\x05\x05\x00\x01\x0a\x01\x02\x03\x01\x02"
    r = s5.encode_reply(0, ("::1", 1, 0, 0))
    assert r[:4] == b"\x05\x00\x00\x04" and len(r) == 22
    assert s5.encode_reply(0, ("::ffff:1.2.3.4", 1, 0, 0))[3] == 1


def test_reply_for_errno():
    assert s5.reply_for_errno(errno.ECONNREFUSED) == 0x05
    assert s5.reply_for_errno(errno.EHOSTUNREACH) == 0x04
    assert s5.reply_for_errno(errno.ENETUNREACH) == 0x03
    assert s5.reply_for_errno(errno.ETIMEDOUT) == 0x04
    assert s5.reply_for_errno(errno.EACCES) == 0x02
    assert s5.reply_for_errno(errno.EIO) == 0x01

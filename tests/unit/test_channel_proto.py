"""Codec of docs/CHANNEL.md: layout and malformed input."""

import errno
import struct

import pytest

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)

A4 = cp.Address(4, "100.64.0.5", 80)
A6 = cp.Address(6, "fd7a:115c:a1e0::5", 443)


def test_sizes():
    assert cp.CONNECT_REQ_SIZE == 288
    assert cp.CONNECT_REP_SIZE == 16
    assert cp.STATUS_REQ_SIZE == 16
    assert cp.STATUS_REP_SIZE == 8
    assert cp.PEER_REQ_SIZE == 28
    assert cp.PEER_REP_SIZE == 28
    assert len(cp.encode_connect(A4)) == 288
    assert len(cp.encode_connect_reply(0, 5)) == 16
    assert len(cp.encode_status_reply(0)) == 8
    assert len(cp.encode_peer_reply(0, A4)) == 28


def test_connect_layout_host_order():
    msg = cp.encode_connect(A4, seq=7, blocking=True, timeout_ms=1500, host="")
    assert msg[:8] == struct.pack("=BBHI", 1, 1, 1, 7)
    assert msg[8:28] == struct.pack("=BBH", 4, 0, 80) + bytes([100, 64, 0, 5]) + bytes(12)
    assert msg[28:32] == struct.pack("=I", 1500)
    assert msg[32] == 0
    assert msg[33:] == bytes(255)


def test_connect_roundtrip():
    for dst in (A4, A6):
        req = cp.decode_request(cp.encode_connect(dst, seq=3, blocking=True, timeout_ms=9,
                                                  host="db.example"), 1)
        assert req == cp.ConnectReq(3, cp.FLAG_BLOCKING, dst, 9, "db.example")
        assert req.blocking
    req = cp.decode_request(cp.encode_connect(A4), 1)
    assert not req.blocking and req.host == ""


def test_status_peer_roundtrip():
    assert cp.decode_request(cp.encode_status(2**64 - 1, seq=1)) == cp.StatusReq(1, 0, 2**64 - 1)
    assert cp.decode_request(cp.encode_peer(A6, seq=2)) == cp.PeerReq(2, 0, A6)


def test_replies_roundtrip():
    assert cp.decode_reply(cp.encode_connect_reply(0, 42)) == cp.Reply(1, 0, token=42)
    assert cp.decode_reply(cp.encode_connect_reply(errno.ECONNREFUSED)).err == errno.ECONNREFUSED
    assert cp.decode_reply(cp.encode_status_reply(errno.EINPROGRESS)) == cp.Reply(2, errno.EINPROGRESS)
    assert cp.decode_reply(cp.encode_peer_reply(0, A4)) == cp.Reply(3, 0, dst=A4)
    assert cp.decode_reply(cp.encode_peer_reply(errno.ENOENT)).err == errno.ENOENT
    rep = struct.unpack("=BBHi", cp.encode_status_reply(errno.ENOENT))
    assert rep == (1, 2, 0, errno.ENOENT)


def err_of(data, nfds=0):
    with pytest.raises(cp.ProtoError) as ei:
        cp.decode_request(data, nfds)
    return ei.value.errno


@pytest.mark.parametrize("n", [0, 1, 7])
def test_short(n):
    assert err_of(cp.encode_status(1)[:n]) == errno.EPROTO


def test_wrong_version():
    msg = bytearray(cp.encode_status(1))
    msg[0] = 2
    assert err_of(bytes(msg)) == errno.EPROTO
    msg[0] = 0
    assert err_of(bytes(msg)) == errno.EPROTO


@pytest.mark.parametrize("op", [0, 4, 255])
def test_unknown_op(op):
    msg = bytearray(cp.encode_status(1))
    msg[1] = op
    assert err_of(bytes(msg)) == errno.EPROTO


@pytest.mark.parametrize("mk,nfds", [(lambda: cp.encode_connect(A4), 1),
                                      (lambda: cp.encode_status(1), 0),
                                      (lambda: cp.encode_peer(A4), 0)])
def test_wrong_size(mk, nfds):
    msg = mk()
    assert err_of(msg[:-1], nfds) == errno.EPROTO
    assert err_of(msg + b"\0", nfds) == errno.EPROTO
    assert err_of(msg[:8], nfds) == errno.EPROTO


@pytest.mark.parametrize("nfds", [0, 2, 5])
def test_connect_fd_count(nfds):
    assert err_of(cp.encode_connect(A4), nfds) == errno.EBADF


def test_status_peer_with_fd():
    assert err_of(cp.encode_status(1), 1) == errno.EBADF
    assert err_of(cp.encode_peer(A4), 1) == errno.EBADF


def test_bad_family():
    msg = bytearray(cp.encode_connect(A4))
    for fam in (0, 2, 10, 5):
        msg[8] = fam
        assert err_of(bytes(msg), 1) == errno.EINVAL
    msg = bytearray(cp.encode_peer(A4))
    msg[8] = 10
    assert err_of(bytes(msg)) == errno.EINVAL


def test_bad_zero_byte():
    msg = bytearray(cp.encode_connect(A4))
    msg[9] = 1
    assert err_of(bytes(msg), 1) == errno.EINVAL


def test_port_zero():
    assert err_of(cp.encode_connect(cp.Address(4, "1.2.3.4", 0)), 1) == errno.EINVAL


def test_bad_host():
    msg = bytearray(cp.encode_connect(A4, host="abc"))
    msg[33 + 1] = 0          # NUL inside hostlen
    assert err_of(bytes(msg), 1) == errno.EINVAL
    msg = bytearray(cp.encode_connect(A4, host="abc"))
    msg[33] = 0xFF           # non-ASCII
    assert err_of(bytes(msg), 1) == errno.EINVAL
    msg = bytearray(cp.encode_connect(A4, host="a b"))
    assert err_of(bytes(msg), 1) == errno.EINVAL
    # hostlen 255: fine
    req = cp.decode_request(cp.encode_connect(A4, host="h" * 255), 1)
    assert req.host == "h" * 255


def test_proto_error_carries_op():
    with pytest.raises(cp.ProtoError) as ei:
        cp.decode_request(cp.encode_connect(A4), 0)
    assert ei.value.op == cp.OP_CONNECT
    # the error reply has the op's reply size
    assert len(cp.encode_error_reply(cp.OP_CONNECT, errno.EBADF)) == 16
    assert len(cp.encode_error_reply(cp.OP_PEER, errno.EINVAL)) == 28
    assert len(cp.encode_error_reply(0, errno.EPROTO)) == 8


def test_address_normalisation():
    a = cp.Address.from_sockaddr(("::ffff:127.0.0.1", 5, 0, 0))
    assert a == cp.Address(4, "127.0.0.1", 5)
    assert cp.Address(6, "::ffff:10.0.0.1", 9).normalized() == cp.Address(4, "10.0.0.1", 9)
    assert cp.Address.from_sockaddr(("fe80::1%lo", 5, 0, 1)) == cp.Address(6, "fe80::1", 5)
    assert str(A6) == "[fd7a:115c:a1e0::5]:443"


def test_decode_reply_malformed():
    with pytest.raises(cp.ProtoError):
        cp.decode_reply(b"\1\1")
    with pytest.raises(cp.ProtoError):
        cp.decode_reply(b"\2" + bytes(15))
    with pytest.raises(cp.ProtoError):
        cp.decode_reply(cp.encode_connect_reply(0, 1) + b"x")

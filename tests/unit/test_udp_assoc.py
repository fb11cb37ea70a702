"""The channel op UDP (codec) and the proxy's side of the preload's UDP associations
(proxy/udp_assoc.py) with a fake dialer: endpoints pinned to the program's address, reuse,
the cap, direct answers and dial errors."""
import asyncio
import errno
import socket
import struct

import pytest

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)
from tailproxy.proxy.dialer import DialError
from tailproxy.proxy.udp_assoc import UdpAssociations

DST = cp.Address(4, "100.64.0.2", 7)
DST6 = cp.Address(6, "fd7a:115c:a1e0::2", 7)


def decode_reply(rep: bytes):
    assert len(rep) == cp.UDP_REP_SIZE
    version, op, _r, err = struct.unpack_from("=BBHi", rep)
    assert (version, op) == (1, cp.OP_UDP)
    if rep[8] == 0:
        return err, None
    return err, cp.decode_address(rep[8:])


def test_udp_request_roundtrip_and_bad_input():
    local = cp.Address(4, "127.0.0.1", 40000)
    msg = cp.encode_udp(DST, local, seq=5)
    assert len(msg) == cp.UDP_REQ_SIZE == 48
    assert cp.decode_request(msg) == cp.UdpReq(5, 0, DST, local)
    for bad in (msg[:-1], msg + b"\0"):
        with pytest.raises(cp.ProtoError) as e:
            cp.decode_request(bad)
        assert e.value.errno == errno.EPROTO
    with pytest.raises(cp.ProtoError) as e:        # an fd with it
        cp.decode_request(msg, 1)
    assert e.value.errno == errno.EBADF
    for port_zero in (cp.encode_udp(cp.Address(4, "100.64.0.2", 0), local),
                      cp.encode_udp(DST, cp.Address(4, "127.0.0.1", 0))):
        with pytest.raises(cp.ProtoError) as e:
            cp.decode_request(port_zero)
        assert e.value.errno == errno.EINVAL
    bad_family = bytearray(msg)
    bad_family[8 + 20] = 5
    with pytest.raises(cp.ProtoError) as e:
        cp.decode_request(bytes(bad_family))
    assert e.value.errno == errno.EINVAL
    assert decode_reply(cp.encode_error_reply(cp.OP_UDP, errno.EPROTO)) == (errno.EPROTO, None)


class FakeUpstream:
    def __init__(self):
        self.sock, self.done, self.closed = None, None, False

    def relay(self, sock, done=None, initial=b""):
        self.sock = socket.socket(fileno=socket.dup(sock.fileno()))   # as the node dups it
        self.done = done

    def close(self):
        self.closed = True


class FakeDialer:
    """Routes 100.64/10 and fd7a::/48 through the 'node', refuses 100.64.0.99, else direct."""

    def __init__(self):
        self.upstreams: list[FakeUpstream] = []

    async def associate_udp(self, host, port, timeout):
        await asyncio.sleep(0)
        if host == "100.64.0.99":
            raise DialError(errno.EHOSTUNREACH, "offline")
        if host.startswith(("100.64.", "fd7a:")):
            self.upstreams.append(FakeUpstream())
            return self.upstreams[-1]
        return None


@pytest.fixture
def program():
    """The program's UDP socket, bound as the preload binds it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(2)
    yield s
    s.close()


def test_endpoint_is_pinned_to_the_programs_address(program):
    async def main():
        dialer = FakeDialer()
        assoc = UdpAssociations(dialer)
        local = cp.Address(4, "127.0.0.1", program.getsockname()[1])
        err, ep = decode_reply(await assoc.answer(cp.UdpReq(1, 0, DST, local)))
        assert err == 0 and ep.ip == "127.0.0.1" and ep.port
        up = dialer.upstreams[0]
        # the program's datagram reaches the endpoint, and the endpoint's reaches the program
        program.sendto(b"up", ep.sockaddr())
        assert up.sock.recv(100) == b"up"
        up.sock.send(b"down")
        assert program.recvfrom(100) == (b"down", ep.sockaddr())
        # another socket (another local user) cannot inject: the kernel filters on the peer
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(b"injected", ep.sockaddr())
        program.sendto(b"after", ep.sockaddr())     # loopback queues in order
        assert up.sock.recv(100) == b"after"
        # the same (address, destination) again: the same endpoint, no second dial
        assert decode_reply(await assoc.answer(cp.UdpReq(2, 0, DST, local))) == (0, ep)
        assert len(dialer.upstreams) == 1 and len(assoc) == 1
        # once the node reports its end, it is forgotten and asked anew
        up.done(_End(0))
        assert len(assoc) == 0
        err, ep2 = decode_reply(await assoc.answer(cp.UdpReq(3, 0, DST, local)))
        assert err == 0 and len(dialer.upstreams) == 2
        for u in dialer.upstreams:
            u.sock.close()
    asyncio.run(main())


class _End:
    def __init__(self, err):
        self.errno, self.reason, self.up, self.down = err, "x" if err else "", 0, 0


def test_direct_refused_v6_and_the_cap():
    async def main():
        dialer = FakeDialer()
        assoc = UdpAssociations(dialer, limit=2)
        local = cp.Address(4, "127.0.0.1", 40001)
        assert decode_reply(await assoc.answer(
            cp.UdpReq(1, 0, cp.Address(4, "198.51.100.1", 53), local))) == (0, None)
        assert decode_reply(await assoc.answer(
            cp.UdpReq(1, 0, cp.Address(4, "100.64.0.99", 7), local))) == (errno.EHOSTUNREACH, None)
        local6 = cp.Address(6, "::1", 40002)
        err, ep = decode_reply(await assoc.answer(cp.UdpReq(1, 0, DST6, local6)))
        assert err == 0 and ep.family == 6 and ep.ip == "::1"
        # concurrent asks for one association make one
        replies = await asyncio.gather(*(assoc.answer(cp.UdpReq(i, 0, DST, local))
                                         for i in range(5)))
        assert len(set(replies)) == 1 and len(dialer.upstreams) == 2
        # the cap: a third association is refused with ENOBUFS
        err, _ = decode_reply(await assoc.answer(
            cp.UdpReq(9, 0, cp.Address(4, "100.64.0.3", 7), local)))
        assert err == errno.ENOBUFS and len(dialer.upstreams) == 2
        for u in dialer.upstreams:
            u.sock.close()
    asyncio.run(main())

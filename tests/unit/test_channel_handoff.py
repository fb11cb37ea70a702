"""The channel server with a parked-CONNECT hand-off (proxy/handoff.py) in front of it: what
the hand-off passes back is served as before, its failed dials fail the program's connect with
its errno, and PEER and drain cover the connections it took. The hand-off here is a fake with
the node's contract (node/parked.go); the node itself is tested in Go and end to end."""

import array
import asyncio
import errno
import os
import select
import socket
import struct

import pytest

from test_channel_server import (DST, _park_and_register, _parked_msg, echo_roundtrip,
                                 wait_status)
from test_proxy_harness import (FakeDialer, ProxyThread, assert_no_fd_leak, channel_request,
                                count_fds, cp, wait_until, wait_writable)
from tailproxy.proxy.handoff import address_of, decode_forwarded

_HEADER = struct.Struct("=IiHH")
_UCRED = struct.Struct("3i")


class FakeHandoff:
    """Reads the datagrams like the node and passes each back: with errno 0, or with the errno
    in `fail` for its destination (the node's dial failed)."""

    def __init__(self, refuse_start=False):
        self.refuse_start = refuse_start
        self.fail: dict[tuple, int] = {}
        self.peers: dict = {}
        self.left = 0
        self.started = self.closed = False
        self.on_event = None

    def start(self, datagrams, forward, park_ports, default_timeout, max_timeout, on_event,
              report_each=False):
        if self.refuse_start:
            raise OSError("no node")
        self.on_event = on_event
        self._in = socket.socket(fileno=os.dup(datagrams.fileno()))
        self._fwd = socket.socket(fileno=os.dup(forward.fileno()))
        self._in.setblocking(False)
        asyncio.get_running_loop().add_reader(self._in.fileno(), self._on_datagram)
        self.started = True

    def _on_datagram(self):
        try:
            data, anc, flags, _ = self._in.recvmsg(1024, 256)
        except BlockingIOError:
            return
        fds, pid = [], 0
        for level, typ, cdata in anc:
            if typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[:len(cdata) - len(cdata) % 4])
                fds.extend(a)
            elif typ == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack_from(cdata)[0]
        err, reason = 0, b""
        if len(data) == cp.CONNECT_REQ_SIZE:
            dst = cp.decode_request(data, len(fds)).dst if fds else None
            if dst is not None and (dst.ip, dst.port) in self.fail:
                err, reason = self.fail[(dst.ip, dst.port)], b"dial failed in the fake node"
        socket.send_fds(self._fwd, [_HEADER.pack(pid, err, len(data), 0) + data + reason], fds)
        for fd in fds:
            os.close(fd)

    def peer_of(self, local):
        return self.peers.get(local)

    async def drain(self, timeout):
        return self.left

    def close(self):
        asyncio.get_running_loop().remove_reader(self._in.fileno())
        self._in.close()
        self._fwd.close()
        self.closed = True


@pytest.fixture
def handed(tmp_path):
    d = FakeDialer()
    d.script[DST] = "echo"
    h = FakeHandoff()
    path = str(tmp_path / "run" / "channel.sock")
    pt = ProxyThread(d, channel_path=path, verbose=True, connect_timeout=5, handoff=h)
    pt.path, pt.handoff = path, h
    yield pt
    pt.stop()


def test_passed_back_datagrams_are_served_as_before(handed):
    assert handed.handoff.started
    s = socket.socket()
    s.setblocking(False)
    token = _park_and_register(handed, s, DST, seq=21, via="dgram")
    assert wait_status(handed.path, token) == 0
    assert wait_writable(s, 2) == select.POLLOUT
    echo_roundtrip(s)
    s.close()


def test_a_failed_dial_of_the_handoff_fails_the_connect_with_its_errno(handed):
    unreach = ("100.64.0.9", 80)
    handed.handoff.fail[unreach] = errno.EHOSTUNREACH
    s = socket.socket()
    s.setblocking(False)
    token = _park_and_register(handed, s, unreach, seq=22, via="dgram")
    assert wait_status(handed.path, token) == errno.EHOSTUNREACH
    assert wait_writable(s, 2) & select.POLLERR
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    assert any("dial failed in the fake node" in line for line in handed.logs), handed.logs
    s.close()


def test_bad_datagrams_passed_back_are_dropped_with_their_fds(handed):
    before = count_fds()
    a, b = socket.socketpair()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
        c.connect(handed.path + ".dgram")
        socket.send_fds(c, [b"\xff" * 40], [a.fileno()])
    a.close()
    b.close()
    wait_until(lambda: handed.proxy.channel.stats.protocol_errors == 1, what="the refusal")
    assert_no_fd_leak(before)


class Watch:
    """The agent's measurements, as the channel server calls them."""
    def __init__(self):
        self.node_relayed = []

    def relayed_by_node(self, *args):
        self.node_relayed.append(args)


def test_the_nodes_batched_reports_reach_the_watch_and_the_log(tmp_path):
    h, watch = FakeHandoff(), Watch()
    path = str(tmp_path / "run" / "channel.sock")
    pt = ProxyThread(FakeDialer(), channel_path=path, verbose=True, connect_timeout=5, handoff=h,
                     watch=watch)
    try:
        batch = {"ev": "done_batch", "id": 1, "done": [
            {"ev": "done", "dst": "100.64.0.2:22", "pid": 70, "connect_us": 1500, "ms": 2000,
             "up": 5, "down": 6},
            {"ev": "done", "dst": "[fd7a:115c:a1e0::2]:80", "pid": 71, "connect_us": 900,
             "ms": 10, "up": 1, "errno": errno.ECONNRESET, "reason": "read: reset"}]}

        async def deliver():
            h.on_event(batch)
        pt.call(deliver())
        assert watch.node_relayed == [
            (70, "100.64.0.2:22", 0.0015, 2.0, 5, 6, "ok"),
            (71, "[fd7a:115c:a1e0::2]:80", 0.0009, 0.01, 1, 0, "ok then ECONNRESET (read: reset)")]
        assert sum("100.64.0.2:22" in line for line in pt.logs) == 1, pt.logs
        assert sum("fd7a:115c:a1e0::2" in line for line in pt.logs) == 1, pt.logs
    finally:
        pt.stop()


def test_peer_asks_the_handoff_for_connections_it_relays(handed):
    local = cp.Address(4, "127.0.0.1", 40001)
    handed.handoff.peers[local] = cp.Address(4, "100.64.0.5", 443)
    rep = channel_request(handed.path, cp.encode_peer(local))
    assert rep.err == 0 and rep.dst == cp.Address(4, "100.64.0.5", 443)
    rep = channel_request(handed.path, cp.encode_peer(cp.Address(4, "127.0.0.1", 40002)))
    assert rep.err == errno.ENOENT


def test_drain_counts_the_handoffs_connections(handed):
    handed.handoff.left = 3
    assert handed.call(handed.proxy.drain(0.1)) == 3


def test_close_stops_the_handoff(handed):
    handed.call(handed.proxy.close())
    assert handed.handoff.closed


def test_a_handoff_that_cannot_start_leaves_the_datagrams_to_the_proxy(tmp_path):
    d = FakeDialer()
    d.script[DST] = "echo"
    path = str(tmp_path / "run" / "channel.sock")
    pt = ProxyThread(d, channel_path=path, verbose=True, connect_timeout=5,
                     handoff=FakeHandoff(refuse_start=True))
    pt.path = path
    try:
        assert any("stay with the proxy" in line for line in pt.logs), pt.logs
        s = socket.socket()
        s.setblocking(False)
        token = _park_and_register(pt, s, DST, seq=23, via="dgram")
        assert wait_status(path, token) == 0
        echo_roundtrip(s)
        s.close()
    finally:
        pt.stop()


@pytest.mark.parametrize("text,want", [
    ("100.64.0.2:80", cp.Address(4, "100.64.0.2", 80)),
    ("[fd7a:115c:a1e0::2]:443", cp.Address(6, "fd7a:115c:a1e0::2", 443)),
    ("[::ffff:127.0.0.1]:5", cp.Address(4, "127.0.0.1", 5)),
    ("", None), ("100.64.0.2", None), ("nonsense:80", None), ("1.2.3.4:x", None),
])
def test_address_of(text, want):
    assert address_of(text) == want


def test_decode_forwarded_refuses_what_does_not_add_up():
    assert decode_forwarded(b"") is None
    assert decode_forwarded(_HEADER.pack(1, 0, 100, 0) + b"short") is None
    assert decode_forwarded(_HEADER.pack(1, -5, 0, 0)) is None
    f = decode_forwarded(_HEADER.pack(7, 111, 3, 1) + b"abc" + b"why")
    assert (f.pid, f.errno, f.message, f.truncated, f.reason) == (7, 111, b"abc", True, "why")

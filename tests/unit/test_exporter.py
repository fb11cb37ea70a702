import asyncio
import socket

import pytest

from tailproxy.exporter.claims import OwnerClaims, PortClaims
from tailproxy.exporter.exporter import Exporter, inbound_line
from tailproxy.exporter.listening import loopback_listeners, target_host
from tailproxy.exporter.ports import PortFilter, PortSpecError, parse_ports


def test_parse_ports():
    assert parse_ports("3000,8080,10000-10100") == [(3000, 3000), (8080, 8080), (10000, 10100)]
    assert parse_ports(" 22 ") == [(22, 22)]


@pytest.mark.parametrize("spec, needle", [("", "empty item"), ("80,", "empty item"),
                                          ("http", "'http' is not a port"), ("0", "1-65535"),
                                          ("70000", "1-65535"), ("90-80", "start is after"),
                                          ("8-", "not a port")])
def test_bad_port_specs(spec, needle):
    with pytest.raises(PortSpecError, match=needle):
        parse_ports(spec)


def test_filter_deny_wins_and_max():
    f = PortFilter(parse_ports("8000-9000"), parse_ports("8080"), max_exports=2)
    assert f.refusal(8001, 0) is None
    assert "deny" in f.refusal(8080, 0)
    assert "allow" in f.refusal(22, 0)
    assert "--export-max=2" in f.refusal(8002, 2)
    assert PortFilter(None, None, None).refusal(1, 100) is None


def test_proc_net_tcp_parsing(tmp_path):
    v4 = tmp_path / "tcp"
    v4.write_text(
        "  sl  local_address rem_address   st ...\n"
        "   0: 0100007F:1F40 00000000:0000 0A 0\n"      # 127.0.0.1:8000 LISTEN
        "   1: 0400120A:0050 00000000:0000 0A 0\n"      # 10.18.0.4:80 LISTEN (not loopback)
        "   2: 0100007F:1F41 0100007F:9999 01 0\n"      # established
        "   3: 0500007F:1F42 00000000:0000 0A 0\n")     # 127.0.0.5:8002 LISTEN
    v6 = tmp_path / "tcp6"
    v6.write_text(
        "  sl  local_address ...\n"
        "   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 0\n"
        "   1: 0000000000000000FFFF00000100007F:0BB9 00000000000000000000000000000000:0000 0A 0\n"
        "   2: 00000000000000000000000000000000:0BBA 00000000000000000000000000000000:0000 0A 0\n")
    # ::1 stays IPv6; a v4-mapped loopback listener is reached at 127.0.0.1; :: is not loopback
    assert loopback_listeners((str(v4), str(v6))) == {
        ("127.0.0.1", 8000), ("127.0.0.5", 8002), ("::1", 3000), ("127.0.0.1", 3001)}


def test_proc_net_tcp_sees_a_real_ipv6_only_listener():
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s.listen()
    port = s.getsockname()[1]
    try:
        live = loopback_listeners()
        assert ("::1", port) in live and ("127.0.0.1", port) not in live
    finally:
        s.close()
    assert ("::1", port) not in loopback_listeners()


def test_target_host_prefers_127_0_0_1_then_ipv6_loopback():
    assert target_host({"127.0.0.1", "::1"}) == "127.0.0.1"
    assert target_host({"::1"}) == "::1"
    assert target_host({"::1", "127.0.0.9"}) == "::1"
    assert target_host({"127.0.0.9", "127.0.0.5"}) == "127.0.0.5"
    assert target_host(set()) is None


class FakeExport:
    def __init__(self, node, port, target, proxy_protocol, on_inbound, idle_timeout=None,
                 on_idle=None):
        self.node, self.port, self.target = node, port, target
        self.proxy_protocol, self.on_inbound = proxy_protocol, on_inbound
        self.idle_timeout, self.on_idle = idle_timeout, on_idle
        self.closed = False

    def close(self):
        self.closed = True
        if self.node.exports.get(self.port) is self:
            del self.node.exports[self.port]


class FakeNode:
    class API:
        def status(self, peers=True):
            return {"Self": {"DNSName": "tp.ts.test."}, "TailscaleIPs": ["100.64.0.9", "fd7a::9"]}

    def __init__(self):
        self.localapi = self.API()
        self.exports = {}           # port -> the open FakeExport (what the node listens on)
        self.fail = False

    async def export(self, port, target, proxy_protocol=False, on_inbound=None,
                     idle_timeout=None, on_idle=None):
        from tailproxy.node import NodeError
        if self.fail:
            raise NodeError("listen tcp :%d: address already in use" % port)
        assert port not in self.exports, "exported twice without closing"
        e = self.exports[port] = FakeExport(self, port, target, proxy_protocol, on_inbound,
                                            idle_timeout, on_idle)
        return e


def test_idle_timeout_withdraws_until_the_program_listens_again():
    """--export-idle-timeout: the node's idle event withdraws the export (claim released, a
    line said); the port stays withdrawn while the program still listens, and comes back
    with its next listen(). A stale event of an export already replaced changes nothing."""
    node, said, live = FakeNode(), [], {("127.0.0.1", 8000)}
    claims = PortClaims()

    async def scenario():
        ex = Exporter(node, PortFilter(None, None, None), proxy_protocol=False,
                      say=said.append, poll_interval=0.01, listeners=lambda: set(live),
                      claims=OwnerClaims(claims, "prog", "prog"), idle_timeout=30)
        await ex.start()
        await ex.on_listen(4, 8000)
        first = node.exports[8000]
        assert first.idle_timeout == 30
        first.on_idle()
        assert ex.exports == {} and first.closed and ex.withdrawn == {8000}
        assert claims.held_by("prog") == []
        assert "port 8000 withdrawn from the tailnet: no connection for 30s" in said[-1]
        await asyncio.sleep(0.05)                   # the poller leaves it withdrawn
        assert 8000 not in node.exports and ex.withdrawn == {8000}
        await ex.on_listen(4, 8000)                 # the program listens again
        second = node.exports[8000]
        assert ex.withdrawn == set() and claims.held_by("prog") == [8000]
        first.on_idle()                             # stale: the first export's late event
        assert node.exports[8000] is second and ex.withdrawn == set()
        await ex.close()
    asyncio.run(scenario())


def test_exporter_lifecycle_with_kernel_truth():
    node, said, live = FakeNode(), [], {("127.0.0.1", 8000)}

    async def scenario():
        ex = Exporter(node, PortFilter(None, parse_ports("22"), 2), proxy_protocol=True,
                      say=said.append, poll_interval=0.01, listeners=lambda: set(live))
        await ex.start()
        await ex.on_listen(4, 8000)
        e = node.exports[8000]
        assert e.target == ("127.0.0.1", 8000) and e.proxy_protocol and e.on_inbound is None
        assert "http://tp.ts.test:8000/" in said[-1] and "[fd7a::9]:8000" in said[-1]
        assert "forwarded to 127.0.0.1:8000" in said[-1]
        await ex.on_listen(4, 22)
        assert 22 not in node.exports and "deny" in said[-1]
        await ex.on_listen(4, 8000)                 # a second listener on the same port
        assert node.exports[8000] is e
        live.add(("127.0.0.1", 9100))
        live.add(("::1", 9000))
        await ex.on_listen(6, 9000)
        await ex.on_listen(4, 9100)
        assert 9100 not in node.exports and "--export-max" in said[-1]
        assert sorted(ex.exports) == [8000, 9000]
        live.discard(("127.0.0.1", 8000))           # last listener gone: the poller notices
        await asyncio.sleep(0.1)
        assert 8000 not in node.exports and e.closed and sorted(ex.exports) == [9000]
        assert "port 8000 is no longer exported" in " ".join(said)
        await ex.close()
        assert node.exports == {} and ex.exports == {}
    asyncio.run(scenario())


def test_ipv6_only_listener_is_forwarded_to_ipv6_loopback():
    node, said = FakeNode(), []
    # the notice says AF_INET6 for both; the kernel says which address listens
    live = {("::1", 3000), ("127.0.0.1", 3001), ("::1", 3002), ("127.0.0.1", 3002)}

    async def scenario():
        ex = Exporter(node, PortFilter(None, None, None), False, said.append,
                      poll_interval=3600, listeners=lambda: set(live))
        await ex.start()
        for port in (3000, 3001, 3002):
            await ex.on_listen(6, port)
        assert node.exports[3000].target == ("::1", 3000)
        assert "forwarded to [::1]:3000" in said[0]
        assert node.exports[3001].target == ("127.0.0.1", 3001)     # v4-mapped listener
        assert node.exports[3002].target == ("127.0.0.1", 3002)     # both: IPv4 first
        await ex.close()
    asyncio.run(scenario())


def test_export_follows_the_address_still_listening():
    node, said = FakeNode(), []
    live = {("127.0.0.1", 4000), ("::1", 4000)}

    async def scenario():
        ex = Exporter(node, PortFilter(None, None, None), True, said.append,
                      poll_interval=3600, listeners=lambda: set(live), verbose=True)
        await ex.start()
        await ex.on_listen(4, 4000)
        first = node.exports[4000]
        assert first.target == ("127.0.0.1", 4000)
        live.discard(("127.0.0.1", 4000))           # the IPv4 listener closes, ::1 stays
        await ex.on_unlisten(4, 4000)
        assert first.closed and node.exports[4000].target == ("::1", 4000)
        assert node.exports[4000].proxy_protocol and node.exports[4000].on_inbound is not None
        assert "port 4000 is now forwarded to [::1]:4000" in said[-1]
        assert ex.exports == {4000: node.exports[4000]}
        live.clear()
        await ex.on_unlisten(6, 4000)
        assert node.exports == {} and ex.exports == {}
        await ex.close()
    asyncio.run(scenario())


def test_node_refusing_an_export_is_reported_and_retried_on_the_next_listen():
    node, said, live = FakeNode(), [], {("127.0.0.1", 5000)}

    async def scenario():
        ex = Exporter(node, PortFilter(None, None, None), False, said.append,
                      poll_interval=3600, listeners=lambda: set(live))
        await ex.start()
        node.fail = True
        await ex.on_listen(4, 5000)
        assert "could not export port 5000: listen tcp :5000" in said[-1] and ex.exports == {}
        node.fail = False
        await ex.on_listen(4, 5000)
        assert node.exports[5000].target == ("127.0.0.1", 5000)
        await ex.close()
    asyncio.run(scenario())


def test_verbose_line_per_inbound_connection_from_the_node_event():
    node, said, live = FakeNode(), [], {("::1", 6000)}

    async def scenario():
        ex = Exporter(node, PortFilter(None, None, None), False, said.append,
                      poll_interval=3600, listeners=lambda: set(live), verbose=True)
        await ex.start()
        await ex.on_listen(6, 6000)
        cb = node.exports[6000].on_inbound
        cb({"id": 3, "ev": "inbound", "src": "100.64.0.2:41234", "node": "peer",
            "user": "alice@example.com", "up": 5, "down": 3 * 1024 * 1024, "reason": "",
            "errno": 0, "ms": 1250})
        assert said[-1] == ("inbound 100.64.0.2:41234 (peer, alice@example.com) -> port 6000 "
                            "[::1]:6000 ok up=5B down=3.0MiB 1.250s")
        cb({"id": 3, "ev": "inbound", "src": "[fd7a::2]:41235", "node": "", "user": "",
            "reason": "connect [::1]:6000: connection refused", "errno": 111})
        assert said[-1] == ("inbound [fd7a::2]:41235 (unknown node, unknown user) -> port 6000 "
                            "[::1]:6000 failed: the program does not answer "
                            "(connect [::1]:6000: connection refused)")
        cb({"id": 3, "ev": "inbound", "src": "100.64.0.2:41236", "node": "peer", "user": "a",
            "up": 10, "down": 0, "reason": "peer: connection reset", "errno": 104, "ms": 5})
        assert "cut (peer: connection reset) up=10B down=0B 0.005s" in said[-1]
        n = len(said)
        cb({"id": 3, "ev": "inbound", "up": "garbage"})  # never raises into the event pipe
        assert len(said) == n
        await ex.close()
    asyncio.run(scenario())
    assert "up=0B" in inbound_line(1, "127.0.0.1:1", {"src": "x"})


def test_proc_net_udp_lists_real_unconnected_loopback_sockets():
    from tailproxy.exporter.listening import loopback_udp_servers
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.connect(server.getsockname())            # connected: a client's, not a server's
    try:
        found = loopback_udp_servers()
        assert ("127.0.0.1", server.getsockname()[1]) in found
        assert ("127.0.0.1", client.getsockname()[1]) not in found
    finally:
        server.close()
        client.close()


class _FakeExport:
    def __init__(self, port, target, udp):
        self.port, self.target, self.udp, self.closed = port, target, udp, False

    def close(self):
        self.closed = True


class _FakeNode:
    def __init__(self):
        self.made = []

    async def export(self, port, target, proxy_protocol=False, on_inbound=None, udp=False):
        self.made.append(_FakeExport(port, target, udp))
        return self.made[-1]


def test_udp_exports_follow_the_kernel_and_share_the_max():
    async def main():
        bound = {("127.0.0.1", 5353)}
        lines = []
        node = _FakeNode()
        ex = Exporter(node, PortFilter(None, parse_ports("9999"), max_exports=2), False,
                      lines.append, udp_servers=lambda: set(bound), listeners=lambda: set())
        await ex.on_udp_bind(4, 5353)
        await ex.on_udp_bind(4, 5353)                   # once only
        await ex.on_udp_bind(4, 9999)                   # denied
        assert [(e.port, e.target, e.udp) for e in node.made] == [(5353, ("127.0.0.1", 5353), True)]
        ex.exports[80] = _FakeExport(80, ("127.0.0.1", 80), False)   # a TCP export counts too
        await ex.on_udp_bind(4, 5354)
        assert "not exporting UDP port 5354: --export-max=2" in lines[-1]
        bound.clear()
        ex.exports.clear()
        await ex._sweep()
        assert node.made[0].closed and not ex.udp_exports
        assert "UDP port 5353 is no longer exported (no socket is bound to it)" in lines[-1]
    asyncio.run(main())

"""The routing policy (src/tailproxy/policy): RouteDialer with a fake node and a fake direct
dialer, TailnetView fed from status dicts, NodeUpstream over a fake TailnetConn."""
import asyncio
import errno
import time

import pytest

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)
from tailproxy.node import DialFailed, RelayEnd
from tailproxy.policy import RouteDialer, TailnetView
from tailproxy.policy.upstream import NodeUpstream
from tailproxy.proxy.dialer import DialError
from tailproxy.resolver import PlaceholderMap

PEER_ONLINE_V4, PEER_ONLINE_V6 = "100.64.0.2", "fd7a:115c:a1e0::2"
PEER_OFFLINE = "100.64.0.3"
NO_PEER = "100.64.0.77"

STATUS = {
    "CurrentTailnet": {"MagicDNSSuffix": "ts.test"},
    "Self": {"DNSName": "me.ts.test.", "TailscaleIPs": ["100.64.0.9"]},
    "Peer": {
        "a": {"DNSName": "peer.ts.test.", "TailscaleIPs": [PEER_ONLINE_V4, PEER_ONLINE_V6],
              "Online": True},
        "b": {"DNSName": "sleepy.ts.test.", "TailscaleIPs": [PEER_OFFLINE], "Online": False},
        "c": {"DNSName": "router.ts.test.", "TailscaleIPs": ["100.64.0.4"], "Online": True,
              "PrimaryRoutes": ["192.168.50.0/24", "0.0.0.0/0", "::/0"]},
        "d": {"DNSName": "shared.other.net.", "TailscaleIPs": ["100.64.0.5"], "Online": True},
    },
    "ExitNodeStatus": None,
}


def with_exit_node(st=STATUS):
    return dict(st, ExitNodeStatus={"ID": "nodeid-c", "Online": True})


def run(coro):
    return asyncio.run(coro)


class FakeConn:
    """Stands in for a TailnetConn."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.local_address = ("100.64.0.9", 40000)
        self.relayed = []
        self.closed = False

    def relay(self, sock, done=None, initial=b""):
        self.relayed.append((sock, done, initial))

    def close(self):
        self.closed = True


class FakeNode:
    def __init__(self, fail: DialFailed | None = None):
        self.calls = []
        self.fail = fail

    async def connect(self, host, port, timeout):
        self.calls.append((host, port))
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return FakeConn(host, port)

    async def dial_udp(self, host, port, timeout):
        self.calls.append(("udp", host, port))
        if self.fail is not None:
            raise self.fail
        return ("node-udp", host, port)

    async def connect_udp(self, host, port, timeout):
        self.calls.append(("udp-assoc", host, port))
        if self.fail is not None:
            raise self.fail
        return FakeConn(host, port)


class FakeDirect:
    """A direct dialer: start_dial gives a 'socket' at once (a local destination would)."""

    def __init__(self):
        self.calls = []

    def start_dial(self, host, port, timeout):
        self.calls.append((host, port))
        return ("direct", host, port)

    async def dial(self, host, port, timeout):
        return self.start_dial(host, port, timeout)

    async def dial_udp(self, host, port, timeout):
        self.calls.append(("udp", host, port))
        return ("direct-udp", host, port)

    async def associate_udp(self, host, port, timeout):
        self.calls.append(("udp-assoc", host, port))
        return None


class Status:
    """The node's status, counted."""

    def __init__(self, st=STATUS):
        self.st, self.calls = st, 0

    def __call__(self):
        self.calls += 1
        return self.st


def loaded_view(st=STATUS, ttl=60.0, accept_routes=False):
    status = Status(st)
    view = TailnetView(status, ttl=ttl, accept_routes=accept_routes)
    view.load(st)
    return view, status


def make(st=STATUS, node="fake", placeholders=None, tailnet_only=False, ttl=60.0,
         accept_routes=False):
    view, status = loaded_view(st, ttl, accept_routes)
    node = FakeNode() if node == "fake" else node
    direct = FakeDirect()
    logged = []
    d = RouteDialer(node=node, direct=direct, view=view, placeholders=placeholders,
                    tailnet_only=tailnet_only, log=logged.append)
    return d, node, direct, status, logged


def via_node(out, host, port):
    out = getattr(out, "inner", out)      # a placeholder's upstream holds it (resolver/held.py)
    assert isinstance(out, NodeUpstream), out
    assert (out._conn.host, out._conn.port) == (host, port)
    assert out.local_address == ("100.64.0.9", 40000)
    return out


def dial_error(d, host, port) -> DialError:
    with pytest.raises(DialError) as e:
        run(d.dial(host, port, 5))
    return e.value


# ---------------------------------------------------------------- placeholders

def test_placeholder_is_dialled_by_name_through_the_node():
    m = PlaceholderMap()
    d, node, direct, status, logged = make(placeholders=m)
    v4, v6 = m.get("far.example", 4), m.get("Other.Example.", 6)
    via_node(run(d.dial(v4, 443, 5)), "far.example", 443)
    via_node(run(d.dial("[" + v6 + "]", 80, 5)), "other.example", 80)
    via_node(run(d.dial("::ffff:" + v4, 22, 5)), "far.example", 22)
    assert node.calls == [("far.example", 443), ("other.example", 80), ("far.example", 22)]
    assert direct.calls == [] and status.calls == 0
    assert any("far.example" in m for m in logged)


def test_placeholder_without_the_node_is_dialled_by_name_directly():
    m = PlaceholderMap()
    ip = m.get("far.example", 4)
    d = RouteDialer(node=None, direct=(direct := FakeDirect()), view=None, placeholders=m)
    assert run(d.dial(ip, 443, 5)) == ("direct", "far.example", 443)
    # without the node everything else is direct, tailnet addresses too
    assert run(d.dial("10.0.0.1", 22, 5)) == ("direct", "10.0.0.1", 22)
    assert run(d.dial(PEER_ONLINE_V4, 22, 5)) == ("direct", PEER_ONLINE_V4, 22)
    assert direct.calls == [("far.example", 443), ("10.0.0.1", 22), (PEER_ONLINE_V4, 22)]


@pytest.mark.parametrize("with_node", [True, False])
def test_unknown_placeholder_is_unreachable(with_node):
    m = PlaceholderMap()
    m.get("far.example", 4)
    d, node, direct, status, _ = make(placeholders=m, node="fake" if with_node else None)
    for host in ("240.9.9.9", "fd74:7072:6f78::99", "::ffff:240.9.9.9"):
        with pytest.raises(DialError) as e:
            d.start_dial(host, 80, 5)          # refused at once, before any await
        assert e.value.errno == errno.EHOSTUNREACH
        assert "placeholder" in str(e.value)
    assert direct.calls == [] and (node is None or node.calls == [])


def test_placeholder_range_is_not_special_without_a_map():
    d, node, direct, _, _ = make(placeholders=None)
    assert run(d.dial("240.0.0.1", 80, 5)) == ("direct", "240.0.0.1", 80)
    assert node.calls == []


# ---------------------------------------------------------------- exit node

def test_exit_node_in_use_sends_everything_through_the_node():
    d, node, direct, _, _ = make(with_exit_node())
    via_node(run(d.dial("example.com", 443, 5)), "example.com", 443)
    via_node(run(d.dial("93.184.215.14", 80, 5)), "93.184.215.14", 80)
    via_node(run(d.dial("2001:db8::1", 80, 5)), "2001:db8::1", 80)
    via_node(run(d.dial(PEER_ONLINE_V4, 22, 5)), PEER_ONLINE_V4, 22)
    assert direct.calls == []
    assert len(node.calls) == 4


def test_exit_node_in_use_still_refuses_an_offline_peer():
    d, node, _, _, _ = make(with_exit_node())
    assert dial_error(d, PEER_OFFLINE, 22).errno == errno.EHOSTUNREACH
    assert node.calls == []


# ---------------------------------------------------------------- tailnet addresses

def test_online_peer_address_goes_through_the_node():
    d, node, direct, status, _ = make()
    via_node(run(d.dial(PEER_ONLINE_V4, 22, 5)), PEER_ONLINE_V4, 22)
    via_node(run(d.dial("[" + PEER_ONLINE_V6 + "]", 22, 5)), "[" + PEER_ONLINE_V6 + "]", 22)
    assert direct.calls == [] and status.calls == 0


def test_v4_mapped_addresses_are_routed_as_their_ipv4_address():
    d, node, direct, _, _ = make(tailnet_only=True)
    via_node(run(d.dial("::ffff:" + PEER_ONLINE_V4, 22, 5)), PEER_ONLINE_V4, 22)
    assert dial_error(d, "::ffff:100.64.99.1", 80).errno == errno.EHOSTUNREACH
    assert dial_error(d, "[::ffff:" + PEER_OFFLINE + "]", 80).errno == errno.EHOSTUNREACH
    d, node, direct, _, _ = make()
    assert run(d.dial("::ffff:10.0.0.1", 80, 5)) == ("direct", "10.0.0.1", 80)


def test_offline_peer_is_refused_at_once():
    d, node, direct, status, _ = make()
    e = dial_error(d, PEER_OFFLINE, 22)
    assert e.errno == errno.EHOSTUNREACH and "offline" in str(e)
    assert node.calls == [] and direct.calls == []
    assert status.calls == 0             # known peer: no second look at the status


def test_tailnet_address_of_no_peer_is_refused_after_one_refresh():
    d, node, direct, status, _ = make()
    e = dial_error(d, NO_PEER, 80)
    assert e.errno == errno.EHOSTUNREACH and "no peer" in str(e)
    assert status.calls == 1             # one forced look: a peer may have just joined
    assert node.calls == [] and direct.calls == []
    e = dial_error(d, "fd7a:115c:a1e0::77", 80)
    assert e.errno == errno.EHOSTUNREACH and status.calls == 2


def test_a_peer_that_just_joined_is_found_by_the_forced_refresh():
    d, node, _, status, _ = make()
    newer = dict(STATUS, Peer=dict(STATUS["Peer"], e={"DNSName": "new.ts.test.",
                                                      "TailscaleIPs": [NO_PEER], "Online": True}))
    status.st = newer
    via_node(run(d.dial(NO_PEER, 80, 5)), NO_PEER, 80)
    assert status.calls == 1


def test_accepted_subnet_route_goes_through_the_node_but_not_the_exit_routes():
    d, node, direct, _, _ = make(accept_routes=True)
    via_node(run(d.dial("192.168.50.10", 80, 5)), "192.168.50.10", 80)
    assert run(d.dial("192.168.51.10", 80, 5)) == ("direct", "192.168.51.10", 80)
    assert run(d.dial("8.8.8.8", 53, 5)) == ("direct", "8.8.8.8", 53)        # 0.0.0.0/0 ignored
    assert run(d.dial("2001:db8::1", 53, 5)) == ("direct", "2001:db8::1", 53)  # ::/0 ignored
    assert d.view.routes() == [("192.168.50.0/24", "router.ts.test")]


def test_routes_not_accepted_are_not_tailnet_destinations():
    # without --accept-routes (Linux's default) a peer's route is this host's business: the
    # node would not carry it, so it is dialled directly, and --tailnet-only refuses it
    d, node, direct, _, _ = make()
    assert run(d.dial("192.168.50.10", 80, 5)) == ("direct", "192.168.50.10", 80)
    assert node.calls == [] and d.view.routes() == []
    d, node, direct, _, _ = make(tailnet_only=True)
    e = dial_error(d, "192.168.50.10", 80)
    assert e.errno == errno.EHOSTUNREACH and "tailnet-only" in str(e)
    assert node.calls == [] and direct.calls == []


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("name", ["peer.ts.test", "PEER.ts.test.", "peer", "sleepy",
                                  "shared.other.net", "shared", "me.ts.test"])
def test_tailnet_names_go_through_the_node(name):
    d, node, direct, _, _ = make()
    via_node(run(d.dial(name, 80, 5)), name, 80)
    assert direct.calls == []


@pytest.mark.parametrize("exit_node", [False, True])
@pytest.mark.parametrize("tailnet_only", [False, True])
@pytest.mark.parametrize("name", ["leakcheck.ts.test", "LeakCheck.TS.test.", "a.b.ts.test",
                                  "ts.test"])
def test_names_under_the_suffix_not_in_the_netmap_are_refused(name, exit_node, tailnet_only):
    # neither dialled by name through the node (which would ask a resolver: this host's, or the
    # exit node's) nor dialled directly (this host's resolver): refused, after one fresh look
    d, node, direct, status, logged = make(with_exit_node() if exit_node else STATUS,
                                           tailnet_only=tailnet_only)
    e = dial_error(d, name, 80)
    assert e.errno == errno.EHOSTUNREACH and "no node of this tailnet" in str(e)
    assert node.calls == [] and direct.calls == []
    assert status.calls == 1
    assert any("refused" in m for m in logged)


def test_a_name_that_just_joined_is_found_by_the_forced_refresh():
    d, node, _, status, _ = make()
    status.st = dict(STATUS, Peer=dict(STATUS["Peer"], e={"DNSName": "new.ts.test.",
                                                          "TailscaleIPs": [NO_PEER], "Online": True}))
    via_node(run(d.dial("new.ts.test", 80, 5)), "new.ts.test", 80)
    assert status.calls == 1


def test_other_names_and_addresses_are_dialled_directly():
    d, node, direct, _, _ = make()
    out = d.start_dial("10.0.0.1", 22, 5)        # the hot path stays synchronous
    assert out == ("direct", "10.0.0.1", 22)
    assert run(d.dial("example.com", 443, 5)) == ("direct", "example.com", 443)
    assert run(d.dial("ts.test.example.org", 443, 5)) == ("direct", "ts.test.example.org", 443)
    assert run(d.dial("::1", 80, 5)) == ("direct", "::1", 80)
    assert node.calls == []


def test_tailnet_only_refuses_what_is_not_on_the_tailnet():
    d, node, direct, _, logged = make(tailnet_only=True, accept_routes=True)
    for host in ("example.com", "10.0.0.1", "2001:db8::1"):
        e = dial_error(d, host, 80)
        assert e.errno == errno.EHOSTUNREACH and "tailnet-only" in str(e)
    assert direct.calls == [] and node.calls == []
    assert any("refused" in m for m in logged)
    via_node(run(d.dial("peer", 80, 5)), "peer", 80)
    via_node(run(d.dial(PEER_ONLINE_V4, 80, 5)), PEER_ONLINE_V4, 80)
    via_node(run(d.dial("192.168.50.1", 80, 5)), "192.168.50.1", 80)       # an accepted route


@pytest.mark.parametrize("host", ["100.64.99.1", "100.127.255.254", "fd7a:115c:a1e0::99"])
def test_tailnet_only_trusts_no_cgnat_address_that_is_no_peers(host):
    # "tailnet destination" is a peer's address, an accepted route or a MagicDNS name: an
    # address of the tailnet's range that no peer has (a local 100.64/10 address, say) is none
    d, node, direct, status, _ = make(tailnet_only=True, accept_routes=True)
    e = dial_error(d, host, 7200)
    assert e.errno == errno.EHOSTUNREACH and "no peer" in str(e)
    assert node.calls == [] and direct.calls == []


def test_tailnet_only_with_an_exit_node_sends_everything_through_it():
    d, node, direct, _, _ = make(with_exit_node(), tailnet_only=True)
    via_node(run(d.dial("example.com", 443, 5)), "example.com", 443)
    assert direct.calls == []


# ---------------------------------------------------------------- node errors

@pytest.mark.parametrize("code", [errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                                  errno.ENETDOWN])
def test_dial_failed_becomes_dial_error_with_its_errno(code):
    node = FakeNode(fail=DialFailed("dial peer:80: it failed", code))
    d, _, direct, _, _ = make(node=node)
    e = dial_error(d, "peer", 80)
    assert type(e) is DialError
    assert e.errno == code and "it failed" in str(e)
    assert node.calls == [("peer", 80)] and direct.calls == []


def test_dial_failed_for_a_placeholder_becomes_dial_error():
    m = PlaceholderMap()
    node = FakeNode(fail=DialFailed("dial far.example:443: no such host", errno.EHOSTUNREACH))
    d, _, _, _, _ = make(node=node, placeholders=m)
    assert dial_error(d, m.get("far.example", 4), 443).errno == errno.EHOSTUNREACH


# ---------------------------------------------------------------- the view's age

def test_a_view_never_loaded_is_loaded_before_routing():
    status = Status(with_exit_node())
    view = TailnetView(status, ttl=60)
    assert not view.fresh
    node, direct = FakeNode(), FakeDirect()
    d = RouteDialer(node=node, direct=direct, view=view)
    via_node(run(d.dial("example.com", 443, 5)), "example.com", 443)   # exit node seen
    assert status.calls == 1 and view.fresh
    run(d.dial("example.org", 443, 5))
    assert status.calls == 1                                            # within the TTL


def test_a_stale_view_is_refreshed_before_routing():
    d, node, direct, status, _ = make(ttl=0.05)
    assert run(d.dial("example.com", 443, 5)) == ("direct", "example.com", 443)
    assert status.calls == 0
    status.st = with_exit_node()                  # an exit node was chosen meanwhile
    time.sleep(0.1)
    assert not d.view.fresh
    via_node(run(d.dial("example.com", 443, 5)), "example.com", 443)
    assert status.calls == 1


def test_invalidate_forces_a_refresh():
    d, node, direct, status, _ = make(ttl=60)
    assert run(d.dial("example.com", 443, 5)) == ("direct", "example.com", 443)
    status.st = with_exit_node()
    assert run(d.dial("example.com", 443, 5)) == ("direct", "example.com", 443)   # still fresh
    assert status.calls == 0
    d.view.invalidate()
    assert not d.view.fresh
    via_node(run(d.dial("example.com", 443, 5)), "example.com", 443)
    assert status.calls == 1
    status.st = STATUS
    d.view.invalidate()
    assert run(d.dial("example.com", 443, 5)) == ("direct", "example.com", 443)
    assert status.calls == 2


def test_view_from_status():
    view, _ = loaded_view()
    import ipaddress as ipa
    assert view.peer_online(ipa.ip_address(PEER_ONLINE_V4)) is True
    assert view.peer_online(ipa.ip_address(PEER_ONLINE_V6)) is True
    assert view.peer_online(ipa.ip_address(PEER_OFFLINE)) is False
    assert view.peer_online(ipa.ip_address(NO_PEER)) is None
    assert view.is_tailnet_name("Peer.TS.test.") and view.is_tailnet_name("me")
    assert not view.is_tailnet_name("x.ts.test") and view.unknown_under_suffix("x.ts.test")
    assert not view.is_tailnet_name("ts.test") and not view.is_tailnet_name("example.com")
    assert not view.unknown_under_suffix("peer.ts.test") and not view.unknown_under_suffix("x.test")
    assert not view.in_routes(ipa.ip_address("192.168.50.255"))     # routes not accepted
    view, _ = loaded_view(accept_routes=True)
    assert view.in_routes(ipa.ip_address("192.168.50.255"))
    assert not view.in_routes(ipa.ip_address("1.1.1.1"))
    assert not view.exit_node_in_use
    view.load(with_exit_node())
    assert view.exit_node_in_use
    view.load({})                                   # an empty status: nothing on the tailnet
    assert not view.is_tailnet_name("peer") and view.peer_online(ipa.ip_address(PEER_ONLINE_V4)) is None


# ---------------------------------------------------------------- NodeUpstream

def test_node_upstream_joins_through_the_conn_and_reports_the_end():
    import socket
    conn = FakeConn("peer", 80)
    up = NodeUpstream(conn)
    assert up.local_address == conn.local_address
    a, b = socket.socketpair()
    ended = []
    joined = up.join(a, lambda *args: ended.append(args), b"hello")
    (sock, on_end, initial), = conn.relayed
    assert sock is a and initial == b"hello"
    assert not joined.finished
    on_end(RelayEnd(5, 7, "reset by peer", errno.ECONNRESET))
    assert joined.finished and ended == [(5, 7, errno.ECONNRESET, "reset by peer")]
    assert a.fileno() == -1 and not joined.delivering()
    b.close()
    NodeUpstream(c2 := FakeConn("peer", 81)).close()
    assert c2.closed


# ---------------------------------------------------------------- UDP takes the TCP route

@pytest.mark.parametrize("host,want", [
    (PEER_ONLINE_V4, ("node-udp", PEER_ONLINE_V4, 53)),
    ("::ffff:" + PEER_ONLINE_V4, ("node-udp", PEER_ONLINE_V4, 53)),
    ("peer", ("node-udp", "peer", 53)),
    ("198.51.100.7", ("direct-udp", "198.51.100.7", 53)),
])
def test_udp_goes_where_tcp_would(host, want):
    d, node, direct, status, logged = make()
    assert run(d.dial_udp(host, 53, 5)) == want


def test_udp_to_a_placeholder_goes_by_name_through_the_node():
    m = PlaceholderMap()
    d, node, direct, *_ = make(placeholders=m)
    assert run(d.dial_udp(m.get("far.example", 4), 443, 5)) == ("node-udp", "far.example", 443)


def test_udp_with_an_exit_node_never_goes_direct():
    d, node, direct, *_ = make(st=with_exit_node())
    assert run(d.dial_udp("198.51.100.7", 443, 5)) == ("node-udp", "198.51.100.7", 443)
    assert direct.calls == []


@pytest.mark.parametrize("host,why", [(PEER_OFFLINE, "offline"), (NO_PEER, "no peer"),
                                      ("nosuch.ts.test", "no node")])
def test_udp_refusals_are_the_tcp_ones(host, why):
    d, *_ = make()
    with pytest.raises(DialError, match=why) as e:
        run(d.dial_udp(host, 53, 5))
    assert e.value.errno == errno.EHOSTUNREACH


def test_udp_tailnet_only_refuses_direct():
    d, node, direct, *_ = make(tailnet_only=True)
    with pytest.raises(DialError, match="tailnet-only"):
        run(d.dial_udp("198.51.100.7", 53, 5))
    assert direct.calls == []


def test_udp_node_failure_keeps_its_errno():
    d, *_ = make(node=FakeNode(fail=DialFailed("dial: boom", errno.ENETUNREACH)))
    with pytest.raises(DialError) as e:
        run(d.dial_udp(PEER_ONLINE_V4, 53, 5))
    assert e.value.errno == errno.ENETUNREACH


# ---------------------------------------------------------------- the preload's UDP associations

def test_udp_association_routes_as_a_tcp_dial_would():
    d, node, direct, _, _ = make()
    conn = run(d.associate_udp(PEER_ONLINE_V4, 7, 5))
    assert (conn.host, conn.port) == (PEER_ONLINE_V4, 7)
    conn = run(d.associate_udp("::ffff:" + PEER_ONLINE_V4, 7, 5))    # v4-mapped: the peer
    assert conn.host == PEER_ONLINE_V4
    assert run(d.associate_udp("198.51.100.7", 7, 5)) is None         # not routed: direct
    assert direct.calls == [("udp-assoc", "198.51.100.7", 7)]
    with pytest.raises(DialError) as e:
        run(d.associate_udp(PEER_OFFLINE, 7, 5))
    assert e.value.errno == errno.EHOSTUNREACH
    d, _, _, _, _ = make(tailnet_only=True)
    with pytest.raises(DialError) as e:
        run(d.associate_udp("198.51.100.7", 7, 5))
    assert e.value.errno == errno.EHOSTUNREACH

"""The name service (src/tailproxy/resolver): placeholders, /etc/hosts, tailnet names, the
service's decisions, DNS answers, the channel ops, the responder's owner check."""
import asyncio
import errno
import os
import socket
import struct

import dns.message
import dns.rrset
import pytest
from dns.rcode import FORMERR, NOERROR, NXDOMAIN
from dns.rdatatype import A, AAAA, MX, OPT, PTR, TXT

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)
from tailproxy.resolver import DNSResponder, HostsFile, NameService, PlaceholderMap, check_range
from tailproxy.resolver import dnsmsg
from tailproxy.resolver.placeholders import ENTRY_OVERHEAD, RECENT_S, PlaceholdersFull
from tailproxy.peeruid import socket_uid
from tailproxy.resolver.tailnet import TailnetNames

STATUS = {
    "CurrentTailnet": {"MagicDNSSuffix": "ts.test"},
    "Self": {"DNSName": "me.ts.test.", "TailscaleIPs": ["100.64.0.9", "fd7a:115c:a1e0::9"]},
    "Peer": {"a": {"DNSName": "peer.ts.test.", "TailscaleIPs": ["fd7a:115c:a1e0::2", "100.64.0.2"]},
             "b": {"DNSName": "shared.other.net.", "TailscaleIPs": ["100.64.0.7"]}},
}


def run(coro):
    return asyncio.run(coro)


# DNS messages (dnspython), in the shapes these tests read
def build_query(name, qtype, qid=0):
    m = dns.message.make_query(dnsmsg.to_name(name), qtype, use_edns=False)
    m.id = qid
    return m.to_wire()


def build_answer(raw, rcode=NOERROR, answers=()):
    """An answer to the query `raw`: answers are (type, ttl, value) for the question's name."""
    q = dnsmsg.read_query(raw)
    r = dnsmsg.response(q, rcode)
    for rtype, ttl, value in answers:
        r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", rtype, value))
    return r.to_wire(max_size=65535)


class Answer:
    def __init__(self, buf):
        m = dns.message.from_wire(buf)
        self.id, self.rcode = m.id, m.rcode()
        self.records = [(dnsmsg.name_text(rr.name), rr.rdtype, rr.ttl, rd) for rr in m.answer
                        for rd in rr]

    def values(self, rtype):
        return [dnsmsg.name_text(v.target) if rtype == PTR else v.address
                for _o, t, _ttl, v in self.records if t == rtype]


parse_answer = Answer


class FakeSystem:
    def __init__(self):
        self.calls = []

    async def getaddrinfo(self, name, version):
        self.calls.append(("gai", name, version))
        if name == b"example.com":
            return 0, ["93.184.215.14"], "example.com"
        return errno.ENOENT, [], ""

    async def gethostbyaddr(self, ip):
        self.calls.append(("gha", ip))
        return errno.ENOENT, "", []

    async def forward(self, q, raw, search):
        self.calls.append(("fwd", dnsmsg.name_text(q.question[0].name), search))
        return build_answer(raw, NXDOMAIN)


@pytest.fixture
def hosts(tmp_path):
    p = tmp_path / "hosts"
    p.write_text("# comment\n127.0.0.1 localhost\n10.1.2.3 myhost.example myhost  # x\n"
                 "10.1.2.4 myhost\nfe80::1%eth0 ll6\nbogus line\n")
    return HostsFile(str(p))


def service(hosts, mode="auto", status=STATUS, exit_node=False, query=None):
    st = dict(status, ExitNodeStatus={"ID": "x"} if exit_node else None)
    return NameService(status=lambda: st, mode=mode, hosts=hosts, system=FakeSystem(),
                       dns_query=query)


# ---------------------------------------------------------------- placeholders

def test_placeholders_stable_distinct_and_reversible():
    m = PlaceholderMap()
    a, b = m.get("Example.com.", 4), m.get("other.test", 4)
    assert a == "240.0.0.1" and b == "240.0.0.2"
    assert m.get("example.com", 4) == a
    assert m.get("example.com", 6) == "fd74:7072:6f78::1"
    assert m.name_of(a) == "example.com" and m.name_of("fd74:7072:6f78::1") == "example.com"
    assert m.name_of("::ffff:" + a) == "example.com"
    assert m.name_of("240.0.0.99") is None and m.contains("240.0.0.99")
    assert not m.contains("10.0.0.1") and m.name_of("not an ip") is None


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_placeholders_evict_least_recently_used_once_not_recent():
    clock = Clock()
    m = PlaceholderMap(max_bytes=2 * (ENTRY_OVERHEAD + 1), clock=clock)
    a = m.get("a", 4)
    m.get("b", 4)
    clock.t += RECENT_S
    m.name_of(a)                   # a used again
    m.get("c", 4)                  # evicts b, answered long ago
    assert m.name_of(a) == "a" and len(m) == 2
    assert "b" not in [m.name_of(f"240.0.0.{i}") for i in range(1, 5)]


def test_placeholders_recent_or_held_are_never_evicted_new_names_are_refused():
    clock = Clock()
    m = PlaceholderMap(max_bytes=2 * (ENTRY_OVERHEAD + 1), clock=clock)
    a, b = m.get("a", 4), m.get("b", 4)
    with pytest.raises(PlaceholdersFull):
        m.get("c", 4)              # a and b were answered just now
    m.hold("a")
    clock.t += RECENT_S
    m.get("c", 4)                  # b was old and not held: evicted
    clock.t += RECENT_S
    m.get("d", 4)                  # c old now too; a is held by a live connection
    assert m.name_of(a) == "a" and m.name_of(b) != "b"
    m.release("a")                 # the connection ended: a is recent, then old
    clock.t += RECENT_S
    m.get("e", 4)
    m.get("f", 4)
    assert m.name_of(a) != "a"


def test_placeholder_range_reuses_freed_addresses():
    clock = Clock()
    m = PlaceholderMap("240.1.0.0/24", clock=clock)
    got = {m.get(f"n{i}", 4) for i in range(254)}
    assert len(got) == 254 and "240.1.0.255" not in got and "240.1.0.0" not in got
    with pytest.raises(PlaceholdersFull):
        m.get("one-more", 4)       # all answered just now
    clock.t += RECENT_S
    assert m.get("one-more", 4) in got      # oldest evicted, its address reused


@pytest.mark.parametrize("cidr,version", [("224.0.0.0/8", 4), ("127.0.0.0/8", 4),
                                          ("100.64.0.0/12", 4), ("10.0.0.0/30", 4),
                                          ("ff00::/16", 6), ("fd7a:115c:a1e0::/64", 6),
                                          ("fd00::/48", 4), ("nonsense", 4)])
def test_placeholder_ranges_refused(cidr, version):
    with pytest.raises(ValueError):
        check_range(cidr, version)


def test_placeholder_ranges_accepted():
    assert str(check_range("240.0.0.0/4", 4)) == "240.0.0.0/4"
    assert str(check_range("198.51.100.0/24", 4)) == "198.51.100.0/24"


# ---------------------------------------------------------------- hosts, tailnet names

def test_hosts_file(hosts, tmp_path):
    e = hosts.lookup("MYHOST.")
    assert (e.canon, e.aliases, e.addrs) == ("myhost.example", ["myhost"], ["10.1.2.3", "10.1.2.4"])
    assert hosts.lookup("myhost", 6).addrs == []
    assert hosts.lookup("ll6", 6).addrs == ["fe80::1"]
    assert hosts.lookup("nope") is None
    assert hosts.reverse("10.1.2.3") == ("myhost.example", ["myhost"])
    (tmp_path / "hosts").write_text("10.9.9.9 fresh\n")
    os.utime(tmp_path / "hosts", ns=(1, 1))
    assert hosts.lookup("fresh").addrs == ["10.9.9.9"] and hosts.lookup("myhost") is None


def test_tailnet_names_from_status():
    tn = TailnetNames.from_status(STATUS)
    assert tn.lookup("peer") == ("peer.ts.test", ["100.64.0.2", "fd7a:115c:a1e0::2"])
    assert tn.lookup("PEER.ts.test.")[0] == "peer.ts.test"
    assert tn.lookup("me")[0] == "me.ts.test"
    assert tn.lookup("shared.other.net") and tn.lookup("shared") is None   # not MagicDNS-short
    assert tn.by_ip["fd7a:115c:a1e0::9"] == "me.ts.test"
    assert tn.under_suffix("x.ts.test") and not tn.under_suffix("ts.testing")


# ---------------------------------------------------------------- the service

def test_resolve_order_and_modes(hosts):
    ns = service(hosts)
    r = run(ns.resolve(b"myhost", 0))
    assert (r.err, r.addrs, r.flags, r.canon) == (0, ["10.1.2.3", "10.1.2.4"], cp.RES_HOSTS,
                                                  "myhost.example")
    assert run(ns.resolve(b"myhost", 6)).err == errno.ENODATA        # hosts: no AAAA elsewhere
    r = run(ns.resolve(b"peer", 6))
    assert (r.addrs, r.flags, r.canon) == (["fd7a:115c:a1e0::2"], cp.RES_TAILNET, "peer.ts.test")
    assert run(ns.resolve(b"nosuch.ts.test", 0)).err == errno.ENOENT
    r = run(ns.resolve(b"example.com", 4))                           # no exit node: the system's
    assert (r.err, r.addrs, r.flags) == (0, ["93.184.215.14"], 0)
    assert ns.system.calls == [("gai", b"example.com", 4)]
    assert run(ns.resolve(b"bad..name", 0)).err == errno.ENOENT
    assert run(ns.resolve(b"x" * 300, 0)).err == errno.ENOENT


@pytest.mark.parametrize("how", ["exit-node", "dns-mode"])
def test_placeholders_with_exit_node_or_dns_mode(hosts, how):
    ns = service(hosts, mode="tailnet" if how == "dns-mode" else "auto", exit_node=how == "exit-node")
    r = run(ns.resolve(b"example.com", 0))
    assert (r.addrs, r.flags, r.canon) == (["240.0.0.1"], cp.RES_PLACEHOLDER, "example.com")
    assert run(ns.resolve(b"example.com", 6)).addrs == ["fd74:7072:6f78::1"]
    assert run(ns.reverse("240.0.0.1")) == (0, "example.com", [])
    assert ns.system.calls == []                                     # nothing asked locally
    assert run(ns.resolve(b"peer", 4)).addrs == ["100.64.0.2"]


def test_idn_names(hosts):
    ns = service(hosts, exit_node=True)
    r = run(ns.resolve("bücher.example".encode(), 0, idn=True))
    assert r.canon == "xn--bcher-kva.example" and r.flags == cp.RES_PLACEHOLDER


def test_reverse(hosts):
    ns = service(hosts)
    assert run(ns.reverse("100.64.0.2")) == (0, "peer.ts.test", [])
    assert run(ns.reverse("::ffff:100.64.0.9")) == (0, "me.ts.test", [])
    assert run(ns.reverse("10.1.2.3")) == (0, "myhost.example", ["myhost"])
    assert run(ns.reverse("240.0.0.5"))[0] == errno.ENOENT          # unassigned placeholder
    assert run(ns.reverse("192.0.2.1"))[0] == errno.ENOENT
    assert ns.system.calls == [("gha", "192.0.2.1")]


def test_reverse_through_the_node_with_exit_node(hosts):
    def q(name, qtype):
        assert (name, qtype) == ("1.2.0.192.in-addr.arpa", "PTR")
        return build_answer(build_query(name, PTR, 1), 0, [(PTR, 60, "far.example.")])
    ns = service(hosts, exit_node=True, query=q)
    assert run(ns.reverse("192.0.2.1")) == (0, "far.example", [])
    assert ns.system.calls == []


def answer_of(ns, name, qtype, **kw):
    return parse_answer(run(ns.query(build_query(name, qtype, 4321), **kw)))


def test_query_answers(hosts):
    ns = service(hosts)
    a = answer_of(ns, "peer.ts.test", A)
    assert (a.id, a.rcode, a.values(A)) == (4321, 0, ["100.64.0.2"])
    assert answer_of(ns, "peer", AAAA).values(AAAA) == ["fd7a:115c:a1e0::2"]
    assert answer_of(ns, "nosuch.ts.test", A).rcode == NXDOMAIN
    a = answer_of(ns, "peer", MX)
    assert (a.rcode, a.records) == (0, [])                            # NODATA
    a = answer_of(ns, "9.0.64.100.in-addr.arpa", PTR)
    assert a.values(PTR) == ["me.ts.test"]
    assert answer_of(ns, "example.org", MX, search=True).rcode == NXDOMAIN
    assert ns.system.calls[-1] == ("fwd", "example.org", True)       # system mode: forwarded
    assert run(ns.query(b"\x00\x01garbage")) == b""                 # not even a header
    bad = build_query("peer", A, 8)[:-3]
    assert parse_answer(run(ns.query(bad))).rcode == FORMERR


def test_query_other_types_through_the_node_with_exit_node(hosts):
    seen = []

    def q(name, qtype):
        seen.append((name, qtype))
        return build_answer(build_query(name, TXT, 1), NOERROR)
    ns = service(hosts, exit_node=True, query=q)
    a = answer_of(ns, "example.org", TXT)
    assert a.id == 4321 and seen == [("example.org.", "TXT")] and ns.system.calls == []
    assert answer_of(ns, "example.org", A).values(A) == ["240.0.0.1"]


def test_status_failure_keeps_serving(hosts):
    def broken():
        raise OSError("node gone")
    ns = NameService(status=broken, hosts=hosts, system=FakeSystem())
    assert run(ns.resolve(b"myhost", 4)).addrs == ["10.1.2.3", "10.1.2.4"]
    assert run(ns.resolve(b"peer", 4)).err == errno.ENOENT           # asked the system instead


def test_channel_handle_roundtrip(hosts):
    ns = service(hosts, exit_node=True)
    rep = cp.decode_reply(run(ns.handle(cp.decode_request(cp.encode_resolve(b"peer", 0, seq=3)))))
    assert (rep.op, rep.err, rep.addrs, rep.name) == (cp.OP_RESOLVE, 0,
                                                      ("100.64.0.2", "fd7a:115c:a1e0::2"),
                                                      "peer.ts.test")
    rep = cp.decode_reply(run(ns.handle(cp.decode_request(cp.encode_resolve(b"myhost", 4)))))
    assert rep.aliases == ("myhost",) and rep.flags == cp.RES_HOSTS
    rev = cp.decode_reply(run(ns.handle(cp.decode_request(
        cp.encode_reverse(cp.Address(4, "100.64.0.2", 0))))))
    assert (rev.op, rev.err, rev.name) == (cp.OP_REVERSE, 0, "peer.ts.test")
    q = build_query("peer", A, 9)
    rep = cp.decode_reply(run(ns.handle(cp.decode_request(cp.encode_query(q, search=True)))))
    assert parse_answer(rep.answer).values(A) == ["100.64.0.2"]


def test_channel_proto_name_ops_layout_and_errors():
    assert len(cp.encode_resolve(b"x")) == cp.RESOLVE_REQ_SIZE == 267
    assert len(cp.encode_resolve_reply(0, ["1.2.3.4"])) == cp.RESOLVE_REP_SIZE == 1104
    assert len(cp.encode_reverse_reply(errno.ENOENT)) == cp.REVERSE_REP_SIZE == 780
    assert len(cp.encode_query(bytes(12))) == cp.QUERY_REQ_SIZE == 524
    assert len(cp.encode_error_reply(cp.OP_RESOLVE, errno.EAGAIN)) == 1104
    bad = bytearray(cp.encode_resolve(b"x"))
    bad[8] = 5                                     # family
    with pytest.raises(cp.ProtoError) as e:
        cp.decode_request(bytes(bad))
    assert e.value.errno == errno.EINVAL
    bad = bytearray(cp.encode_resolve(b"x"))
    bad[10] = 0                                    # empty name
    with pytest.raises(cp.ProtoError):
        cp.decode_request(bytes(bad))
    with pytest.raises(cp.ProtoError):
        cp.decode_request(cp.encode_resolve(b"x"), 1)          # an fd with a name request
    r = cp.decode_reply(cp.encode_resolve_reply(0, ["1.2.3.4"] * 20, aliases=["a" * 200] * 5))
    assert len(r.addrs) == 16 and len(r.aliases) == 2          # bounded fields


# ---------------------------------------------------------------- DNS messages

def test_dnsmsg_answer_and_truncation():
    raw = build_query("Peer.TS.test", AAAA, 77)
    q = dnsmsg.read_query(raw)
    assert (dnsmsg.name_text(q.question[0].name), q.question[0].rdtype, dnsmsg.udp_limit(raw)) \
        == ("Peer.TS.test", 28, 512)
    ans = build_answer(raw, 0, [(AAAA, 60, f"fd7a::{i}") for i in range(1, 41)])
    assert len(ans) > 512
    t = dnsmsg.truncate(ans, 512)
    assert len(t) <= 512 and t[2] & 0x02 and parse_answer(t).records == []
    assert dnsmsg.ip_of_ptr("4.3.2.1.in-addr.arpa.") == "1.2.3.4"
    assert dnsmsg.ip_of_ptr(dnsmsg.ptr_name("fd7a::1")) == "fd7a::1"
    assert dnsmsg.ip_of_ptr("example.com") is None
    with pytest.raises(dnsmsg.ERRORS):
        dnsmsg.read_query(b"\x00" * 5)


# ---------------------------------------------------------------- responder, dialer

def test_socket_uid_finds_our_sockets():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        assert socket_uid("udp", "127.0.0.1", s.getsockname()[1]) == os.getuid()
    finally:
        s.close()
    assert socket_uid("udp", "127.0.0.1", 1) is None


def test_responder_answers_own_user_and_drops_others(hosts):
    async def main():
        ns = service(hosts)
        r = DNSResponder(ns.query)
        await r.start()
        try:
            loop = asyncio.get_running_loop()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            await loop.sock_connect(s, r.addresses[0])
            await loop.sock_sendall(s, build_query("peer", A, 5))
            ans = await asyncio.wait_for(loop.sock_recv(s, 2048), 5)
            s.close()
            assert parse_answer(ans).values(A) == ["100.64.0.2"]
            r.uid = os.getuid() + 12345                       # someone else's sockets now
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            await loop.sock_connect(s, r.addresses[0])
            await loop.sock_sendall(s, build_query("peer", A, 6))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(s, 2048), 0.3)
            s.close()
            assert r.refused == 1
            assert r.env_value().startswith("127.0.0.1:")
        finally:
            await r.close()
    run(main())


def test_responder_tcp_idle_connections_are_closed_and_capped(hosts):
    """DNS over TCP: a connection that asks nothing is closed at the deadline (it used to be
    held forever), and it goes through the same admission as the proxy port."""
    async def main():
        r = DNSResponder(service(hosts).query)
        r.gate.deadline = 0.3
        await r.start()
        try:
            loop = asyncio.get_running_loop()
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, r.addresses[0])
            q = build_query("peer", A, 7)
            await loop.sock_sendall(s, len(q).to_bytes(2, "big") + q)
            n = int.from_bytes(await asyncio.wait_for(loop.sock_recv(s, 2), 5), "big")
            assert n > 0
            while n:
                n -= len(await loop.sock_recv(s, n))
            t0 = loop.time()
            assert await asyncio.wait_for(loop.sock_recv(s, 10), 5) == b""     # idle: closed
            assert loop.time() - t0 < 2
            s.close()
            r.gate.headroom = 1 << 30           # no fds to spare: refused at once
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, r.addresses[0])
            assert await asyncio.wait_for(loop.sock_recv(s, 10), 5) == b""
            s.close()
            assert r.gate.refused == 1
        finally:
            await r.close()
    run(main())


def test_query_with_edns_opt_record_parses():
    q = build_query("peer.ts.test", A, qid=7)
    # add an OPT record (as dig sends): root name, type OPT, class = UDP size 1232
    hdr = bytearray(q[:12])
    hdr[11] = 1                                   # ARCOUNT = 1
    opt = b"\x00" + struct.pack("!HHIH", OPT, 1232, 0, 0)
    parsed = dnsmsg.read_query(bytes(hdr) + q[12:] + opt)
    assert dnsmsg.name_text(parsed.question[0].name) == "peer.ts.test"
    assert dnsmsg.udp_limit(bytes(hdr) + q[12:] + opt) == 1232


def test_tcp_peer_uid_by_sock_diag_agrees_with_the_tables():
    from tailproxy.peeruid import tcp_peer_uid
    with socket.create_server(("127.0.0.1", 0)) as l:
        c = socket.create_connection(l.getsockname())
        a, peer = l.accept()
        with a, c:
            assert tcp_peer_uid(peer, a.getsockname()) == os.getuid() == \
                socket_uid("tcp", *peer)
            assert tcp_peer_uid(("127.0.0.1", 1), a.getsockname()) is None


@pytest.mark.parametrize("exit_node", [False, True])
@pytest.mark.parametrize("mode", ["auto", "tailnet"])
def test_unknown_names_under_the_suffix_are_asked_nowhere(hosts, exit_node, mode):
    # issue 14 item 3: NXDOMAIN from the name service, on RESOLVE and QUERY (the DNS responder
    # answers with query() too), whatever the record type; never the system, never the node
    asked = []
    ns = service(hosts, mode=mode, exit_node=exit_node, query=lambda *a: asked.append(a))
    for name in (b"leakcheck.ts.test", b"LeakCheck.TS.Test.", b"a.b.ts.test", b"ts.test"):
        for version in (0, 4, 6):
            assert run(ns.resolve(name, version)).err == errno.ENOENT
    for qtype in (A, AAAA, TXT, MX, 255):
        for search in (False, True):
            a = answer_of(ns, "leakcheck.ts.test", qtype, search=search)
            assert a.rcode == NXDOMAIN
    assert ns.system.calls == [] and asked == []
    assert ns.placeholders.name_of("240.0.0.1") is None        # no placeholder handed out

"""The routing table the preload reads: its file (policy/table.py) and what is published when
(policy/publisher.py), with TailnetView fed from status dicts and a fake exit-node switch."""
import asyncio
import ipaddress
import os
import stat
import struct

import pytest

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)
from test_policy import STATUS, with_exit_node
from tailproxy.launcher.exitnodes import ExitNodes
from tailproxy.node.exitnode import ExitNodeError
from tailproxy.policy import RouteDialer, RouteTableFile, TablePublisher, TailnetView
from tailproxy.policy import table as T
from tailproxy.resolver import PlaceholderMap

TAILNET = [("100.64.0.0/10", T.PROXY), ("fd7a:115c:a1e0::/48", T.PROXY)]


@pytest.fixture
def table(tmp_path):
    os.chmod(tmp_path, 0o700)
    t = RouteTableFile(str(tmp_path / "routes"))
    yield t
    t.close()


def read_table(path):
    """What a reader that trusts nothing but the format finds: (flags, [(cidr, kind)]) or None."""
    data = open(path, "rb").read()
    magic, version, gen, maxr, slot_size = struct.unpack_from("=IIQII", data)
    assert (magic, version, maxr, slot_size) == (T.MAGIC, T.VERSION, T.MAX_ROUTES, T.SLOT_SIZE)
    if gen == 0:
        return None
    off = T.HEADER_SIZE + (gen & 1) * T.SLOT_SIZE
    sgen, checksum, flags, count = struct.unpack_from("=QQII", data, off)
    body = data[off + 16:off + 24 + count * T.ROUTE_SIZE]
    assert sgen == gen and checksum == T.fnv1a64(struct.pack("=Q", gen) + body)
    routes = []
    for i in range(count):
        fam, bits, kind, zero, addr = struct.unpack_from("=BBBB16s", data, off + 24 + 20 * i)
        ip = ipaddress.ip_address(addr[:4] if fam == 4 else addr)
        routes.append((f"{ip}/{bits}", kind))
    return flags, routes


def test_fnv1a64_reference_values():
    assert T.fnv1a64(b"") == 0xcbf29ce484222325
    assert T.fnv1a64(b"a") == 0xaf63dc4c8601ec8c
    assert T.fnv1a64(b"foobar") == 0x85944171f73967e8


def test_file_is_private_and_starts_with_nothing_published(table):
    st = os.stat(table.path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == T.FILE_SIZE
    assert read_table(table.path) is None          # the preload hands everything over


def test_publish_alternates_slots_and_reads_back(table):
    assert table.publish(0, TAILNET) == 1
    assert read_table(table.path) == (0, TAILNET)
    routes = TAILNET + [("192.168.50.0/24", T.PROXY), ("10.1.0.0/16", T.BYPASS)]
    assert table.publish(T.EXIT_NODE, routes) == 2
    assert read_table(table.path) == (T.EXIT_NODE, routes)
    data = open(table.path, "rb").read()           # generation 1 is still whole in slot 1
    assert struct.unpack_from("=Q", data, T.HEADER_SIZE + T.SLOT_SIZE)[0] == 1


def test_a_table_is_bounded(table):
    too_many = [(f"10.{i}.0.0/16", T.PROXY) for i in range(T.MAX_ROUTES + 1)]
    with pytest.raises(T.TableFull):
        table.publish(0, too_many)
    assert read_table(table.path) is None


def test_file_is_never_reused(table):
    with pytest.raises(FileExistsError):
        RouteTableFile(table.path)


# ------------------------------------------------------------------ the publisher

def view_of(st, accept_routes=True):
    v = TailnetView(lambda: st, accept_routes=accept_routes)
    v.load(st)
    return v


def placeholders():
    return PlaceholderMap("198.51.100.0/24", "fd00:51::/64")


def test_no_exit_node_routes_the_tailnet_accepted_routes_and_placeholders(table):
    pub = TablePublisher(table, view=view_of(STATUS), placeholders=placeholders(),
                         tailnet_only=False, bypass=["10.9.0.0/16"])
    pub.publish()
    assert read_table(table.path) == (0, [("10.9.0.0/16", T.BYPASS)] + TAILNET + [
        ("192.168.50.0/24", T.PROXY), ("198.51.100.0/24", T.PROXY), ("fd00:51::/64", T.PROXY)])


def test_exit_node_and_tailnet_only_hand_everything_over(table):
    view = view_of(with_exit_node())
    pub = TablePublisher(table, view=view, placeholders=None, tailnet_only=False, bypass=[])
    pub.publish()
    assert read_table(table.path)[0] == T.EXIT_NODE
    view.load(STATUS)                               # exit node cleared: republished on load
    assert read_table(table.path)[0] == 0
    pub = TablePublisher(table, view=view, placeholders=None, tailnet_only=True, bypass=[])
    pub.publish()
    assert read_table(table.path)[0] == T.TAILNET_ONLY


def test_no_tailnet_routes_only_placeholders(table):
    pub = TablePublisher(table, view=None, placeholders=placeholders(), tailnet_only=False,
                         bypass=[])
    pub.publish()
    assert read_table(table.path) == (T.NO_TAILNET, [("198.51.100.0/24", T.PROXY),
                                                     ("fd00:51::/64", T.PROXY)])


def test_unchanged_inputs_are_not_republished(table):
    pub = TablePublisher(table, view=view_of(STATUS), placeholders=None, tailnet_only=False,
                         bypass=[])
    pub.publish()
    pub.publish()
    assert table.gen == 1


def test_too_many_routes_hand_everything_over_but_keep_the_bypass(table):
    st = dict(STATUS, Peer=dict(STATUS["Peer"], r={
        "DNSName": "big.ts.test.", "TailscaleIPs": ["100.64.0.8"], "Online": True,
        "PrimaryRoutes": [f"10.{i}.0.0/16" for i in range(T.MAX_ROUTES)]}))
    said = []
    pub = TablePublisher(table, view=view_of(st), placeholders=None, tailnet_only=False,
                         bypass=["192.0.2.0/24"], log=said.append)
    pub.publish()
    assert read_table(table.path) == (T.HAND_OVER_ALL, [("192.0.2.0/24", T.BYPASS)])
    assert len(said) == 1 and "every connection goes through the proxy" in said[0]


def test_exit_node_change_hands_over_until_a_later_status_is_loaded(table):
    """From the start of a change until a status asked for after it is loaded, nothing is
    direct, even when a status asked for before the change arrives in between."""
    view = view_of(STATUS)
    dialer = RouteDialer(node=None, direct=None, view=view)
    pub = TablePublisher(table, view=view, placeholders=None, tailnet_only=False, bypass=[])
    dialer.table = pub
    pub.publish()
    assert read_table(table.path)[0] == 0
    asked_before = view.epoch
    dialer.exit_node_changing()
    assert read_table(table.path)[0] == T.HAND_OVER_ALL
    view.load(STATUS)                               # during the change: still held
    assert read_table(table.path)[0] == T.HAND_OVER_ALL
    dialer.exit_node_changed()
    assert read_table(table.path)[0] == T.HAND_OVER_ALL
    view.load(STATUS, asked_in=asked_before)        # stale: asked before the change
    assert read_table(table.path)[0] == T.HAND_OVER_ALL and not view.fresh
    view.load(with_exit_node())                     # the switch, seen
    assert read_table(table.path)[0] == T.EXIT_NODE


def test_publisher_refreshes_at_once_after_a_change(table):
    statuses = [STATUS]
    view = TailnetView(lambda: statuses[-1])
    pub = TablePublisher(table, view=view, placeholders=None, tailnet_only=False, bypass=[],
                         interval=60)

    async def go():
        await pub.start()
        assert read_table(table.path)[0] == 0
        pub.exit_node_changing()
        statuses.append(with_exit_node())
        pub.exit_node_changed()
        view.invalidate()
        for _ in range(100):                        # not the 60 s interval
            await asyncio.sleep(0.01)
            if read_table(table.path)[0] == T.EXIT_NODE:
                break
        await pub.stop()
    asyncio.run(go())
    assert read_table(table.path)[0] == T.EXIT_NODE


class SwitchNode:
    def __init__(self, fail=False):
        self.fail, self.calls = fail, []

    def set_exit_node(self, name, allow_lan, timeout=None, avoid=frozenset()):
        self.calls.append("set")
        if self.fail:
            raise ExitNodeError("no such node")
        return {"ID": "n1", "HostName": name}

    def clear_exit_node(self):
        self.calls.append("clear")


@pytest.mark.parametrize("fail", [False, True])
def test_every_exit_node_change_is_announced_before_and_after(fail):
    node, events = SwitchNode(fail), []
    exits = ExitNodes(node, ["exit1"], False, lambda m: None,
                      on_change=lambda: events.append("changed"),
                      on_changing=lambda: events.append(("changing", len(node.calls))))
    try:
        exits.select_initial(timeout=1)
    except ExitNodeError:
        assert fail
    assert events == [("changing", 0), "changed"]
    events.clear()
    node.fail = False
    asyncio.run(exits.set(None))
    assert events == [("changing", 1), "changed"] and node.calls[-1] == "clear"

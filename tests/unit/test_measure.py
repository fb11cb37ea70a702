"""The agent's measurements (agent/measure.py): counts, the latency histogram, live byte counts
read from a running relay, and memory bounded whatever programs do; a whole `top` view checked
against docs/schemas/top.schema.json; the text view cut to 80 columns."""
import asyncio
import json
import os
import socket

import jsonschema
import pytest
from referencing import Registry, Resource

from tailproxy.agent.measure import (LATENCY_BOUNDS, MAX_FAILURE_KINDS, Measurements,
                                     ProgramInfo, errno_kind)
from tailproxy.agent.peers import exit_node_health, peer_rows
from tailproxy.proxy.relay import start_relay
from tailproxy.topview import render_text

SCHEMAS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "schemas")


def schema(name):
    with open(os.path.join(SCHEMAS, name)) as f:
        return json.load(f)


def validator(name):
    reg = Registry().with_resources(
        (n, Resource.from_contents(schema(n))) for n in ("top.schema.json", "ps.schema.json"))
    reg = reg.with_resources((f"tailproxy/{n}", reg[n]) for n in ("top.schema.json",
                                                                  "ps.schema.json"))
    return jsonschema.Draft202012Validator(schema(name), registry=reg)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def make(**kw):
    clock = Clock()
    routes = {"peer": "tailnet", "inet": "exit-node", "lan": "direct"}
    m = Measurements(lambda asked, dialled, via_node: routes[asked.split(":")[0]],
                     clock=clock, **kw)
    prog = ProgramInfo(1, lambda: 4242, ["curl", "x"])
    return m, m.for_program(prog), clock


class NodeJoined:
    """A relay whose bytes are known only at its end."""
    finished = False

    def bytes_so_far(self):
        return None


class CountingJoined(NodeJoined):
    """A relay the node runs, with its bytes so far."""
    def bytes_so_far(self):
        return (3, 4)


def test_counts_latency_and_window():
    m, w, clock = make()
    h = w.opened(11, "peer:80", "100.64.0.2:80", True, clock.t - 0.003, NodeJoined())
    snap = m.snapshot()
    [c] = snap["connections"]
    assert (c["pid"], c["program_pid"], c["route"], c["state"]) == (11, 4242, "tailnet", "open")
    assert c["up"] is None and c["connect_ms"] == pytest.approx(3.0)
    clock.t += 2
    w.closed(h, 10, 2000, "ok then ECONNRESET")
    w.failed(12, "inet:443", "203.0.113.9:443", "ECONNREFUSED", clock.t - 0.5)
    snap = m.snapshot()
    assert snap["connections"] == []
    failed, closed = snap["closed"]
    assert failed["state"] == "failed" and failed["reason"] == "ECONNREFUSED"
    assert closed["state"] == "closed" and (closed["up"], closed["down"]) == (10, 2000)
    assert closed["duration_s"] == pytest.approx(2.003)
    t = snap["totals"]
    assert t["connections"] == {"tailnet": 1, "exit-node": 0, "direct": 0}
    assert (t["failed"], t["bytes_up"], t["bytes_down"]) == (1, 10, 2000)
    assert t["failures"] == {"ECONNREFUSED": 1, "ECONNRESET": 1}
    counts = t["connect_latency"]["counts"]
    assert len(counts) == len(LATENCY_BOUNDS) + 1 and sum(counts) == 1
    assert counts[LATENCY_BOUNDS.index(0.005)] == 1      # 3 ms: the (2.5 ms, 5 ms] bucket


def test_a_connection_the_node_relayed_is_counted_and_kept_once_ended():
    m, w, clock = make()
    w.relayed_by_node(33, "100.64.0.2:7", 0.004, 1.5, 5, 7, "ok then ECONNRESET")
    snap = m.snapshot()
    assert snap["connections"] == []
    [c] = snap["closed"]
    assert (c["relayed_by"], c["route"], c["state"], c["pid"], c["program_pid"]) == \
        ("node", "tailnet", "closed", 33, 4242)
    assert (c["asked"], c["dialled"], c["up"], c["down"]) == ("100.64.0.2:7", "100.64.0.2:7", 5, 7)
    assert c["connect_ms"] == pytest.approx(4.0) and c["duration_s"] == pytest.approx(1.5)
    t = snap["totals"]
    assert t["connections"]["tailnet"] == 1 and (t["bytes_up"], t["bytes_down"]) == (5, 7)
    assert t["failures"] == {"ECONNRESET": 1} and t["failed"] == 0
    assert t["connect_latency"]["counts"][LATENCY_BOUNDS.index(0.005)] == 1


def test_live_bytes_from_a_relay_the_node_runs():
    m, w, clock = make()
    w.opened(11, "inet:443", "203.0.113.9:443", True, clock.t, CountingJoined())
    [c] = m.snapshot()["connections"]
    assert (c["up"], c["down"]) == (3, 4)


def test_memory_is_bounded():
    m, w, clock = make(max_live=5, window=7)
    handles = [w.opened(1, "lan:1", "10.0.0.1:1", False, clock.t, NodeJoined())
               for _ in range(20)]
    assert len(m.live) == 5 and m.unlisted == 15
    assert all(h.relay is None for h in handles[5:])    # an unlisted one holds nothing
    for h in handles:
        w.closed(h, 1, 1, "ok")
    for i in range(100):
        w.failed(1, "lan:1", "10.0.0.1:1", f"E{i:03d}X", clock.t)
    assert len(m.live) == 0 and len(m.closed) == 7
    assert len(m.failures) == MAX_FAILURE_KINDS and m.failures["other"] == 100 - (MAX_FAILURE_KINDS - 1)
    assert m.snapshot()["totals"]["bytes_up"] == 20      # every one counted


def test_errno_kind():
    assert errno_kind("ECONNREFUSED") == "ECONNREFUSED"
    assert errno_kind("ok then ECONNRESET (cut)") == "ECONNRESET"
    assert errno_kind("ETIMEDOUT(relay)") == "ETIMEDOUT"
    assert errno_kind("ok then cut (peer gone)") == "cut"
    assert errno_kind("ok idle-timeout") == "idle-timeout"
    assert errno_kind("") == "unknown"


def test_live_bytes_from_a_running_relay():
    async def main():
        m, w, clock = make()
        a, a_peer = socket.socketpair()
        b, b_peer = socket.socketpair()
        for s in (a, b, a_peer, b_peer):
            s.setblocking(False)
        done = asyncio.get_running_loop().create_future()
        r = start_relay(a, b, lambda res: done.set_result(res))
        w.opened(1, "lan:1", "10.0.0.1:1", False, clock.t, r)
        a_peer.send(b"x" * 1000)
        for _ in range(200):
            await asyncio.sleep(0.005)
            c = m.snapshot()["connections"][0]
            if c["up"] == 1000:
                break
        assert (c["up"], c["down"]) == (1000, 0)
        r.abort()
        for s in (a_peer, b_peer):
            s.close()
    asyncio.run(main())


STATUS = {"Peer": {
    "k1": {"HostName": "peer", "DNSName": "peer.ts.net.", "TailscaleIPs": ["100.64.0.2"],
           "Online": True, "CurAddr": "10.1.0.2:41641", "Relay": "x",
           "LastHandshake": "2026-11-30T08:00:00Z", "RxBytes": 5, "TxBytes": 6},
    "k2": {"HostName": "exit", "DNSName": "exit.ts.net.", "TailscaleIPs": ["100.64.0.3"],
           "Online": True, "CurAddr": "", "Relay": "x", "ExitNode": True,
           "ExitNodeOption": True, "LastHandshake": "0001-01-01T00:00:00Z"}}}


def test_peers_and_a_whole_view_match_the_schema():
    peers = peer_rows(STATUS)
    by = {p["name"]: p for p in peers}
    assert by["peer.ts.net"]["path"] == "direct" and by["peer.ts.net"]["rx_bytes"] == 5
    assert by["exit.ts.net"]["path"] == "derp" and by["exit.ts.net"]["last_handshake"] is None
    assert exit_node_health(peers)["name"] == "exit.ts.net"
    assert [p["name"] for p in peers] == ["exit.ts.net", "peer.ts.net"]   # the exit node first
    m, w, clock = make()
    w.opened(11, "peer:80", "100.64.0.2:80", True, clock.t - 0.003, NodeJoined())
    w.failed(12, "inet:443", "203.0.113.9:443", "EHOSTUNREACH", clock.t)
    w.relayed_by_node(13, "100.64.0.2:22", 0.002, 3.0, 10, 20, "ok")
    view = m.snapshot()
    view.update(pid=1, hostname="h", node_name="h.ts.net", state_dir="/s", peers=peers,
                exit_node=exit_node_health(peers),
                lookups={"hosts": 0, "magicdns": 2, "placeholder": 1, "system": 0},
                programs=[{"pid": 4242, "command": ["curl", "x"], "started": 1.0,
                           "exports": [8080], "export_idle_timeout": 60.0, "withdrawn": [9090],
                           "connections": 1, "tracked": 1}])
    doc = {"version": 1, "agents": [view]}
    validator("top.schema.json").validate(doc)
    bad = json.loads(json.dumps(doc))
    bad["agents"][0]["connections"][0]["route"] = "teleport"
    with pytest.raises(jsonschema.ValidationError):
        validator("top.schema.json").validate(bad)
    text = render_text([view], width=80)
    assert "withdrawn 9090" in text and "idle 60s" in text
    assert "exit node exit.ts.net (online, derp)" in text and "peer:80 (100.64.0.2" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_fast_path_connection_as_a_view_lists_it():
    from tailproxy.agent.measure import FAST_PATH_IDS, fast_path_row
    prog = ProgramInfo(3, lambda: 4242, ["ssh", "peer"])
    row = fast_path_row({"server": 5, "pid": 4250, "src": "127.0.0.1:40123",
                         "dst": "100.64.0.2:22", "connect_ms": 1.5, "age_ms": 2500}, prog)
    assert row["id"] == FAST_PATH_IDS + (5 << 17) + 40123 and row["relayed_by"] == "node"
    assert (row["pid"], row["program_pid"], row["command"]) == (4250, 4242, ["ssh", "peer"])
    assert (row["route"], row["state"], row["up"], row["duration_s"]) == ("tailnet", "open",
                                                                         None, 2.5)
    m, w, clock = make()
    view = m.snapshot()
    view["connections"].append(row)
    view.update(pid=1, hostname="h", node_name=None, state_dir="/s", peers=[], exit_node=None,
                lookups={"hosts": 0, "magicdns": 0, "placeholder": 0, "system": 0},
                programs=[])
    validator("top.schema.json").validate({"version": 1, "agents": [view]})


def test_ps_schema_takes_an_agent_and_a_run_of_its_own():
    prog = {"pid": 5, "command": ["x"], "started": 1.0, "exports": [], "withdrawn": [],
            "export_idle_timeout": None, "connections": 0,
            "tracked": 1}
    validator("ps.schema.json").validate({"version": 1, "runs": [
        {"pid": 1, "hostname": "a", "command": [], "exit_node": None, "node_name": "a.ts.net",
         "ips": ["100.64.0.1"], "exports": [], "routes": [], "agent": True, "state_dir": "/s",
         "linger": "forever", "tracked": 1, "connections": 0, "programs": [prog]},
        {"pid": 2, "hostname": "b", "command": ["y"], "exit_node": None, "node_name": None,
         "ips": [], "exports": [80], "routes": []}]})
    with pytest.raises(jsonschema.ValidationError):
        validator("ps.schema.json").validate({"version": 1, "runs": [{"pid": 0}]})


def test_top_keys_and_a_frame_in_80_columns():
    from rich.console import Console

    from tailproxy.top import TopState, render
    st = TopState()
    assert st.key("n") and st.view == "peers"
    for ch in "/abc\x7fd\r":
        assert st.key(ch)
    assert st.filter == "abd" and st.typing is None
    assert st.key("/") and st.key("\r") and st.filter == ""
    assert not st.key("q")
    m, w, clock = make()
    w.opened(11, "peer:80", "100.64.0.2:80", True, clock.t, NodeJoined())
    view = m.snapshot()
    view.update(pid=1, hostname="h", peers=peer_rows(STATUS), exit_node=None, programs=[],
                lookups={})
    for name in ("connections", "programs", "peers"):
        st.view = name
        con = Console(width=80, record=True, file=open(os.devnull, "w"))
        con.print(render(st, [view], 24))
        text = con.export_text()
        assert max(len(line) for line in text.splitlines()) <= 80
    assert "peer.ts.net" in text and "direct" in text

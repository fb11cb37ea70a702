"""`tailproxy top --once --json` and `tailproxy ps --json` against a live agent on the local
tailnet (issue 13): a program under tailproxy holds a connection to the internet host through
the exit node and one to an online peer (the node's fast path), then makes one that ends and
ends the one to the peer; both outputs match their schemas (docs/schemas), the open
connections are listed live with their program, route and connect latency, the ended ones
(the fast path's too) are in the closed window with their bytes, the exit node is healthy,
and the program's lookups are counted by source."""
import json
import os
import subprocess
import time

import jsonschema
import pytest
from referencing import Registry, Resource

from helpers import REPO, py, readline, run_tp
from test_agent import AGENT, ident, popen_tpa  # noqa: F401 (fixture)

pytestmark = pytest.mark.tailnet

SCHEMAS = os.path.join(REPO, "docs", "schemas")


def validate(doc: dict, name: str) -> None:
    def load(n):
        with open(os.path.join(SCHEMAS, n)) as f:
            return json.load(f)
    names = ("top.schema.json", "ps.schema.json")
    reg = Registry().with_resources((f"tailproxy/{n}", Resource.from_contents(load(n)))
                                    for n in names)
    jsonschema.Draft202012Validator(load(name), registry=reg).validate(doc)


def json_of(*args) -> dict:
    cp = run_tp(*args, env=AGENT, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def mine(doc: dict, host: str) -> dict:
    [view] = [a for a in doc["agents"] if a["hostname"] == host]
    return view


def test_top_and_ps_json_show_a_live_program(ident, testnet, short_tmp):
    state, host = ident
    inet = testnet["internet"]
    peer = testnet["peers"]["peer"]
    go, end = str(short_tmp / "go"), str(short_tmp / "end")
    program = py(f"""
        import os, socket, time
        held = socket.create_connection(({inet['ipv4']!r}, {inet['http_port']}), timeout=20)
        held.sendall(b"GET / HTTP/1.1\\r\\n")          # unfinished: the server waits for more
        # an online peer's address: the node's fast path relays it on its own
        to_peer = socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=20)
        to_peer.sendall(b"x"); to_peer.recv(1)
        # a MagicDNS answer from the name service (a peer's own name would be answered in the
        # program, from the name table, which the agent does not count)
        try:
            socket.getaddrinfo({"nosuchnode." + testnet['exit_node']['fqdn'].split(".", 1)[1]!r}, 80)
        except socket.gaierror:
            pass
        socket.getaddrinfo({inet['name']!r}, 80)     # a placeholder (the exit node resolves it)
        print("READY", os.getpid(), flush=True)
        while not os.path.exists({go!r}):
            time.sleep(0.05)
        s = socket.create_connection(({inet['ipv4']!r}, {inet['http_port']}), timeout=20)
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        s.close()
        to_peer.close()
        print("DONE", len(got), flush=True)
        while not os.path.exists({end!r}):
            time.sleep(0.05)
        held.close()
    """)
    p = popen_tpa(ident, "--linger", "0", "--exit-node", "exit", *program,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = readline(p.stdout, 90).split()
        assert ready[:1] == ["READY"], (ready, p.stderr.read() if p.poll() is not None else "")
        pid = int(ready[1])
        doc = json_of("top", "--once", "--json")
        view = mine(doc, host)
        validate(dict(doc, agents=[view]), "top.schema.json")   # ours (see ps below)
        dest = f"{inet['ipv4']}:{inet['http_port']}"
        [conn] = [c for c in view["connections"] if c["dialled"] == dest]
        assert conn["state"] == "open" and conn["route"] == "exit-node", conn
        assert conn["pid"] == pid and conn["program_pid"] == pid, (conn, pid)
        assert conn["command"][-2] == "-c" and conn["reason"] is None
        assert 0 < conn["connect_ms"] < 20000 and conn["relayed_by"] == "agent"
        # relayed in the node, to the exit node: its bytes so far, read from the node's relay
        held_up = len(b"GET / HTTP/1.1\r\n")
        deadline = time.monotonic() + 5
        while (conn["up"], conn["down"]) != (held_up, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
            [conn] = [c for c in mine(json_of("top", "--once", "--json"), host)["connections"]
                      if c["dialled"] == dest]
        assert (conn["up"], conn["down"]) == (held_up, 0), conn
        [fast] = [c for c in view["connections"]
                  if c["dialled"] == f"{peer['ipv4']}:{peer['echo_port']}"]
        assert fast["relayed_by"] == "node" and fast["route"] == "tailnet", fast
        # its relay's bytes so far: the program sent one byte and read its echo
        assert fast["pid"] == pid and fast["program_pid"] == pid and fast["up"] == 1 and \
            fast["down"] == 1, fast
        assert view["exit_node"]["online"] and view["exit_node"]["name"].startswith("exit.")
        assert view["lookups"]["magicdns"] >= 1 and view["lookups"]["placeholder"] >= 1, \
            view["lookups"]
        assert view["totals"]["connections"]["exit-node"] >= 1
        assert sum(view["totals"]["connect_latency"]["counts"]) >= 1
        assert [x for x in view["programs"] if x["pid"] == pid]
        assert any(x["exit_node"] and x["online"] for x in view["peers"])

        open(go, "w").close()
        done = readline(p.stdout, 60).split()
        assert done[0] == "DONE" and int(done[1]) > 0, done
        fast_dest = f"{peer['ipv4']}:{peer['echo_port']}"
        deadline = time.monotonic() + 10
        while True:     # the relays' ends reach the agent just after the program's close
            view = mine(json_of("top", "--once", "--json"), host)
            closed = [c for c in view["closed"] if c["dialled"] == dest]
            fast_closed = [c for c in view["closed"] if c["dialled"] == fast_dest]
            if closed and fast_closed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert closed, view["closed"]
        # the fast path's connection, relayed in Go, is kept in the window too, and counted
        [f] = fast_closed
        assert f["relayed_by"] == "node" and f["route"] == "tailnet" and f["pid"] == pid, f
        assert f["state"] == "closed" and f["reason"] == "ok" and f["up"] == 1 and f["down"] == 1, f
        assert 0 < f["connect_ms"] <= f["duration_s"] * 1000 + 1, f
        assert view["totals"]["connections"]["tailnet"] >= 1, view["totals"]
        c = closed[0]
        assert c["state"] == "closed" and c["reason"].startswith("ok"), c
        assert c["down"] == int(done[1]) and c["up"] > 0, c
        assert view["totals"]["bytes_down"] >= c["down"]
        assert len([x for x in view["connections"] if x["dialled"] == dest]) == 1   # the held one

        ps = json_of("ps", "--json")
        # this agent's entry (other runs of this uid may be of other tailproxy versions)
        [run] = [r for r in ps["runs"] if r.get("agent") and r["hostname"] == host]
        validate(dict(ps, runs=[run]), "ps.schema.json")
        assert [x for x in run["programs"] if x["pid"] == pid]
        assert run["exit_node"].startswith("exit.")

        text = run_tp("top", "--once", env=AGENT, timeout=60)
        assert text.returncode == 0 and f"agent {view['pid']} {host}" in text.stdout, text
        assert max(len(line) for line in text.stdout.splitlines()) <= 80
    finally:
        open(end, "w").close()
        open(go, "w").close()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

"""Issue 15, names without a round trip, on the local tailnet: a MagicDNS peer name (short and
FQDN) and an /etc/hosts name are answered in the program from the name table (the preload's
--verbose line says so only when it did not ask the name service), and the table follows the
tailnet: a peer that joins is answered from it, and an exit-node switch keeps tailnet names in
the program while other names still go to the name service. Run with --exit-nodes 2."""
import json
import socket
import subprocess
import threading
import time

import pytest

from helpers import py, run_tp, tailproxy_argv
from test_dns import DNSLog

pytestmark = pytest.mark.tailnet

FROM_TABLE = "answered from the name table"
OTHER = "internet.test"     # not a tailnet name: a placeholder only while an exit node is in use

LOOKUPS = """
    import json, socket, sys
    out = {}
    for name in sys.argv[1:]:
        try:
            out[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)})
        except socket.gaierror as e:
            out[name] = "error %d" % e.errno
    print(json.dumps(out))
"""

# One JSON line per round of lookups, for as long as stdin stays open.
LOOP = """
    import json, socket, sys, threading, time
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        out = {"t": time.monotonic()}
        for name in sys.argv[1:]:
            try:
                out[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)})
            except socket.gaierror as e:
                out[name] = "error %d" % e.errno
        print(json.dumps(out), flush=True)
        time.sleep(0.2)
"""


def hosts_name() -> str:
    """A name of this host's /etc/hosts other than localhost (glibc answers that one itself)."""
    for line in open("/etc/hosts"):
        parts = line.split("#", 1)[0].split()
        for n in parts[1:]:
            if n.lower().rstrip(".") != "localhost":
                return n            # on the testnet's client host: ip6-localhost
    raise AssertionError("/etc/hosts has no name besides localhost to test with")


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("names-table"))


def test_peer_and_hosts_names_are_answered_in_the_program(testnet, state):
    peer = testnet["peers"]["peer"]
    short, fqdn, hname = "peer", peer["fqdn"], hosts_name()
    cp = run_tp("--state-dir", state, "--hostname", "namestable", "--verbose",
                *py(LOOKUPS), short, fqdn, fqdn.upper() + ".", hname, "nosuch-name.test")
    assert cp.returncode == 0, cp.stderr
    got = json.loads(cp.stdout)
    assert peer["ipv4"] in got[short] and got[short] == got[fqdn] == got[fqdn.upper() + "."]
    assert got[hname] == sorted({a[4][0] for a in socket.getaddrinfo(
        hname, 80, type=socket.SOCK_STREAM)})       # what glibc reads from the file here
    for name in (short, fqdn, fqdn.upper() + ".", hname):
        assert f"tailproxy: lookup {name}: {FROM_TABLE}" in cp.stderr, (name, cp.stderr)
    # a name the table does not hold is still the name service's (and not found)
    assert got["nosuch-name.test"].startswith("error")
    assert "lookup nosuch-name.test: " in cp.stderr
    assert f"lookup nosuch-name.test: {FROM_TABLE}" not in cp.stderr


def test_a_joining_peer_and_exit_node_switches_are_followed(testnet, state, tmp_path):
    peer = testnet["peers"]["peer"]
    rounds: list[dict] = []
    joiner = "ntjoiner"

    def tp(*args):
        return subprocess.run(tailproxy_argv("--hostname", "namesloop", *args),
                              capture_output=True, text=True, timeout=60)

    p = subprocess.Popen(tailproxy_argv("--state-dir", state, "--hostname", "namesloop",
                                        "--verbose", *py(LOOP), "peer", joiner, OTHER),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    err_lines: list[str] = []
    readers = [threading.Thread(target=lambda: rounds.extend(json.loads(l) for l in p.stdout),
                                daemon=True),
               threading.Thread(target=lambda: err_lines.extend(p.stderr), daemon=True)]
    for r in readers:
        r.start()

    def wait_until(cond, what, limit=60):
        deadline = time.monotonic() + limit
        while not cond():
            assert time.monotonic() < deadline and p.poll() is None, (what, rounds[-3:],
                                                                      err_lines[-10:])
            time.sleep(0.1)

    other = None
    try:
        wait_until(lambda: len(rounds) >= 5, "first lookups")
        assert all(isinstance(r[joiner], str) for r in rounds)        # not on the tailnet yet
        # a new node joins the tailnet: its own tailproxy run
        other = subprocess.Popen(tailproxy_argv("--state-dir", str(tmp_path / "joiner"),
                                                "--hostname", joiner, "sleep", "120"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: isinstance(rounds[-1][joiner], list), "the joiner answered", 90)
        joined = rounds[-1][joiner]
        assert len(joined) == 1 and joined[0].startswith("100."), joined
        wait_until(lambda: any(f"lookup {joiner}: {FROM_TABLE}" in l for l in err_lines),
                   "the joiner answered from the table")
        assert all(isinstance(r[OTHER], str) for r in rounds)  # the system's resolver refuses
        # exit node set, then cleared: tailnet names stay in the program, answered alike; other
        # names get placeholders while the exit node is in use (from the table once they have
        # one, and never asked of this host's DNS server), and never once it is cleared
        for args in (("exit-node", "set", testnet["exit_node"]["name"]), ("exit-node", "clear")):
            out = tp(*args)
            assert out.returncode == 0, out.stderr
            switched, n = time.monotonic(), len(err_lines)
            wait_until(lambda: sum(r["t"] > switched for r in rounds) >= 10, f"after {args}")
            after = [r for r in rounds if r["t"] > switched]
            assert all(r["peer"] == [peer["ipv4"]] and r[joiner] == joined for r in after)
            new = [l for l in err_lines[n:] if "lookup peer:" in l]
            assert new and all(FROM_TABLE in l for l in new), new
            if args[1] == "set":
                assert all(r[OTHER][0].startswith("240.") for r in after), after
                assert len({r[OTHER][0] for r in after}) == 1
                assert any(f"lookup {OTHER}: {FROM_TABLE}" in l for l in err_lines[n:])
                with DNSLog(testnet) as log:
                    wait_until(lambda: sum(r["t"] > time.monotonic() - 1 for r in rounds) >= 3,
                               "lookups with the exit node")
                    time.sleep(1)
                assert not [q for q in log.queries if OTHER in q["qname"]], log.queries
            else:
                assert all(isinstance(r[OTHER], str) for r in after), after
                assert not any(f"lookup {OTHER}: {FROM_TABLE}" in l for l in err_lines[n:])
    finally:
        p.stdin.close()
        p.wait(60)
        if other is not None:
            other.terminate()
            other.wait(30)
        for r in readers:
            r.join(10)
    assert p.returncode == 0, "".join(err_lines[-20:])

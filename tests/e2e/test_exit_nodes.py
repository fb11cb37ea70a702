"""Exit nodes per program (`--exit-node`), on the local tailnet (run with --exit-nodes 2)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import py, readline, run_tp, tailproxy_argv
from tailproxy import control

pytestmark = pytest.mark.tailnet

FETCH = """
    import json, sys, urllib.request
    op = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for target in sys.argv[1:]:
        try:
            print(json.loads(op.open(target, timeout=15).read())["client"])
        except Exception as e:
            print("ERROR", type(e).__name__, e)
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exitstate"))


def exits(testnet):
    return {e["name"]: e for e in testnet["exit_nodes"]}


def inet_urls(testnet):
    i = testnet["internet"]
    return [f"http://{i['ipv4']}:{i['http_port']}/", f"http://{i['name']}:{i['http_port']}/"]


def test_through_exit_by_ip_and_by_name(testnet, state):
    egress = testnet["exit_node"]["egress_ipv4"]
    for spelling in ("exit", testnet["exit_node"]["fqdn"], testnet["exit_node"]["fqdn"] + ".",
                     testnet["exit_node"]["ipv4"], testnet["exit_node"]["ipv6"]):
        cp = run_tp("--state-dir", state, "--hostname", "exituser", "--exit-node", spelling,
                    *py(FETCH), *inet_urls(testnet), check=True)
        assert cp.stdout.split() == [egress, egress], (spelling, cp.stdout, cp.stderr)


def test_without_exit_the_internet_host_is_unreachable(testnet, state):
    cp = run_tp("--state-dir", state, "--hostname", "exituser", "--connect-timeout", "5",
                *py(FETCH), inet_urls(testnet)[0], check=True)
    assert cp.stdout.startswith("ERROR"), cp.stdout


def test_stable_node_id_and_auto(testnet, state):
    st = json.loads(subprocess.run(
        ["ip", "netns", "exec", testnet["peers"]["peer"]["netns"], testnet["bin"]["tailscale"],
         f"--socket={testnet['peers']['peer']['socket']}", "status", "--json"],
        capture_output=True, text=True, check=True).stdout)
    node_id = next(p["ID"] for p in st["Peer"].values() if p["HostName"] == "exit")
    for spelling in (node_id, "auto"):
        cp = run_tp("--state-dir", state, "--hostname", "exituser", "--exit-node", spelling,
                    *py(FETCH), inet_urls(testnet)[0], check=True)
        assert cp.stdout.strip() in [e["egress_ipv4"] for e in testnet["exit_nodes"]]


@pytest.mark.parametrize("name, needle", [
    ("nosuchnode", "exit node 'nosuchnode': no such peer on the tailnet (exit nodes available:"),
    ("peer", "'peer.ts.test' is not an exit node (it does not advertise itself as one)"),
])
def test_error_messages(testnet, state, name, needle):
    cp = run_tp("--state-dir", state, "--hostname", "exituser", "--exit-node", name, "true")
    assert cp.returncode == 1
    assert needle.replace("ts.test", testnet["domain"]) in cp.stderr, cp.stderr
    assert cp.stderr.count("\n") == 1, cp.stderr     # one clear line


def test_not_approved_message(testnet, state):
    p = testnet["peers"]["peer"]
    ts = [testnet["bin"]["tailscale"], f"--socket={p['socket']}"]
    subprocess.run(["ip", "netns", "exec", p["netns"], *ts, "set", "--advertise-exit-node"],
                   check=True, timeout=30)
    try:
        deadline = time.monotonic() + 20
        while True:
            cp = run_tp("--state-dir", state, "--hostname", "exituser", "--exit-node", "peer", "true")
            if "has not approved it" in cp.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "offers itself as an exit node, but the control server has not approved it" \
            in cp.stderr, cp.stderr
        assert cp.returncode == 1
    finally:
        subprocess.run(["ip", "netns", "exec", p["netns"], *ts, "set",
                        "--advertise-exit-node=false"], check=True, timeout=30)


def kill_exit2(testnet):
    e2 = exits(testnet).get("exit2")
    if e2 is None:
        pytest.fail("this test needs the testnet started with --exit-nodes 2")
    try:
        os.kill(e2["tailscaled_pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    return e2


def test_failover_to_the_next_exit_node(testnet, state):
    e1, e2 = exits(testnet)["exit"], exits(testnet).get("exit2")
    if e2 is None:
        pytest.fail("this test needs the testnet started with --exit-nodes 2")
    driver = """
        import json, sys, time, urllib.request
        op = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for line in sys.stdin:
            t = time.monotonic()
            while True:
                try:
                    print(json.loads(op.open(line.strip(), timeout=5).read())["client"],
                          round(time.monotonic() - t, 2), flush=True)
                    break
                except Exception as e:
                    if time.monotonic() - t > 60:
                        print("ERROR", e, flush=True); break
                    time.sleep(0.2)
    """
    p = subprocess.Popen(tailproxy_argv("--state-dir", state, "--hostname", "failover",
                                        "--exit-node", "exit2,exit", *py(driver)),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        url = inet_urls(testnet)[0] + "\n"
        p.stdin.write(url)
        p.stdin.flush()
        assert readline(p.stdout).split()[0] == e2["egress_ipv4"]
        kill_exit2(testnet)
        t = time.monotonic()
        p.stdin.write(url)
        p.stdin.flush()
        client, took = readline(p.stdout).split()
        took = time.monotonic() - t
        assert client == e1["egress_ipv4"]
        print(f"failover: next connection through the second exit node after {took:.1f}s")
        assert took < 6, took     # was 11 s before dead exit nodes were found by ping
    finally:
        p.stdin.close()
        p.wait(30)
    err = p.stderr.read()
    assert "exit node exit2" in err and "now using exit" in err, err


def test_offline_message(testnet, state):
    kill_exit2(testnet)
    deadline = time.monotonic() + 60
    while True:
        cp = run_tp("--state-dir", state, "--hostname", "exituser", "--exit-node", "exit2", "true")
        if "is offline" in cp.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert cp.returncode == 1 and "exit node 'exit2" in cp.stderr and "is offline" in cp.stderr


def test_runtime_set_clear_list_and_ps(testnet, state):
    driver = FETCH.replace("for target in sys.argv[1:]:", "for target in iter(sys.stdin.readline, ''):\n        target = target.strip()").replace(
        'print(json.loads(op.open(target, timeout=15).read())["client"])',
        'print(json.loads(op.open(target, timeout=5).read())["client"], flush=True)').replace(
        'print("ERROR", type(e).__name__, e)', 'print("ERROR", type(e).__name__, flush=True)')
    p = subprocess.Popen(tailproxy_argv("--state-dir", state, "--hostname", "switcher",
                                        "--connect-timeout", "4", *py(driver)),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    url = inet_urls(testnet)[0] + "\n"

    def fetch():
        p.stdin.write(url)
        p.stdin.flush()
        return readline(p.stdout).strip()

    def tp(*args):
        return subprocess.run(tailproxy_argv("--hostname", "switcher", *args),
                              capture_output=True, text=True, timeout=60)
    try:
        deadline = time.monotonic() + 60
        while not any(i.get("hostname") == "switcher" for _, i in control.running()):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert fetch().startswith("ERROR")
        out = tp("exit-node", "set", "exit")
        assert out.returncode == 0, out.stderr
        assert fetch() == testnet["exit_node"]["egress_ipv4"]
        ps = subprocess.run(tailproxy_argv("ps"), capture_output=True, text=True).stdout
        line = next(l for l in ps.splitlines() if "switcher" in l)
        assert testnet["exit_node"]["fqdn"].rstrip(".") in line
        listing = tp("exit-node", "list")
        assert "exit." in listing.stdout and "(in use)" in listing.stdout
        assert tp("exit-node", "set", "nosuch").returncode == 1
        assert tp("exit-node", "clear").returncode == 0
        assert fetch().startswith("ERROR")
    finally:
        p.stdin.close()
        p.wait(30)


def test_exit_node_list_without_a_running_tailproxy(testnet, state):
    cp = run_tp("--state-dir", state, "--hostname", "lister-none-running", "exit-node", "list",
                check=True)
    assert "exit." + testnet["domain"] in cp.stdout


def test_tailnet_only_refuses_the_internet(testnet, state):
    code = f"""
        import errno, socket
        s = socket.socket()
        try:
            s.connect(({testnet['internet']['ipv4']!r}, 80)); print("connected?")
        except OSError as e:
            print(errno.errorcode[e.errno])
        s = socket.create_connection(({testnet['peers']['peer']['ipv4']!r}, {testnet['peers']['peer']['echo_port']}), timeout=15)
        print("peer ok")
    """
    cp = run_tp("--state-dir", state, "--hostname", "exituser", "--tailnet-only", *py(code),
                check=True)
    assert cp.stdout.split() == ["EHOSTUNREACH", "peer", "ok"], cp.stdout
    assert cp.stderr.count("--tailnet-only") == 1


def test_lan_access_flag(testnet, state):
    lan = testnet["control"]["ipv4"]
    code = f"""
        import socket
        try:
            socket.create_connection(({lan!r}, 443), timeout=6); print("reached")
        except OSError as e:
            print("blocked")
    """
    base = ("--state-dir", state, "--hostname", "exituser", "--exit-node", "exit",
            "--connect-timeout", "5")
    assert run_tp(*base, *py(code), check=True).stdout.strip() == "blocked"
    assert run_tp(*base, "--exit-node-allow-lan-access", *py(code), check=True).stdout.strip() \
        == "reached"
    # --bypass still goes direct with an exit node
    assert run_tp(*base, "--bypass", f"{lan}/32", *py(code), check=True).stdout.strip() == "reached"

"""A node's life on the control server: an ephemeral node leaves the list with its run, a run
without an auth key shows the login URL and gives up, and `exit-node set auto` at runtime (run
with --exit-nodes 2)."""
import json
import os
import secrets
import signal
import subprocess
import time

import pytest

from helpers import py, readline, run_tp, tailproxy_argv
from tailproxy import control

pytestmark = pytest.mark.tailnet


def headscale(testnet, *args: str):
    """headscale's CLI (JSON output), run inside the control host as testnet/control.py does."""
    c = testnet["control"]
    cp = subprocess.run(["ip", "netns", "exec", c["netns"], testnet["bin"]["headscale"],
                         "-c", c["headscale_config"], *args, "-o", "json"],
                        capture_output=True, text=True, timeout=30,
                        env=dict(os.environ, HOME=os.path.dirname(c["headscale_config"])))
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def headscale_nodes(testnet) -> list[dict]:
    return headscale(testnet, "nodes", "list") or []


def ephemeral_authkey(testnet) -> str:
    """A pre-auth key for ephemeral nodes: headscale makes a node ephemeral by its key, not by
    the client's --ephemeral, and only deletes an ephemeral node when it logs out (a node of the
    testnet's own key is only expired, and stays listed)."""
    user = next(u for u in headscale(testnet, "users", "list") if u["name"] == "testnet")
    return headscale(testnet, "preauthkeys", "create", "--user", str(user["id"]), "--ephemeral",
                     "--reusable", "--expiration", "1h")["key"]


def listed(testnet, hostname: str) -> bool:
    return any(hostname in (n.get("given_name"), n.get("name")) for n in headscale_nodes(testnet))


def wait_until(pred, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def test_ephemeral_node_leaves_the_list_when_the_run_ends(testnet, short_tmp):
    env = {"TS_AUTHKEY": ephemeral_authkey(testnet)}
    first = f"eph-{secrets.token_hex(3)}"
    cp = run_tp("--ephemeral", "--hostname", first, "--state-dir", str(short_tmp / "a"), "true",
                timeout=90, env=env)
    assert cp.returncode == 0, cp.stderr
    assert wait_until(lambda: not listed(testnet, first), 10), f"{first} still listed"

    name = f"eph-{secrets.token_hex(3)}"
    p = subprocess.Popen(tailproxy_argv("--ephemeral", "--hostname", name,
                                        "--state-dir", str(short_tmp / "b"),
                                        "sh", "-c", "echo ready; exec sleep 20"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **env))
    try:
        # stop it once the program runs: the node is listed before the run has finished
        # starting, and a SIGTERM then still ends tailproxy without a logout
        assert readline(p.stdout, 60).strip() == "ready"
        assert wait_until(lambda: listed(testnet, name), 10), \
            f"{name} is not in headscale's node list while its run goes on"
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    t = time.monotonic()
    gone = wait_until(lambda: not listed(testnet, name), 10)
    assert gone, f"{name} still listed {time.monotonic() - t:.1f}s after its run ended\n" \
                 f"stderr:\n{p.stderr.read()}"


def test_without_a_key_the_login_url_is_shown_and_the_run_gives_up(testnet, short_tmp):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TS_AUTHKEY", "TS_AUTH_KEY", "TAILPROXY_AUTHKEY")}
    t = time.monotonic()
    cp = subprocess.run(tailproxy_argv("--timeout", "5", "--state-dir", str(short_tmp / "fresh"),
                                       "--hostname", f"nokey-{secrets.token_hex(3)}", "true"),
                        capture_output=True, text=True, timeout=20, env=env)
    took = time.monotonic() - t
    assert cp.returncode != 0, cp.stderr
    assert took < 20, took
    err = cp.stderr
    assert "to join the tailnet, open this URL" in err, err
    urls = [w for w in err.split() if w.startswith("http")]
    assert any(u.startswith(testnet["control_url"].rstrip("/") + "/") for u in urls), err
    assert "not logged in" in err, err


DRIVER = """
    import json, sys, urllib.request
    op = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for target in iter(sys.stdin.readline, ''):
        try:
            print(json.loads(op.open(target.strip(), timeout=5).read())["client"], flush=True)
        except Exception as e:
            print("ERROR", type(e).__name__, flush=True)
"""


def test_exit_node_set_auto_at_runtime(testnet, short_tmp):
    name = f"rt-auto-{secrets.token_hex(3)}"
    egresses = [e["egress_ipv4"] for e in testnet["exit_nodes"]]
    i = testnet["internet"]
    url = f"http://{i['ipv4']}:{i['http_port']}/\n"
    p = subprocess.Popen(tailproxy_argv("--state-dir", str(short_tmp / "s"), "--hostname", name,
                                        "--connect-timeout", "4", *py(DRIVER)),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)

    def fetch():
        p.stdin.write(url)
        p.stdin.flush()
        return readline(p.stdout).strip()

    try:
        assert wait_until(lambda: any(info.get("hostname") == name for _, info in control.running()),
                          60), f"{name} never showed up as running"
        # no exit node: the internet host is reachable only through one
        assert fetch().startswith("ERROR")
        out = subprocess.run(tailproxy_argv("--hostname", name, "exit-node", "set", "auto"),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        got = fetch()
        assert got in egresses, (got, egresses)
    finally:
        p.stdin.close()
        try:
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)

"""Issue 14, "Routing policy", on the local tailnet: subnet routes under --accept-routes (the
testnet's `exit` host routes the internet segment), --tailnet-only trusting only real tailnet
destinations, and MagicDNS-suffix names that no node has never reaching a resolver."""
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import direct_link_to_the_internet, py, run_tp, tailproxy_argv
from tailproxy import control
from tailproxy.testnet.dnsmasq import read_queries

pytestmark = pytest.mark.tailnet

CURL = ["curl", "-sS", "--noproxy", "*", "-m", "15"]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("routing-state"))


def tp(state, *args, **kw):
    return run_tp("--state-dir", state, "--hostname", "routing", *args, **kw)


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def client_seen(cp) -> str:
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)["client"]


# ---------------------------------------------------------------- 1. subnet routes

def test_accept_routes_goes_through_the_subnet_router_and_without_it_direct(testnet, state):
    route = testnet["subnet_route"]
    url = f"http://{testnet['internet']['ipv4']}:{testnet['internet']['http_port']}/"
    with direct_link_to_the_internet(testnet) as own_address:
        # Linux's default: routes are not accepted, the destination is dialled from this host
        assert client_seen(tp(state, *CURL, url)) == own_address
        # --accept-routes: through the tailnet, out of the router
        assert client_seen(tp(state, "--accept-routes", *CURL, url)) == route["egress_ipv4"]
        # the config key (through its environment variable) does the same
        cp = tp(state, *CURL, url, env={"TAILPROXY_ACCEPT_ROUTES": "1"})
        assert client_seen(cp) == route["egress_ipv4"]
    # an accepted route is a tailnet destination for --tailnet-only; a route not accepted is not
    cp = tp(state, "--tailnet-only", "--accept-routes", *CURL, url)
    assert client_seen(cp) == route["egress_ipv4"]
    cp = tp(state, "--tailnet-only", *CURL, url)
    assert cp.returncode != 0 and "tailnet-only" in cp.stderr


def test_ps_shows_the_accepted_routes(testnet, tmp_path):
    route = testnet["subnet_route"]
    p = subprocess.Popen(tailproxy_argv("--state-dir", str(tmp_path), "--hostname", "router-user",
                                        "--accept-routes", *py("import sys; sys.stdin.read()")),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            info = next((i for _, i in control.running() if i.get("hostname") == "router-user"), None)
            if info is not None:
                break
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert info["routes"] == [{"route": route["route"], "via": route["router_fqdn"]}]
        ps = subprocess.run(tailproxy_argv("ps"), capture_output=True, text=True, timeout=30)
        head = ps.stdout.splitlines()[0].split()
        line = next(line for line in ps.stdout.splitlines() if "router-user" in line)
        assert "ROUTES" in head
        assert f"{route['route']}@{route['router_fqdn']}" in line.split()
    finally:
        p.stdin.close()
        p.wait(30)
    assert p.returncode == 0


# ---------------------------------------------------------------- 2. --tailnet-only

def test_tailnet_only_refuses_a_local_cgnat_address_that_is_no_peer(testnet, state):
    addr, port = "100.64.99.1", 7200
    ip("addr", "add", f"{addr}/32", "dev", "lo")
    server = subprocess.Popen(
        [sys.executable, "-c", "import http.server, sys;"
         "http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])),"
         " http.server.SimpleHTTPRequestHandler).serve_forever()", addr, str(port)],
        cwd=state, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://{addr}:{port}/"
        deadline = time.monotonic() + 10
        while subprocess.run(CURL + ["-o", "/dev/null", url]).returncode != 0:   # it serves
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.1)
        cp = tp(state, "--tailnet-only", "--verbose", *CURL, "-o", "/dev/null", "-w", "%{http_code}", url)
        assert cp.returncode == 7, (cp.returncode, cp.stdout, cp.stderr)   # couldn't connect
        assert "EHOSTUNREACH" in cp.stderr, cp.stderr            # refused, not dialled
    finally:
        server.terminate()
        _, log = server.communicate(timeout=10)
        ip("addr", "del", f"{addr}/32", "dev", "lo", check=False)
    assert log.count("GET /") == 1          # only the check above reached it, never tailproxy


# ---------------------------------------------------------------- 3. unknown MagicDNS names

LEAK_SCRIPT = r"""
name=$1
getent hosts "$name"; echo "getent=$?"
curl -fsS -m 10 "http://$name/" >/dev/null 2>&1; echo "curl-http-proxy=$?"
curl -fsS -m 10 --proxy "$ALL_PROXY" "http://$name/" >/dev/null 2>&1; echo "curl-socks5h=$?"
python3 -c 'import socket, sys
try:
    print("gai", socket.getaddrinfo(sys.argv[1], 80))
except socket.gaierror as e:
    print("gai-error", e.errno)' "$name"
echo "dig=$(dig +time=3 +tries=1 "$name" | grep -o 'status: [A-Z]*')"
"""


@pytest.mark.parametrize("mode", ["default", "tailnet-only", "exit-node"])
def test_unknown_magicdns_names_are_nxdomain_and_asked_nowhere(testnet, state, mode):
    name = f"leakcheck-{mode}.{testnet['domain']}"
    args = {"default": [], "tailnet-only": ["--tailnet-only"],
            "exit-node": ["--exit-node", testnet["exit_node"]["name"]]}[mode]
    inet_log = os.path.join(testnet["logs"], "dns-internet.log")
    dns_start, inet_start = os.path.getsize(testnet["dns_log"]), os.path.getsize(inet_log)
    cp = tp(state, *args, "sh", "-c", LEAK_SCRIPT, "sh", name, timeout=120)
    out = dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)
    assert out["getent"] == "2", cp.stdout                  # not found
    assert out["curl-http-proxy"] != "0" and out["curl-socks5h"] != "0", (cp.stdout, cp.stderr)
    assert "gai-error -2" in cp.stdout, cp.stdout         # EAI_NONAME
    assert out["dig"] == "status: NXDOMAIN", cp.stdout
    queries = read_queries(testnet["dns_log"], dns_start)
    with open(inet_log) as f:
        f.seek(inet_start)
        inet_queries = f.read()
    assert [q for q in queries if "leakcheck" in json.dumps(q)] == []   # this host's resolver
    assert "leakcheck" not in inet_queries                              # the exit node's
    assert "no node of this tailnet has that name" in cp.stderr     # the proxies refused it

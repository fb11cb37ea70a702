"""Names through the tailnet (issue 4) on the local tailnet: MagicDNS names in unmodified
programs with no system Tailscale and no /etc/hosts entry; with an exit node, names resolved on
the exit side and no query from the program reaching the client host's DNS server."""
import json
import os
import re

import pytest

from helpers import py, run_tp
from tailproxy.testnet.dnsmasq import read_queries

pytestmark = pytest.mark.tailnet


@pytest.fixture(scope="module")
def tp_state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tpstate-dns"))


@pytest.fixture(scope="module")
def peer(testnet):
    return testnet["peers"]["peer"]


@pytest.fixture(scope="module")
def exit_name(testnet):
    return testnet["exit_node"]["name"]


def tp(tp_state, *args, **kw):
    return run_tp("--state-dir", tp_state, "--hostname", "dnstest", *args, **kw)


class DNSLog:
    """Queries the client host's recording DNS server got while the block ran."""

    def __init__(self, testnet):
        self.path = testnet["dns_log"]

    def __enter__(self):
        self.start = os.path.getsize(self.path)
        return self

    def __exit__(self, *exc):
        self.queries = read_queries(self.path, self.start)      # dnsmasq's query log


def internet_dns_log(testnet) -> str:
    with open(os.path.join(testnet["logs"], "dns-internet.log")) as f:
        return f.read()


CURL = ["curl", "-sS", "--noproxy", "*", "-m", "20"]


def test_no_etc_hosts_entry_and_no_system_tailscale(peer):
    hosts = open("/etc/hosts").read()
    assert not re.search(r"\bpeer\b", hosts)
    assert not os.path.exists("/var/run/tailscale/tailscaled.sock")


@pytest.mark.parametrize("form", ["short", "fqdn", "fqdn-dot"])
def test_curl_reaches_peer_by_name(tp_state, testnet, peer, form):
    host = {"short": "peer", "fqdn": peer["fqdn"], "fqdn-dot": peer["fqdn"] + "."}[form]
    with DNSLog(testnet) as log:
        cp = tp(tp_state, *CURL, f"http://{host}:{peer['http_port']}/", check=True)
    assert json.loads(cp.stdout)["host"] == "peer"
    assert log.queries == []            # a tailnet name never reaches the host's DNS server


def test_python_reaches_peer_by_name(tp_state, peer):
    cp = tp(tp_state, *py(f"""
        import json, socket, urllib.request
        op = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
        print(op.open("http://peer:{peer['http_port']}/", timeout=20).read().decode())
        print(socket.gethostbyname("peer"), socket.gethostbyaddr({peer['ipv4']!r})[0])
    """), check=True)
    body, names = cp.stdout.strip().split("\n", 1)
    assert json.loads(body)["host"] == "peer"
    assert names.split() == [peer["ipv4"], peer["fqdn"]]


def test_node_reaches_peer_by_name(tp_state, peer):
    url = f"http://{peer['fqdn']}:{peer['http_port']}/"
    cp = tp(tp_state, "node", "-e", f"""
        require('http').get({json.dumps(url)}, r => {{ let d=''; r.on('data', c => d += c);
          r.on('end', () => console.log(d)); }}).on('error', e => {{ console.error(e); process.exit(1); }});
        require('dns').resolve4('peer', (e, a) => console.log(JSON.stringify(e ? e.code : a)));""",
            check=True)
    lines = cp.stdout.strip().splitlines()
    assert any('"host": "peer"' in line for line in lines)            # dns.lookup (getaddrinfo)
    assert json.dumps([peer["ipv4"]]) in lines                         # dns.resolve (c-ares, UDP)


def test_exit_node_name_resolved_on_the_exit_side(tp_state, testnet, exit_name):
    inet, ex = testnet["internet"], testnet["exit_node"]
    before = internet_dns_log(testnet)
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--exit-node", exit_name, *CURL, f"http://{inet['name']}/", check=True)
    assert json.loads(cp.stdout)["client"] == ex["egress_ipv4"]
    assert log.queries == [], log.queries                 # zero queries from the program
    after = internet_dns_log(testnet)[len(before):]
    assert re.search(rf"\[A\] {re.escape(inet['name'])} from {re.escape(ex['egress_ipv4'])}$", after,
                     re.M), after


def test_exit_node_python_and_node_by_name(tp_state, testnet, exit_name):
    inet = testnet["internet"]
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--exit-node", exit_name, *py(f"""
            import urllib.request
            op = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
            print(op.open("http://{inet['name']}/", timeout=20).read().decode())
        """), check=True)
        cn = tp(tp_state, "--exit-node", exit_name, "node", "-e", f"""
            require('http').get('http://{inet['name']}/', r => {{ let d=''; r.on('data', c => d += c);
              r.on('end', () => console.log(d)); }}).on('error', e => {{ console.error(e); process.exit(1); }});""",
                check=True)
    assert json.loads(cp.stdout)["host"] == "internet"
    assert json.loads(cn.stdout)["host"] == "internet"
    assert log.queries == []


def test_dig_is_answered_and_nothing_leaks(tp_state, testnet, peer, exit_name):
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--exit-node", exit_name, "sh", "-c",
                "dig +short +time=5 +tries=1 peer; dig +short +time=5 +tries=1 internet.test; "
                f"dig +short +time=5 +tries=1 -x {peer['ipv4']}; "
                "dig +tcp +short +time=5 +tries=1 peer.$0", testnet["domain"], check=True)
    lines = cp.stdout.split()
    assert lines[0] == peer["ipv4"]
    assert lines[1].startswith("240.")                     # a placeholder
    assert lines[2] == peer["fqdn"] + "."
    assert lines[3] == peer["ipv4"]
    assert log.queries == []


def test_placeholder_from_one_process_used_by_another(tp_state, testnet, exit_name):
    inet = testnet["internet"]
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--exit-node", exit_name, "sh", "-c",
                'ip=$(getent ahostsv4 "$0" | head -n1 | cut -d" " -f1); echo "$ip"; '
                'curl -sS --noproxy "*" -m 20 "http://$ip/"', inet["name"], check=True)
    ip, body = cp.stdout.split("\n", 1)
    assert ip.startswith("240.")
    assert json.loads(body)["host"] == "internet"
    assert log.queries == []


def test_200_threads_resolve_distinct_names(tp_state, testnet, exit_name):
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--exit-node", exit_name, *py("""
            import socket
            from concurrent.futures import ThreadPoolExecutor
            names = [f"host-{i}.example" for i in range(200)]
            with ThreadPoolExecutor(200) as ex:
                got = list(ex.map(lambda n: socket.getaddrinfo(n, 80, type=socket.SOCK_STREAM)[0][4][0], names))
            print(len(got), len(set(got)), all(a.startswith("240.") for a in got))
        """), check=True)
    assert cp.stdout.split() == ["200", "200", "True"]
    assert log.queries == []


def test_without_exit_node_other_names_resolve_as_the_system_would(tp_state, testnet):
    # the client host's resolver refuses everything: the program sees what the system says
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "getent", "hosts", "internet.test")
    assert cp.returncode != 0
    assert any(q["qname"] == "internet.test" for q in log.queries)


def test_dns_tailnet_gives_placeholders_without_exit_node(tp_state, testnet):
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--dns=tailnet", "getent", "ahostsv4", "somewhere.example", check=True)
    assert cp.stdout.startswith("240.")
    assert log.queries == []


def test_dns_off_leaves_the_programs_resolver_alone(tp_state, testnet):
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--dns=off", "getent", "hosts", "peer")
    assert cp.returncode != 0
    assert any(q["qname"] == "peer" for q in log.queries)

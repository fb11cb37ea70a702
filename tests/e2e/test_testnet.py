"""The local test tailnet (python -m tailproxy.testnet).

Two kinds of tests:
- Unmarked ones start their own throwaway testnet as a subprocess (needs root and iproute2) and
  check what it prints, its exit status and that it leaves nothing behind. All their traffic
  stays inside the namespaces that testnet creates.
- `tailnet` ones run inside the testnet the whole suite runs under (`make test` runs pytest
  as `python -m tailproxy.testnet -- pytest ...`); outside it they are skipped.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

import tailproxy.testnet
from tailproxy.testnet import netns
from tailproxy.testnet.dnsmasq import read_queries

from helpers import procs_mentioning

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(tailproxy.testnet.__file__))))

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
    reason="the testnet needs root, iproute2 and util-linux")

INFO_KEYS = {"control_url", "authkey", "domain", "ca_cert", "peers", "exit_node", "exit_nodes", "internet",
             "client", "dns_log", "bin", "run_id", "run_dir"}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TESTNET_INFO", None)  # a nested testnet describes itself
    return env


def _testnet(*args, timeout=240, **kw):
    return subprocess.run([sys.executable, "-m", "tailproxy.testnet", *args], env=_env(), timeout=timeout,
                          capture_output=True, text=True, **kw)


def _netns_with_prefix(prefix):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(prefix + "-")]


def _assert_gone(info):
    assert _netns_with_prefix(info["run_id"]) == []
    assert procs_mentioning(info["run_dir"]) == []
    assert not os.path.exists(info["run_dir"])


# ---- the CLI, from outside -----------------------------------------------------------------

@needs_root
def test_runs_cmd_prints_info_and_cleans_up():
    r = _testnet("--", "sh", "-c", 'cat "$TESTNET_INFO"')
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert INFO_KEYS <= set(info)
    assert info["control_url"] == "https://198.18.0.1" and info["domain"] == "ts.test"
    peer = info["peers"]["peer"]
    for k in ("ipv4", "ipv6", "fqdn", "echo_port", "http_port", "netns", "socket", "socks5"):
        assert peer[k], k
    assert peer["fqdn"] == "peer.ts.test" and peer["ipv4"].startswith("100.")
    ex = info["exit_node"]
    for k in ("name", "ipv4", "ipv6", "fqdn", "egress_ipv4", "netns", "socket"):
        assert ex[k], k
    assert info["exit_nodes"] == [ex]
    assert info["internet"] == {**info["internet"], "name": "internet.test", "ipv4": "198.19.0.2",
                                "http_port": 80}
    assert info["client"]["netns"].startswith(info["run_id"] + "-")
    assert set(info["bin"]) == {"tailscaled", "tailscale", "headscale"}
    assert "tailnet ready" in r.stderr
    _assert_gone(info)


@needs_root
def test_false_exits_1():
    r = _testnet("--", "false")
    assert r.returncode == 1, r.stderr


@needs_root
def test_cmd_killed_by_signal_gives_128_plus_n(tmp_path):
    out = tmp_path / "info.json"
    r = _testnet("--json-out", str(out), "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    _assert_gone(json.loads(out.read_text()))


@needs_root
def test_env_and_resolver_of_cmd(tmp_path):
    script = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ('TS_AUTHKEY', "
              "'TAILPROXY_CONTROL_URL', 'SSL_CERT_FILE', 'TS_NO_LOGS_NO_SUPPORT', 'TS_DISABLE_PORTMAPPER', "
              "'TESTNET_INFO', 'XDG_STATE_HOME', 'MY_VAR')} | {'resolv': open('/etc/resolv.conf').read(), "
              "'hosts': open('/etc/hosts').read(), 'stdin': __import__('sys').stdin.read()}))")
    env = _env()
    env["MY_VAR"] = "kept"
    with open("/etc/resolv.conf") as f:
        host_resolv = f.read()
    r = subprocess.run([sys.executable, "-m", "tailproxy.testnet", "--json-out", str(tmp_path / "i.json"),
                        "--", sys.executable, "-c", script], env=env, input="from stdin", capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    info = json.loads((tmp_path / "i.json").read_text())
    assert got["TS_AUTHKEY"] == info["authkey"] and got["TAILPROXY_CONTROL_URL"] == info["control_url"]
    assert got["SSL_CERT_FILE"] == info["ca_cert"]
    assert got["TS_NO_LOGS_NO_SUPPORT"] == "true" and got["TS_DISABLE_PORTMAPPER"] == "1"
    assert got["TESTNET_INFO"] and got["XDG_STATE_HOME"] and got["MY_VAR"] == "kept"
    assert "nameserver 127.0.0.53" in got["resolv"] and "ts.test" not in got["hosts"]
    assert got["stdin"] == "from stdin"
    with open("/etc/resolv.conf") as f:
        assert f.read() == host_resolv  # the caller's file is untouched
    _assert_gone(info)


@needs_root
def test_failed_part_is_named_with_log_tail(tmp_path):
    fake = tmp_path / "headscale"
    fake.write_text("#!/bin/sh\necho 'boom: fake headscale refuses to start' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = _env()
    env["TESTNET_HEADSCALE"] = str(fake)
    r = subprocess.run([sys.executable, "-m", "tailproxy.testnet", "--", "sh", "-c", "echo CMD-RAN"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 125, r.stderr
    assert "CMD-RAN" not in r.stdout
    assert "testnet: headscale" in r.stderr and "boom: fake headscale" in r.stderr
    run_id = re.search(r"network up \([^)]*\): (tn\d+)-", r.stderr).group(1)
    log = re.search(r"log: (\S+)", r.stderr).group(1)
    run_dir = os.path.dirname(os.path.dirname(log))
    _assert_gone({"run_id": run_id, "run_dir": run_dir})


@needs_root
def test_sigterm_tears_everything_down(tmp_path):
    out = tmp_path / "info.json"
    marker = f"3000.{uuid.uuid4().int % 10**9}"  # unique sleep argument, to find it in /proc
    # CMD leaves a background process behind in the client namespace: it must go too.
    p = subprocess.Popen([sys.executable, "-m", "tailproxy.testnet", "--json-out", str(out), "--",
                          "sh", "-c", f"sleep {marker} & sleep {marker}"], env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(procs_mentioning(marker)) < 2 or not out.exists():
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        info = json.loads(out.read_text())
        assert procs_mentioning(info["run_dir"])  # tailscaled and friends are running
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err
    _assert_gone(info)
    assert procs_mentioning(marker) == []


@needs_root
def test_two_exit_nodes(tmp_path):
    check = ("import json, os, subprocess; i = json.load(open(os.environ['TESTNET_INFO'])); p = i['peers']['peer'];"
             "st = json.loads(subprocess.check_output(['ip', 'netns', 'exec', p['netns'], i['bin']['tailscale'],"
             " '--socket=' + p['socket'], 'status', '--json']));"
             "print(json.dumps({'info': i, 'opts': sorted(x['HostName'] for x in st['Peer'].values()"
             " if x.get('ExitNodeOption'))}))")
    r = _testnet("--exit-nodes", "2", "--", sys.executable, "-c", check)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    exits = got["info"]["exit_nodes"]
    assert [e["name"] for e in exits] == ["exit", "exit2"]
    assert len({e["egress_ipv4"] for e in exits}) == 2
    assert got["opts"] == ["exit", "exit2"]
    _assert_gone(got["info"])


# ---- inside the testnet -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def info():
    path = os.environ.get("TESTNET_INFO")
    if not path:
        if os.environ.get("TAILPROXY_REQUIRE_TESTNET") == "1":
            pytest.fail("TESTNET_INFO is not set (TAILPROXY_REQUIRE_TESTNET=1)")
        pytest.skip("needs the local test tailnet (python -m tailproxy.testnet)")
    with open(path) as f:
        data = json.load(f)
    # Never send test traffic from a namespace that might route off this machine.
    if not netns.current_is(data["client"]["netns"]):
        pytest.fail(f"TESTNET_INFO is set but this is not the client namespace {data['client']['netns']}")
    return data


def in_netns(ns, code, timeout=60, **kw):
    """Run python code in another host's network namespace; returns its JSON output."""
    env = _env()
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *kw.get("args", [])],
                       env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


SOCKS_FETCH = r"""
import json, socket, sys
def socks5(proxy, host, port):
    h, p = proxy.rsplit(':', 1)
    s = socket.create_connection((h, int(p)), timeout=20)
    s.sendall(b'\x05\x01\x00'); assert s.recv(2) == b'\x05\x00'
    s.sendall(b'\x05\x01\x00\x03' + bytes([len(host)]) + host.encode() + port.to_bytes(2, 'big'))
    rep = b''
    while len(rep) < 10: rep += s.recv(10 - len(rep))
    if rep[1] != 0: raise SystemExit('socks5 reply %d' % rep[1])
    return s
def recv_all(s):
    out = []
    while True:
        c = s.recv(1 << 16)
        if not c: return b''.join(out)
        out.append(c)
"""


def _tailscale(info, node, *args):
    n = node
    return subprocess.run(["ip", "netns", "exec", n["netns"], info["bin"]["tailscale"], f"--socket={n['socket']}",
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.tailnet
def test_client_cannot_reach_internet(info):
    import socket
    t0 = time.monotonic()
    with pytest.raises(OSError):
        socket.create_connection((info["internet"]["ipv4"], info["internet"]["http_port"]), timeout=5)
    assert time.monotonic() - t0 < 1.0  # no route: fails at once, no timeout
    routes = subprocess.run(["ip", "-j", "route", "get", info["internet"]["ipv4"]], capture_output=True, text=True)
    assert routes.returncode != 0


@pytest.mark.tailnet
def test_no_namespace_has_a_default_route(info):
    for ns in info["netns"]:
        for fam in ("-4", "-6"):
            r = subprocess.run(["ip", "-n", ns, fam, "route", "show", "default"], capture_output=True, text=True)
            assert r.returncode == 0 and r.stdout.strip() == "", (ns, r.stdout)


@pytest.mark.tailnet
def test_client_dns_queries_are_recorded(info):
    name = f"foo-{uuid.uuid4().hex[:8]}.example"
    r = subprocess.run(["getent", "hosts", name], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    deadline = time.monotonic() + 5
    while True:
        entries = read_queries(info["dns_log"])
        hits = [e for e in entries if e["qname"] == name]
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert hits and {e["qtype"] for e in hits} <= {"A", "AAAA"} and all("time" in e for e in hits)


@pytest.mark.tailnet
def test_client_hosts_has_no_tailnet_names(info):
    with open("/etc/hosts") as f:
        text = f.read()
    assert info["domain"] not in text and "peer" not in text


@pytest.mark.tailnet
def test_peer_sees_exit_node_option(info):
    r = _tailscale(info, info["peers"]["peer"], "status", "--json")
    assert r.returncode == 0, r.stderr
    peers = {p["HostName"]: p for p in json.loads(r.stdout)["Peer"].values()}
    for ex in info["exit_nodes"]:
        if ex["name"] != "exit" and not os.path.exists(f"/proc/{ex['tailscaled_pid']}"):
            continue  # the failover tests stop exit2 on purpose
        assert peers[ex["name"]]["ExitNodeOption"] is True
        assert peers[ex["name"]]["Online"] is True


@pytest.mark.tailnet
def test_peer_http_by_magicdns_name(info):
    peer, ex = info["peers"]["peer"], info["exit_node"]
    code = SOCKS_FETCH + (
        "s = socks5(sys.argv[1], sys.argv[2], int(sys.argv[3]));"
        "s.sendall(b'GET /who HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n');"
        "print(recv_all(s).split(b'\\r\\n\\r\\n', 1)[1].decode())")
    body = in_netns(ex["netns"], code, args=[ex["socks5"], peer["fqdn"], str(peer["http_port"])])
    assert body["host"] == "peer" and body["path"] == "/who"


ECHO_16MIB = r"""
import os, threading
data = os.urandom(1 << 20) * 16
s.settimeout(60)
def w():
    s.sendall(data)
    if half_close: s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=w); t.start()
if half_close:
    got = recv_all(s)  # the server closes after echoing everything
else:
    buf = bytearray()
    while len(buf) < len(data):
        c = s.recv(1 << 16)
        if not c: break
        buf += c
    got = bytes(buf)
t.join()
print(json.dumps({'same': got == data, 'len': len(got)}))
"""


@pytest.mark.tailnet
def test_peer_http_serve_port_reports_tailnet_client(info):
    peer, ex = info["peers"]["peer"], info["exit_node"]
    code = SOCKS_FETCH + (
        "s = socks5(sys.argv[1], sys.argv[2], int(sys.argv[3]));"  # serve routes by Host name:port
        "s.sendall(b'GET /s HTTP/1.0\\r\\nHost: %s:%s\\r\\n\\r\\n' % (sys.argv[2].encode(), sys.argv[3].encode()));"
        "print(recv_all(s).split(b'\\r\\n\\r\\n', 1)[1].decode())")
    body = in_netns(ex["netns"], code, args=[ex["socks5"], peer["fqdn"], str(peer["http_serve_port"])])
    assert body["host"] == "peer" and body["forwarded_for"] == ex["ipv4"]


@pytest.mark.tailnet
def test_peer_echo_16mib_over_tailnet(info):
    # tailscaled's SOCKS5 server closes both directions on the first EOF, so no half-close here.
    peer, ex = info["peers"]["peer"], info["exit_node"]
    code = SOCKS_FETCH + "s = socks5(sys.argv[1], sys.argv[2], int(sys.argv[3])); half_close = False\n" + ECHO_16MIB
    res = in_netns(ex["netns"], code, timeout=120, args=[ex["socks5"], peer["ipv4"], str(peer["echo_port"])])
    assert res == {"same": True, "len": 16 << 20}


@pytest.mark.tailnet
def test_peer_echo_half_close(info):
    # The deployed echo service itself, on the peer host's loopback where tailscaled forwards to.
    peer = info["peers"]["peer"]
    code = (SOCKS_FETCH + "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=20);"
            " half_close = True\n" + ECHO_16MIB)
    res = in_netns(peer["netns"], code, timeout=120, args=[str(peer["echo_port"])])
    assert res == {"same": True, "len": 16 << 20}


@pytest.mark.tailnet
def test_internet_dns_server(info):
    ex = info["exit_node"]
    code = (
        "import ipaddress, json, sys\n"
        "import dns.message, dns.query\n"
        "def ask(name, how=dns.query.udp):\n"
        "    return how(dns.message.make_query(name, 'A'), sys.argv[1], timeout=5)\n"
        "def a(m): return [list(ipaddress.ip_address(rd.address).packed) for rr in m.answer for rd in rr]\n"
        "print(json.dumps({'udp': a(ask('internet.test')), 'tcp': a(ask('internet.test', dns.query.tcp)),"
        " 'nx': ask('nope.internet.test').rcode(), 'refused': ask('example.com').rcode()}))")
    res = in_netns(ex["netns"], code, args=[info["internet"]["ipv4"]])
    assert res == {"udp": [[198, 19, 0, 2]], "tcp": [[198, 19, 0, 2]], "nx": 3, "refused": 5}


@pytest.mark.tailnet
def test_exit_node_egress_and_dns_from_peer(info):
    peer, ex, inet = info["peers"]["peer"], info["exit_node"], info["internet"]
    r = _tailscale(info, peer, "set", f"--exit-node={ex['name']}")
    assert r.returncode == 0, r.stderr
    try:
        code = SOCKS_FETCH + (
            "out = {}\n"
            "for host in (sys.argv[2], sys.argv[3]):\n"
            "    s = socks5(sys.argv[1], host, int(sys.argv[4]))\n"
            "    s.sendall(b'GET / HTTP/1.0\\r\\nHost: ' + host.encode() + b'\\r\\n\\r\\n')\n"
            "    out[host] = json.loads(recv_all(s).split(b'\\r\\n\\r\\n', 1)[1])\n"
            "print(json.dumps(out))")
        res = in_netns(peer["netns"], code, args=[peer["socks5"], inet["ipv4"], inet["name"], str(inet["http_port"])])
    finally:
        _tailscale(info, peer, "set", "--exit-node=")
    assert res[inet["ipv4"]]["client"] == ex["egress_ipv4"]
    assert res[inet["name"]]["client"] == ex["egress_ipv4"]  # name resolved by the exit's resolver

"""Programs LD_PRELOAD cannot reach (issue 11), on the local tailnet: static and cgo-linked Go
clients, `gcc -static` and musl static C clients (resolving MagicDNS names with their own
resolvers) and a dynamic program's raw connect() syscall reach `peer` through tailproxy's
seccomp interception (preload/exec/); with an exit node static programs' names never reach the
client host's DNS server; where seccomp() is refused, one line
says so and the run falls back to proxy variables. The programs are built here from
tests/e2e/seccomp_src (Go: standard library only, offline; outputs under build/)."""
import json
import os
import re
import shutil
import subprocess

import pytest

from helpers import REPO, run_tp, tailproxy_argv
from tailproxy.launcher.intercept import elf_facts
from tailproxy.testnet.dnsmasq import read_queries

pytestmark = pytest.mark.tailnet

SRC = os.path.join(REPO, "tests", "e2e", "seccomp_src")
OUT = os.path.join(REPO, "build", "seccomp-e2e")


def _build(name: str, argv: list[str], sources: list[str], env: dict | None = None) -> str:
    """OUT/name, built unless newer than its sources."""
    out = os.path.join(OUT, name)
    if os.path.exists(out) and all(os.path.getmtime(out) > os.path.getmtime(s) for s in sources):
        return out
    os.makedirs(OUT, exist_ok=True)
    cp = subprocess.run([a.replace("@OUT", out) for a in argv], capture_output=True, text=True,
                        env=dict(os.environ, **(env or {})), timeout=600)
    assert cp.returncode == 0, f"building {name}: {cp.stderr}"
    return out


@pytest.fixture(scope="module")
def progs():
    go = shutil.which("go") or "/usr/local/go/bin/go"
    goenv = {"GOCACHE": os.path.join(REPO, "build", "go-cache"), "GOTOOLCHAIN": "local",
             "GOPROXY": "off", "GOFLAGS": "-buildvcs=false", "GO111MODULE": "on"}
    gosrc = os.path.join(SRC, "goclient.go")
    csrc = os.path.join(SRC, "cclient.c")
    p = {
        "go-static": _build("goclient-static", [go, "build", "-o", "@OUT", gosrc], [gosrc],
                            dict(goenv, CGO_ENABLED="0")),
        "go-cgo": _build("goclient-cgo", [go, "build", "-o", "@OUT", gosrc], [gosrc],
                         dict(goenv, CGO_ENABLED="1")),
        "c-static": _build("cclient-static", ["gcc", "-static", "-O1", "-o", "@OUT", csrc], [csrc]),
        # musl (musl-gcc: Debian's musl-tools): its resolver drops answers whose source is not
        # the nameserver it asked
        "c-musl": _build("cclient-musl", [shutil.which("musl-gcc") or "musl-gcc", "-static",
                                          "-O1", "-o", "@OUT", csrc], [csrc]),
        "c-dynamic": _build("cclient", ["gcc", "-O1", "-o", "@OUT", csrc], [csrc]),
        "deny": _build("deny_seccomp", ["gcc", "-O1", "-o", "@OUT",
                                        os.path.join(SRC, "deny_seccomp.c")],
                       [os.path.join(SRC, "deny_seccomp.c")]),
    }
    # what auto mode will see: the cgo build really is dynamic, and both are Go
    assert elf_facts(p["go-static"]).dynamic is False and elf_facts(p["go-static"]).go
    assert elf_facts(p["go-cgo"]).dynamic is True and elf_facts(p["go-cgo"]).go
    assert elf_facts(p["c-static"]).dynamic is False
    assert elf_facts(p["c-musl"]).dynamic is False
    return p


@pytest.fixture(scope="module")
def tp_state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tpstate-seccomp"))


@pytest.fixture(scope="module")
def peer(testnet):
    return testnet["peers"]["peer"]


def tp(tp_state, *args, **kw):
    return run_tp("--state-dir", tp_state, "--hostname", "seccomp", *args, **kw)


def hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DNSLog:
    """Queries the client host's recording DNS server got while the block ran."""

    def __init__(self, testnet):
        self.path = testnet["dns_log"]

    def __enter__(self):
        self.start = os.path.getsize(self.path)
        return self

    def __exit__(self, *exc):
        self.queries = read_queries(self.path, self.start)


@pytest.mark.parametrize("target", ["name", "ipv4", "ipv6"])
@pytest.mark.parametrize("prog", ["go-static", "go-cgo"])
def test_go_client_reaches_peer(tp_state, testnet, progs, peer, prog, target):
    host = "peer" if target == "name" else peer[target]
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--verbose", progs[prog], "echo", hostport(host, peer["echo_port"]),
                f"hello from {prog}")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == f"hello from {prog}"
    # interception, not proxy variables, and no warning that it could not be reached
    assert "statically linked" not in cp.stderr and "unavailable" not in cp.stderr
    # the supervisor's verbose line (the preload's reads "connect fd N to ...")
    assert re.search(r"^tailproxy: pid \d+ connect to \S+: in progress$", cp.stderr, re.M), cp.stderr
    assert log.queries == [], log.queries               # a tailnet name never reaches the host's DNS


@pytest.mark.parametrize("prog", ["go-static", "go-cgo"])
def test_go_programs_get_no_proxy_variables(tp_state, progs, prog):
    """Intercepted, so never proxied twice: tailproxy's own ALL_PROXY/HTTP_PROXY are not set."""
    for name in ("ALL_PROXY", "HTTP_PROXY", "https_proxy"):
        cp = tp(tp_state, progs[prog], "env", name, check=True)
        assert cp.stdout.strip() == "(unset)", (name, cp.stdout)
    cp = tp(tp_state, "--intercept", "preload", progs["go-static"], "env", "ALL_PROXY", check=True)
    assert cp.stdout.startswith("socks5h://")       # the fallback a preload-only run keeps


def test_fork_exec_chain_static_and_dynamic(tp_state, progs, peer):
    """A dynamic shell under --intercept seccomp runs a static C client, then a static Go one by
    name: the filter is inherited across fork and exec."""
    cp = tp(tp_state, "--intercept", "seccomp", "sh", "-c",
            f"{progs['c-static']} libc {peer['ipv4']} {peer['echo_port']} one && "
            f"{progs['go-static']} echo peer:{peer['echo_port']} two && "
            f"{progs['c-dynamic']} raw {peer['ipv6']} {peer['echo_port']} three")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["one", "two", "three"]


def test_auto_dynamic_parent_execs_static_children(tp_state, progs, peer):
    """--intercept auto with a dynamic shell (the preload): the static programs it execs are
    run under the seccomp front end by the preload's exec hook, and reach peer."""
    cp = tp(tp_state, "sh", "-c",
            f"{progs['go-static']} echo peer:{peer['echo_port']} one && "
            f"{progs['c-static']} libc {peer['ipv6']} {peer['echo_port']} two && "
            f"exec {progs['go-cgo']} echo {hostport(peer['ipv4'], peer['echo_port'])} three")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["one", "two", "three"]


def test_go_static_on_the_shared_agent(short_tmp, progs, peer):
    """The same through the identity's agent (the default run mode)."""
    state, agent = str(short_tmp / "state"), {"TAILPROXY_AGENT": "1"}
    try:
        cp = run_tp("--state-dir", state, "--hostname", "seccomp-agent", "--linger", "0",
                    progs["go-static"], "echo", f"peer:{peer['echo_port']}", "via the agent",
                    env=agent)
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.strip() == "via the agent"
    finally:
        run_tp("--state-dir", state, "--hostname", "seccomp-agent", "down", env=agent, timeout=60)


def test_go_static_http_to_peer(tp_state, progs, peer):
    cp = tp(tp_state, progs["go-static"], "get", f"http://peer:{peer['http_port']}/")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["host"] == "peer"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_gcc_static_client_reaches_peer(tp_state, progs, peer, family):
    cp = tp(tp_state, progs["c-static"], "libc", peer[family], str(peer["echo_port"]),
            "hello static")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "hello static"
    assert "statically linked" not in cp.stderr


@pytest.mark.parametrize("form", ["short", "fqdn", "short-exit-node"])
@pytest.mark.parametrize("prog", ["c-static", "c-musl"])
def test_static_getaddrinfo_resolves_peer(tp_state, testnet, progs, peer, prog, form):
    """A static program's own resolver (glibc's or musl's, reading /etc/resolv.conf) resolves
    a MagicDNS name under --intercept seccomp: its queries go to the name service's responder,
    its answers show the nameserver it asked (dnsrecv.c; musl drops them otherwise); then it
    reaches `peer`. With an exit node too, not one query reaches the client host's DNS
    server."""
    host = peer["fqdn"] if form == "fqdn" else "peer"
    extra = ["--exit-node", testnet["exit_node"]["name"]] if form.endswith("exit-node") else []
    with DNSLog(testnet) as log:
        cp = tp(tp_state, *extra, "--intercept", "seccomp", progs[prog], "gai", host,
                str(peer["echo_port"]), f"hello {form}")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == f"hello {form}"
    assert log.queries == [], log.queries


def test_raw_connect_syscall_under_intercept_seccomp(tp_state, progs, peer):
    cp = tp(tp_state, "--intercept", "seccomp", progs["c-dynamic"], "raw", peer["ipv4"],
            str(peer["echo_port"]), "hello raw")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "hello raw"


def test_raw_connect_syscall_is_missed_by_the_preload(tp_state, progs, peer):
    """The case the seccomp mode exists for: the preload alone cannot see a raw syscall (the
    tailnet address is unreachable from this host without tailproxy's hand-over)."""
    cp = tp(tp_state, "--intercept", "preload", progs["c-dynamic"], "raw", peer["ipv4"],
            str(peer["echo_port"]), "hello raw")
    assert cp.returncode != 0
    assert "hello raw" not in cp.stdout


def test_go_static_through_exit_node_no_dns_leak(tp_state, testnet, progs):
    inet, ex = testnet["internet"], testnet["exit_node"]
    with DNSLog(testnet) as log:
        cp = tp(tp_state, "--exit-node", ex["name"], progs["go-static"], "get",
                f"http://{inet['name']}/")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["client"] == ex["egress_ipv4"]
    assert log.queries == [], log.queries      # not one query reached the client's resolver


def test_go_static_100_concurrent_dials(tp_state, progs, peer):
    cp = tp(tp_state, progs["go-static"], "many", hostport(peer["ipv4"], peer["echo_port"]),
            "100", timeout=180)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert cp.stdout.strip() == "ok 100"


def test_static_go_server_exported(testnet, short_tmp, progs):
    """--export-listeners with a static Go HTTP server: its bind() is held to loopback (made
    by the supervisor), its port served on the tailnet only."""
    from test_exports import loopback_only, not_reachable_from_lan, peer_fetch, start_cmd, stop_cmd
    port, host = 8031, "exp-goserver"
    p, log = start_cmd(host, str(short_tmp / "state"), [progs["go-static"], "serve", str(port)],
                       f"exported port {port}")
    try:
        assert f"exported port {port}" in log, log
        cp = peer_fetch(testnet, host, port)
        assert cp.returncode == 0 and cp.stdout == "go says hi\n", cp.stderr
        loopback_only(port)
        not_reachable_from_lan(testnet, port)
    finally:
        stop_cmd(p)


def test_fallback_when_seccomp_is_refused(tp_state, progs, peer):
    """seccomp() denied (as by a container's policy): one line, then proxy variables, which a
    Go HTTP client honours; never a hang."""
    cp = subprocess.run(
        [progs["deny"], *tailproxy_argv("--state-dir", tp_state, "--hostname", "seccomp",
                                        progs["go-static"], "get",
                                        f"http://{peer['ipv4']}:{peer['http_port']}/")],
        capture_output=True, text=True, timeout=120)
    lines = [line for line in cp.stderr.splitlines() if "seccomp interception unavailable" in line]
    assert len(lines) == 1, cp.stderr
    assert "Operation not permitted" in lines[0]
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["host"] == "peer"      # through HTTP_PROXY

"""UDP from programs LD_PRELOAD cannot reach (issue 10 under the seccomp front end), on the local
tailnet: a static Go client (CGO_ENABLED=0), connected (net.Dial "udp") and unconnected
(ListenPacket + WriteTo/ReadFrom), and static C clients (gcc -static, musl) with
sendto/recvfrom, connect/send/recv/getpeername, sendmsg/recvmsg and sendmmsg/recvmmsg, reach
`peer`'s UDP echo by name, IPv4 and IPv6, and the internet host's through an exit node; a static
Go QUIC client (golang.org/x/net/quic, from the node's own module set: builds offline) exchanges
a stream with the aioquic server of test_quic_tailnet.py on `peer`. The
supervisor (preload/exec/udpsend.c, udprecv.c) sends their datagrams to the node's endpoints and
shows the real peer as the source. Programs are built here from tests/e2e/seccomp_src (Go:
standard library only, offline; outputs under build/)."""
import ipaddress
import json
import os
import re
import shutil
import subprocess

import pytest

from helpers import REPO, run_tp
from test_quic_tailnet import PORT as QUIC_PORT, quic_server  # noqa: F401  (a fixture)
from test_seccomp import _build

pytestmark = pytest.mark.tailnet

SRC = os.path.join(REPO, "tests", "e2e", "seccomp_src")
VERBOSE_LINE = re.compile(r"^tailproxy: pid \d+ UDP to \S+: through the node's endpoint \S+$", re.M)


@pytest.fixture(scope="module")
def progs():
    go = shutil.which("go") or "/usr/local/go/bin/go"
    goenv = {"GOCACHE": os.path.join(REPO, "build", "go-cache"), "GOTOOLCHAIN": "local",
             "GOPROXY": "off", "GOFLAGS": "-buildvcs=false", "GO111MODULE": "on",
             "CGO_ENABLED": "0"}
    gosrc, csrc = os.path.join(SRC, "goudp.go"), os.path.join(SRC, "cudp.c")
    quic = os.path.join(SRC, "goquic")
    return {
        "go": _build("goudp-static", [go, "build", "-o", "@OUT", gosrc], [gosrc], goenv),
        "go-quic": _build("goquic-static", [go, "-C", quic, "build", "-o", "@OUT", "."],
                          [os.path.join(quic, f) for f in ("main.go", "go.mod", "go.sum")], goenv),
        "c-static": _build("cudp-static", ["gcc", "-static", "-O1", "-o", "@OUT", csrc], [csrc]),
        "c-musl": _build("cudp-musl", [shutil.which("musl-gcc") or "musl-gcc", "-static", "-O1",
                                       "-o", "@OUT", csrc], [csrc]),
    }


@pytest.fixture(scope="module")
def tp_state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tpstate-seccomp-udp"))


@pytest.fixture(scope="module")
def peer(testnet):
    return testnet["peers"]["peer"]


def tp(tp_state, *args):
    cp = run_tp("--state-dir", tp_state, "--hostname", "seccompudp", "--verbose", *args)
    assert cp.returncode == 0, cp.stderr + cp.stdout
    # intercepted under seccomp, through the node: the supervisor's line, no fallback
    assert VERBOSE_LINE.search(cp.stderr), cp.stderr
    assert "statically linked" not in cp.stderr and "unavailable" not in cp.stderr
    return cp.stdout.strip()


def hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def go_addr(host, port):
    """How Go prints a UDP address (an IPv4-mapped one as IPv4)."""
    ip = ipaddress.ip_address(host)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return hostport(str(ip), port)


@pytest.mark.parametrize("target", ["name", "ipv4", "ipv6"])
@pytest.mark.parametrize("mode", ["dial", "to"])
def test_go_static_udp_to_peer(tp_state, progs, peer, mode, target):
    host = "peer" if target == "name" else peer[target]
    port = peer["udp_echo_port"]
    r = json.loads(tp(tp_state, progs["go"], mode, hostport(host, port), f"go {mode} {target}"))
    assert r["reply"] == f"go {mode} {target}"
    # the source the program sees is the peer, never the node's loopback endpoint
    shown = r["remote"] if mode == "dial" else r["from"]
    want = peer["ipv4"] if target == "name" else peer[target]
    assert shown == go_addr(want, port), r


def test_go_static_oversize_is_emsgsize_and_the_limit_goes_through(tp_state, progs, peer):
    r = json.loads(tp(tp_state, progs["go"], "big", hostport(peer["ipv4"], peer["udp_echo_port"])))
    assert r == {"big": "message too long", "fits": 1252}


@pytest.mark.parametrize("mode", ["dial", "to"])
def test_go_static_udp_through_exit_node(testnet, tmp_path, progs, mode):
    inet = testnet["internet"]
    host, port = inet["ipv4"], inet["udp_echo_port"]
    r = json.loads(tp(str(tmp_path), "--exit-node", testnet["exit_node"]["name"], progs["go"],
                      mode, hostport(host, port), f"via exit {mode}"))
    assert r["reply"] == f"via exit {mode}"
    assert (r["remote"] if mode == "dial" else r["from"]) == hostport(host, port)


@pytest.mark.parametrize("mode", ["sendto", "connect", "msg", "mmsg"])
@pytest.mark.parametrize("target", ["ipv4", "ipv6", "name"])
@pytest.mark.parametrize("prog", ["c-static", "c-musl"])
def test_static_c_udp_to_peer(tp_state, progs, peer, prog, target, mode):
    host = "peer" if target == "name" else peer[target]
    port = peer["udp_echo_port"]
    out = tp(tp_state, progs[prog], mode, host, str(port), f"{prog}:{mode}")
    shown = peer["ipv6"] if target == "ipv6" else peer["ipv4"]
    if mode == "mmsg":
        assert out == f"{prog}:{mode}-1,{prog}:{mode}-2,{prog}:{mode}-3 from {shown} {port}"
    else:
        assert out == f"{prog}:{mode} {'peer' if mode == 'connect' else 'from'} {shown} {port}"


def test_static_c_udp_through_exit_node(testnet, tmp_path, progs):
    inet = testnet["internet"]
    out = tp(str(tmp_path), "--exit-node", testnet["exit_node"]["name"], progs["c-static"],
             "sendto", inet["ipv4"], str(inet["udp_echo_port"]), "c via exit")
    assert out == f"c via exit from {inet['ipv4']} {inet['udp_echo_port']}"


def test_go_static_quic_stream_to_peer(tp_state, progs, peer, quic_server):
    nbytes = 200_000        # ~170 datagrams each way, flow control and acks included
    r = json.loads(tp(tp_state, progs["go-quic"], hostport(peer["ipv4"], QUIC_PORT), quic_server,
                      str(nbytes)))
    assert r == {"bytes": nbytes + len("echo: "), "same": True}


def test_static_go_udp_server_exported(testnet, short_tmp, progs):
    """--export-listeners with a static Go UDP server: its bind() is held to loopback (made by
    the supervisor), so nothing off this host reaches it directly, and its port is served on
    the tailnet, reached from `peer`."""
    from test_exports import start_cmd, stop_cmd
    from test_udp_exports import from_peer
    port, host = 8445, "exp-goudp"
    p, log = start_cmd(host, str(short_tmp / "state"), [progs["go"], "serve", f":{port}"],
                       f"exported UDP port {port}", "--verbose")
    try:
        assert f"exported UDP port {port}" in log, log
        out = subprocess.run(["ss", "-Hlun", f"sport = :{port}"], capture_output=True,
                             text=True).stdout
        local = [line.split()[3] for line in out.splitlines() if line.strip()]
        assert local and all(a.startswith(("127.", "[::1]", "[::ffff:127.")) for a in local), out
        ip4 = next(ip for ip in tailnet_ips(host) if ":" not in ip)
        assert from_peer(testnet, ip4, port) == "got:from peer"
    finally:
        stop_cmd(p)


def tailnet_ips(hostname):
    from tailproxy import control
    for _, info in control.running():
        if info.get("hostname") == hostname:
            return info["ips"]
    raise AssertionError(f"{hostname} is not running")

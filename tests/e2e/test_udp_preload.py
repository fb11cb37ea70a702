"""UDP from an unmodified program under tailproxy (the preload's associations, preload/src/udp.c,
relayed by the node): a plain Python client (udp_probe.py) to `peer`'s UDP echo, and through an
exit node to the internet host's, on the local tailnet."""
import json
import os
import sys

import pytest

from helpers import run_tp

pytestmark = pytest.mark.tailnet

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_probe.py")
CLOSED_PORT = 9     # nothing listens on it on `peer`


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("udpstate"))


def probe(state, checks, host, port, *extra):
    cp = run_tp("--state-dir", state, "--hostname", "udpuser", *extra, "--",
                sys.executable, PROBE, ",".join(checks), host, str(port))
    assert cp.returncode == 0, cp.stderr + cp.stdout
    results = {}
    for line in cp.stdout.splitlines():
        r = json.loads(line)
        results[r.pop("check")] = r
    assert sorted(results) == sorted(checks), cp.stdout + cp.stderr
    return results


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_connected_and_unconnected_to_the_peer(testnet, state, family):
    peer = testnet["peers"]["peer"]
    host, port = peer[family], peer["udp_echo_port"]
    r = probe(state, ["connected", "unconnected", "nonblocking"], host, port)
    assert r["connected"] == {"data": f"connected {host}", "src": [host, port], "peer": [host, port],
                              "plain": "plain recv"}
    assert r["unconnected"] == {"data": "unconnected", "src": [host, port], "msg": "by sendmsg",
                                "msrc": [host, port]}
    assert r["nonblocking"] == {"data": "asyncio", "src": [host, port], "timeout": 0}


def test_v4_mapped_and_by_magicdns_name(testnet, state):
    peer = testnet["peers"]["peer"]
    port = peer["udp_echo_port"]
    r = probe(state, ["mapped"], peer["ipv4"], port)
    mapped = "::ffff:" + peer["ipv4"]
    assert r["mapped"] == {"data": "mapped", "src": [mapped, port], "peer": [mapped, port]}
    for name in ("peer", peer["fqdn"].rstrip(".")):
        r = probe(state, ["by_name"], name, port)
        assert r["by_name"] == {"data": "by name", "src": [peer["ipv4"], port],
                                "peer": [peer["ipv4"], port]}, name


@pytest.mark.parametrize("family,limit", [("ipv4", 1252), ("ipv6", 1232)])
def test_oversize_datagram_is_emsgsize_and_the_association_goes_on(testnet, state, family, limit):
    peer = testnet["peers"]["peer"]
    r = probe(state, ["sizes"], peer[family], peer["udp_echo_port"])
    assert r["sizes"] == {"limit": limit, "largest": limit, "sendto_big": "EMSGSIZE",
                          "send_big": "EMSGSIZE", "after": "still there"}


def test_closed_port_on_the_peer_is_a_drop(testnet, state):
    """The peer's userspace netstack sends no ICMP unreachable through the tailnet: the
    datagrams are dropped (documented), the program sees only its own timeouts."""
    peer = testnet["peers"]["peer"]
    r = probe(state, ["refused"], peer["ipv4"], CLOSED_PORT)
    assert r["refused"]["outcome"] in ("timeout", "ECONNREFUSED")
    assert r["refused"]["outcome"] != "answered"


def test_through_the_exit_node_to_the_internet_host(testnet, tmp_path):
    inet = testnet["internet"]
    host, port = inet["ipv4"], inet["udp_echo_port"]
    r = probe(str(tmp_path), ["connected", "unconnected", "nonblocking"], host, port,
              "--exit-node", "exit")
    assert r["connected"] == {"data": f"connected {host}", "src": [host, port], "peer": [host, port],
                              "plain": "plain recv"}
    assert r["unconnected"]["src"] == [host, port] and r["unconnected"]["msrc"] == [host, port]
    assert r["nonblocking"] == {"data": "asyncio", "src": [host, port], "timeout": 0}
    # by name: the program gets a placeholder address; the exit node resolves the name
    r = probe(str(tmp_path), ["by_name"], inet["name"], port, "--exit-node", "exit")
    assert r["by_name"]["data"] == "by name"
    assert r["by_name"]["src"] == r["by_name"]["peer"]


def test_without_exit_node_the_internet_host_is_direct_and_unreachable(testnet, state):
    """Not routed (no exit node): the program's own socket sends directly, and the client's
    namespace has no route to the internet host, so nothing comes back."""
    inet = testnet["internet"]
    r = probe(state, ["refused"], inet["ipv4"], inet["udp_echo_port"])
    assert r["refused"]["outcome"] in ("timeout", "ENETUNREACH", "EHOSTUNREACH")

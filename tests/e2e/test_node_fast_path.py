"""The node's fast path on the local tailnet: a program's connect to an online peer's address is
completed, dialled and relayed by the node itself (node/parked.go), and behaves exactly like one
the proxy handles: data both ways, the real errno of a failed dial, getpeername after exec."""
import pytest

from helpers import py, run_tp

pytestmark = pytest.mark.tailnet


@pytest.fixture(scope="module")
def tp_state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tpstate"))


@pytest.fixture(scope="module")
def peer(testnet):
    return testnet["peers"]["peer"]


def tp(tp_state, *args, **kw):
    return run_tp("--state-dir", tp_state, "--hostname", "fastpath", *args, **kw)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_peer_connection_is_the_nodes_and_carries_data(tp_state, peer, family):
    ip, port = peer[family], peer["echo_port"]
    cp = tp(tp_state, "--verbose", *py(f"""
        import socket
        s = socket.create_connection(({ip!r}, {port}), timeout=20)
        s.sendall(b"x" * 100000); s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(65536)
            if not b: break
            got += b
        print("echoed", len(got))"""), check=False)
    assert cp.returncode == 0 and "echoed 100000" in cp.stdout, cp.stdout + cp.stderr
    dst = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    # --verbose names who relayed it: "node" for the node's own path, "channel" for the proxy
    assert f"tailproxy: node {dst} ok up=" in cp.stderr, cp.stderr


def test_a_refused_dial_gives_econnrefused(tp_state, peer):
    cp = tp(tp_state, "--verbose", *py(f"""
        import errno, socket
        s = socket.socket()
        print("errno", errno.errorcode.get(s.connect_ex(({peer['ipv4']!r}, 1))))"""), check=False)
    assert "errno ECONNREFUSED" in cp.stdout, cp.stdout + cp.stderr
    assert f"tailproxy: node {peer['ipv4']}:1 ECONNREFUSED" in cp.stderr, cp.stderr


def test_getpeername_after_exec_is_the_peer(tp_state, peer):
    """After exec the preload has forgotten the socket; the proxy asks the node."""
    ip, port = peer["ipv4"], peer["echo_port"]
    cp = tp(tp_state, *py(f"""
        import os, socket, sys
        s = socket.create_connection(({ip!r}, {port}), timeout=20)
        os.set_inheritable(s.fileno(), True)
        os.execv(sys.executable, [sys.executable, "-c",
            "import socket; s = socket.socket(fileno=%d); print('peer', s.getpeername())" % s.fileno()])
        """), check=False)
    assert f"peer ('{ip}', {port})" in cp.stdout, cp.stdout + cp.stderr

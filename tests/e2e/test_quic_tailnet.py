"""A real QUIC exchange over the tailnet: an aioquic server on `peer`, an aioquic client (a
program that knows nothing of tailproxy) under tailproxy, its UDP carried by the preload's
associations and the node (quic_echo.py)."""
import json
import os
import subprocess
import sys

import aioquic  # noqa: F401  (the `test` extra: a missing one fails, never skips)
import pytest

from helpers import in_netns, readline, run_tp
from tailproxy.testnet.tls import make_certs

pytestmark = pytest.mark.tailnet

QUIC_ECHO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quic_echo.py")
PORT = 4433


@pytest.fixture
def quic_server(testnet, tmp_path):
    peer = testnet["peers"]["peer"]
    certs = make_certs(str(tmp_path / "certs"), peer["ipv4"])
    # tailscaled on `peer` (userspace networking) hands tailnet UDP to its loopback
    p = in_netns(peer["netns"], [sys.executable, QUIC_ECHO, "server", "127.0.0.1", str(PORT),
                                 certs.cert, certs.key], stdout=subprocess.PIPE)
    try:
        assert readline(p.stdout, 30) == b"ready\n"
        yield certs.ca_cert
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_quic_stream_to_the_peer(testnet, quic_server, tmp_path):
    peer = testnet["peers"]["peer"]
    nbytes = 200_000        # ~170 datagrams each way, flow control and acks included
    cp = run_tp("--state-dir", str(tmp_path / "state"), "--hostname", "quicuser", "--verbose", "--",
                sys.executable, QUIC_ECHO, "client", peer["ipv4"], str(PORT), quic_server,
                str(nbytes), timeout=90)
    assert cp.returncode == 0, cp.stderr
    result = json.loads(cp.stdout.strip().splitlines()[-1])
    assert result["same"] and result["bytes"] == nbytes + len(b"echo: "), result
    # it went through an association (the verbose line), not some other way
    assert f"to {peer['ipv4']}:{PORT}: through the node's endpoint" in cp.stderr, cp.stderr

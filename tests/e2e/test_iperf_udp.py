"""`iperf3 -u` (Debian's iperf3, an unmodified program) through the tailnet: its control
connection is TCP, its test stream UDP on a connected socket, both carried for it by tailproxy to
an iperf3 server on `peer`."""
import json
import shutil
import subprocess

import pytest

from helpers import in_netns, run_tp

pytestmark = pytest.mark.tailnet

PORT = 5211


@pytest.fixture
def iperf_server(testnet):
    assert shutil.which("iperf3"), "iperf3 is not installed (Makefile DEBS)"
    peer = testnet["peers"]["peer"]
    # tailscaled on `peer` (userspace networking) hands tailnet traffic to its loopback
    p = in_netns(peer["netns"], ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(PORT)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield
    p.kill()
    p.wait()


def test_iperf3_udp_to_the_peer(testnet, iperf_server, tmp_path):
    peer = testnet["peers"]["peer"]
    # 1200-byte datagrams: one tailnet packet each (a larger -l is EMSGSIZE, see README)
    cp = run_tp("--state-dir", str(tmp_path / "state"), "--hostname", "iperfuser", "--",
                "iperf3", "-c", peer["ipv4"], "-p", str(PORT), "-u", "-b", "20M", "-l", "1200",
                "-t", "2", "-J", timeout=60)
    assert cp.returncode == 0, cp.stdout[-2000:] + cp.stderr
    summary = json.loads(cp.stdout)["end"]["sum"]
    assert summary["packets"] > 3000, summary        # 20 Mbit/s for 2 s is ~4,170 datagrams
    assert summary["lost_percent"] < 5, summary

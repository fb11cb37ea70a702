"""UDP through the node's associations (preload/src/udp.c): the hooks' address rewriting and
errno, against udp_fake_node.py standing in for the proxy and node (preload/tests/test_udp.c)."""
import os
import subprocess
import sys

import pytest

from conftest import Runner
from preload_env import V4, V6
from timedio import readline

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_fake_node.py")
MAPPED = "::ffff:" + V4


@pytest.fixture(scope="module")
def udp(build, netns, rundir):
    channel = os.path.join(rundir, "udp-channel")
    p = subprocess.Popen(netns + [sys.executable, FAKE, channel], stdout=subprocess.PIPE)
    try:
        assert readline(p.stdout, 30) == b"ready\n"
        lib, testbin = build
        yield Runner(netns, lib, testbin, channel)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


@pytest.mark.parametrize("ip", [V4, V6, MAPPED])
@pytest.mark.parametrize("mode", ["sendto", "connected", "msg", "mmsg", "truncated",
                                  "nonblocking", "oversize"])
def test_association_shows_the_destination(udp, mode, ip):
    out = udp.run("test_udp", mode, ip, 7).stdout
    assert out.startswith("ok: "), out


def test_the_proxys_errno_reaches_the_program(udp):
    assert udp.run("test_udp", "refused", "198.18.99.5", 7).stdout.startswith("ok: ")


@pytest.mark.parametrize("ip", [V4, V6])
def test_direct_answer_sends_from_the_programs_socket(udp, ip):
    assert udp.run("test_udp", "direct", ip).stdout.startswith("ok: ")


@pytest.mark.parametrize("ip", [V4, V6])
def test_ended_association_is_econnrefused_on_a_connected_socket(udp, ip):
    assert udp.run("test_udp", "ended", ip).stdout.startswith("ok: ")


def test_loopback_and_port_53_are_not_associations(udp):
    """Loopback destinations go straight; nothing is asked of the fake (it would answer with
    "via")."""
    code = ("import socket\n"
            "a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(('127.0.0.1', 0))\n"
            "b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.settimeout(2)\n"
            "b.sendto(b'hi', a.getsockname()); d, src = a.recvfrom(10)\n"
            "a.sendto(b'yo', src); d2, src2 = b.recvfrom(10)\n"
            "assert (d, d2, src2) == (b'hi', b'yo', a.getsockname()), (d, d2, src2)\n"
            "print('ok')\n")
    assert udp.run_cmd([sys.executable, "-c", code]).stdout == "ok\n"

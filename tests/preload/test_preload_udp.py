"""UDP through the node's associations: the hooks' address rewriting and errno (preload/src/udp.c),
and the same test program under tailproxy-exec with no LD_PRELOAD, its calls caught by the seccomp
filter (preload/exec/udpsend.c, udprecv.c, udproute.c), against udp_fake_node.py standing in for
the proxy and node (preload/tests/test_udp.c). Under seccomp also: hostile sizes are refused
before anything is read or sent."""
import os
import subprocess
import sys

import pytest

from conftest import Runner
from preload_env import V4, V6
from test_preload_seccomp import SeccompRunner, exec_helper  # noqa: F401  (a fixture)
from timedio import readline

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_fake_node.py")
MAPPED = "::ffff:" + V4


@pytest.fixture(scope="module")
def fake_channel(netns, rundir):
    channel = os.path.join(rundir, "udp-channel")
    p = subprocess.Popen(netns + [sys.executable, FAKE, channel], stdout=subprocess.PIPE)
    try:
        assert readline(p.stdout, 30) == b"ready\n"
        yield channel
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


@pytest.fixture(scope="module")
def sudp(exec_helper, build, netns, fake_channel):  # noqa: F811
    lib, testbin = build
    return SeccompRunner(exec_helper, netns, lib, testbin, fake_channel)


@pytest.fixture(scope="module", params=["preload", "seccomp"])
def udp(request, build, netns, fake_channel, sudp):
    lib, testbin = build
    return Runner(netns, lib, testbin, fake_channel) if request.param == "preload" else sudp


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
    assert udp.run_cmd(udp.wrap([sys.executable, "-c", code])).stdout == "ok\n"


HOSTILE = """
import errno, socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(5)
dst = (sys.argv[1], 7)
out = []
for name, call in [("iov65", lambda: s.sendmsg([b"x"] * 65, [], 0, dst)),
                   ("control2k", lambda: s.sendmsg([b"x"], [(socket.SOL_SOCKET, 99, bytes(2048))],
                                                   0, dst)),
                   ("big", lambda: s.sendto(bytes(70000), dst))]:
    try:
        call()
        out.append(name + " sent")
    except OSError as e:
        out.append(name + " " + errno.errorcode[e.errno])
s.sendto(b"after", dst)
d, src = s.recvfrom(200)
out += [d.decode(), src[0]]
print(" ".join(out))
"""


@pytest.mark.parametrize("ip", [V4, V6])
def test_hostile_sizes_are_emsgsize_and_the_socket_goes_on(sudp, ip):
    """More buffers, ancillary data or bytes than the supervisor reads: EMSGSIZE, nothing sent
    (the fake would answer any datagram); the next datagram goes through."""
    argv = sudp.wrap([sys.executable, "-c", HOSTILE, ip])
    out = sudp.run_cmd(argv).stdout.split()
    via = f"[{ip}]:7:" if ":" in ip else f"{ip}:7:"
    assert out == ["iov65", "EMSGSIZE", "control2k", "EMSGSIZE", "big", "EMSGSIZE",
                   "via", via, "after", ip], out


GSO = """
import errno, socket, sys
UDP_SEGMENT = 103
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(5)
dst = (sys.argv[1], 7)
seg = lambda n: [(socket.SOL_UDP, UDP_SEGMENT, n.to_bytes(2, sys.byteorder))]
try:
    s.sendmsg([b"a" * 1300, b"b" * 1300], seg(1300), 0, dst)
    out = ["big-segments sent"]
except OSError as e:
    out = ["big-segments", errno.errorcode[e.errno]]
out.append(str(s.sendmsg([b"x" * 600, b"y" * 600, b"z" * 600], seg(600), 0, dst)))
got = sorted(s.recvfrom(2000) for _ in range(3))
out += [str(len(d)) + d[-1:].decode() for d, src in got] + [got[0][1][0]]
print(" ".join(out))
"""


@pytest.mark.parametrize("ip", [V4, V6])
def test_udp_segment_offload_is_bounded_per_segment(sudp, ip):
    """A UDP_SEGMENT (GSO) send, as QUIC stacks make: segments within the tailnet's payload
    go out as that many datagrams; a larger segment is EMSGSIZE."""
    out = sudp.run_cmd(sudp.wrap([sys.executable, "-c", GSO, ip])).stdout.split()
    via = len(f"via [{ip}]:7: " if ":" in ip else f"via {ip}:7: ")
    assert out == ["big-segments", "EMSGSIZE", "1800"] + [f"{via + 600}{c}" for c in "xyz"] + [ip], out

"""`--export-listeners` serves the UDP ports a program binds: reached from `peer` (through its
tailscaled's SOCKS5 UDP ASSOCIATE, with PySocks), with the same filters, the kernel's word on the
export's lifetime, and `tailproxy ps` listing PORT/udp."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import readline, tailproxy_argv
from tailproxy import control

pytestmark = pytest.mark.tailnet

# A UDP server driven over stdin: "bind NAME PORT", "bind0 NAME" (a client's port), "close NAME";
# each bound socket answers every datagram with b"got:" + it. "ok" per command.
DRIVER = textwrap.dedent(r"""
    import socket, sys, threading
    socks = {}
    def serve(s):
        while True:
            try:
                d, a = s.recvfrom(65535)
                if not a:
                    return          # shut down
                s.sendto(b"got:" + d, a)
            except OSError:
                return
    for line in sys.stdin:
        cmd, *a = line.split()
        if cmd in ("bind", "bind0"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", int(a[1]) if cmd == "bind" else 0)); socks[a[0]] = s
            threading.Thread(target=serve, args=(s,), daemon=True).start()
            print(s.getsockname()[0], s.getsockname()[1], flush=True)
        elif cmd == "close":        # wake the reader first, else its recvfrom keeps the socket
            s = socks.pop(a[0])
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:         # ENOTCONN, and the reader is woken all the same
                pass
            s.close()
        print("ok", flush=True)
""")

PEER_CLIENT = textwrap.dedent(r"""
    import socket, sys, socks
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    host, port = sys.argv[1].rsplit(":", 1)
    s.set_proxy(socks.SOCKS5, host, int(port))
    s.settimeout(2)
    for _ in range(int(sys.argv[4])):
        s.sendto(b"from peer", (sys.argv[2], int(sys.argv[3])))
        try:
            print(s.recvfrom(2048)[0].decode()); break
        except socket.timeout:
            continue
    else:
        print("no answer")
""")


class Server:
    def __init__(self, hostname, state, *extra):
        self.hostname = hostname
        self.p = subprocess.Popen(
            tailproxy_argv("--state-dir", state, "--hostname", hostname, "--export-listeners",
                           *extra, sys.executable, "-u", "-c", DRIVER),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def do(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = readline(self.p.stdout).strip()
        if out != "ok":
            assert readline(self.p.stdout).strip() == "ok"
        return out

    def info(self):
        for _ in range(200):
            for _, i in control.running():
                if i.get("hostname") == self.hostname and i.get("pid") == self.p.pid:
                    return i
            time.sleep(0.1)
        raise AssertionError("tailproxy did not come up:\n" + self.stop())

    def wait_exports(self, want, within=5.0):
        deadline = time.monotonic() + within
        while True:
            got = self.info()["exports"]
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def stop(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
        return self.p.stderr.read()


def from_peer(testnet, ip, port, tries=5):
    p = testnet["peers"]["peer"]
    cp = subprocess.run(["ip", "netns", "exec", p["netns"], sys.executable, "-c", PEER_CLIENT,
                         p["socks5"], ip, str(port), str(tries)],
                        capture_output=True, text=True, timeout=60,
                        env=dict(os.environ))
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def test_udp_server_reached_from_peer_for_as_long_as_it_is_bound(testnet, tmp_path):
    s = Server("udpexp", str(tmp_path / "state"), "--verbose")
    try:
        me = s.info()
        ip4 = next(ip for ip in me["ips"] if ":" not in ip)
        assert s.do("bind a 8410") == "127.0.0.1 8410"      # held to loopback
        assert s.wait_exports(["8410/udp"]) == ["8410/udp"]
        assert from_peer(testnet, ip4, 8410) == "got:from peer"
        # a client's socket (port 0) is neither held to loopback nor exported
        addr, _port = s.do("bind0 b").split()
        assert addr == "0.0.0.0"
        assert s.wait_exports(["8410/udp"], within=1.0) == ["8410/udp"]
        s.do("close a")
        assert s.wait_exports([]) == []
        assert from_peer(testnet, ip4, 8410, tries=2) == "no answer"
    finally:
        err = s.stop()
    assert "exported UDP port 8410:" in err, err
    assert "UDP port 8410 is no longer exported (no socket is bound to it)" in err, err
    assert "inbound" in err and "-> port 8410 127.0.0.1:8410/udp ok" in err, err


def test_udp_filters_and_max(testnet, tmp_path):
    s = Server("udpexpf", str(tmp_path / "state"), "--export-allow-ports", "8420-8430",
               "--export-deny-ports", "8425", "--export-max", "2")
    try:
        s.info()
        for name, port in (("a", 8421), ("b", 8425), ("c", 8440), ("d", 8422), ("e", 8423)):
            s.do(f"bind {name} {port}")
        assert s.wait_exports(["8421/udp", "8422/udp"]) == ["8421/udp", "8422/udp"]
    finally:
        err = s.stop()
    assert "not exporting UDP port 8425: it is in --export-deny-ports" in err
    assert "not exporting UDP port 8440: it is not in --export-allow-ports" in err
    assert "not exporting UDP port 8423: --export-max=2" in err

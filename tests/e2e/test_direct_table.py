"""Issue 15, the routing table on the local tailnet: a destination the proxy would only dial
directly is connected by the program itself (the kernel's own connection, no hand-over), and
switching the exit node under load routes no connection by the stale table once the switch has
returned. Run with --exit-nodes 2."""
import json
import platform
import re
import subprocess
import threading
import time

import pytest

from helpers import direct_link_to_the_internet, py, run_tp, tailproxy_argv
from tailproxy import control

pytestmark = pytest.mark.tailnet

SYS_GETPEERNAME = {"x86_64": 52, "aarch64": 205}

# Connects, reads the kernel's peer with the raw syscall (past the preload's getpeername hook,
# which shows the destination for a relayed socket too), then asks the server who it saw.
KERNEL_PEER = """
    import ctypes, json, socket, struct, sys
    host, port, nr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((host, port), timeout=15)
    buf, n = ctypes.create_string_buffer(128), ctypes.c_uint32(128)
    assert ctypes.CDLL(None, use_errno=True).syscall(nr, s.fileno(), buf, ctypes.byref(n)) == 0
    peer = socket.inet_ntoa(buf.raw[4:8]), struct.unpack("!H", buf.raw[2:4])[0]
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print(json.dumps({"kernel_peer": list(peer), "hook_peer": list(s.getpeername()),
                      "client": json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])["client"]}))
"""

# A fresh connection after another, for as long as stdin stays open: one line per connection,
# "<monotonic time before connect()> <client address the server saw>" or "... ERROR ...".
LOAD = """
    import json, socket, sys, threading, time
    host, port = sys.argv[1], int(sys.argv[2])
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        t0 = time.monotonic()
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            print(t0, json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])["client"], flush=True)
        except Exception as e:
            print(t0, "ERROR", type(e).__name__, e, flush=True)
"""


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("direct-table"))


def test_direct_destination_is_the_kernels_own_connection(testnet, state):
    inet, port = testnet["internet"]["ipv4"], testnet["internet"]["http_port"]
    nr = SYS_GETPEERNAME.get(platform.machine())
    if nr is None:
        pytest.skip(f"no getpeername syscall number for {platform.machine()}")
    with direct_link_to_the_internet(testnet) as own_address:
        cp = run_tp("--state-dir", state, "--hostname", "direct", "--verbose",
                    *py(KERNEL_PEER), inet, str(port), str(nr))
    assert cp.returncode == 0, cp.stderr
    seen = json.loads(cp.stdout)
    assert seen["kernel_peer"] == [inet, port]          # not the proxy's loopback relay
    assert seen["hook_peer"] == [inet, port]
    assert seen["client"] == own_address
    assert re.search(rf"connect fd \d+ to {re.escape(inet)}:{port}: direct \(not routed by the "
                     r"proxy\)", cp.stderr), cp.stderr
    # the proxy relayed nothing to it (its --verbose line per relayed connection)
    assert not re.search(rf"tailproxy: channel {re.escape(inet)}:{port} ", cp.stderr), cp.stderr


def test_proxy_all_hands_the_direct_destination_over(testnet, state):
    inet, port = testnet["internet"]["ipv4"], testnet["internet"]["http_port"]
    nr = SYS_GETPEERNAME.get(platform.machine())
    if nr is None:
        pytest.skip(f"no getpeername syscall number for {platform.machine()}")
    with direct_link_to_the_internet(testnet) as own_address:
        cp = run_tp("--state-dir", state, "--hostname", "direct", "--verbose", "--proxy-all",
                    *py(KERNEL_PEER), inet, str(port), str(nr))
    assert cp.returncode == 0, cp.stderr
    seen = json.loads(cp.stdout)
    assert seen["kernel_peer"][0] in ("127.0.0.1", "::1")     # the proxy's relay
    assert seen["hook_peer"] == [inet, port] and seen["client"] == own_address
    assert re.search(rf"tailproxy: channel {re.escape(inet)}:{port} ok ", cp.stderr), cp.stderr


def test_tailnet_destination_is_still_handed_over(testnet, state):
    peer = testnet["peers"]["peer"]
    code = f"""
        import socket
        s = socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=15)
        s.sendall(b"ping"); print(s.recv(4).decode())
    """
    cp = run_tp("--state-dir", state, "--hostname", "direct", "--verbose", *py(code))
    assert cp.returncode == 0 and cp.stdout.split() == ["ping"], cp.stderr
    assert "direct (not routed" not in cp.stderr
    # the proxy or the node relayed it (their --verbose line per relayed connection)
    assert re.search(rf"tailproxy: (channel|node) {re.escape(peer['ipv4'])}:\d+ ok ", cp.stderr), cp.stderr


def test_exit_node_switch_under_load_routes_nothing_by_the_stale_table(testnet, state):
    inet, port = testnet["internet"]["ipv4"], testnet["internet"]["http_port"]
    egress = testnet["exit_node"]["egress_ipv4"]
    lines: list[tuple[float, str]] = []

    def tp(*args):
        return subprocess.run(tailproxy_argv("--hostname", "switchload", *args),
                              capture_output=True, text=True, timeout=60)

    def wait_for(n_more):
        start = len(lines)
        deadline = time.monotonic() + 30
        while len(lines) < start + n_more:
            assert time.monotonic() < deadline, lines[-5:]
            time.sleep(0.05)

    with direct_link_to_the_internet(testnet) as own_address:
        p = subprocess.Popen(tailproxy_argv("--state-dir", state, "--hostname", "switchload",
                                            *py(LOAD), inet, str(port)),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)

        def collect():
            for line in p.stdout:
                t0, rest = line.split(" ", 1)
                lines.append((float(t0), rest.strip()))
        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while not any(i.get("hostname") == "switchload" for _, i in control.running()):
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.2)
            wait_for(50)
            switches = []
            for _ in range(2):
                started = time.monotonic()
                out = tp("exit-node", "set", "exit")
                switches.append(("set", started, time.monotonic()))
                assert out.returncode == 0, out.stderr
                wait_for(50)
                started = time.monotonic()
                out = tp("exit-node", "clear")
                switches.append(("clear", started, time.monotonic()))
                assert out.returncode == 0, out.stderr
                wait_for(50)
        finally:
            p.stdin.close()
            p.wait(60)
            reader.join(10)
    assert p.returncode == 0, p.stderr.read()
    # Connections kept flowing. Clearing the exit node resets what is relayed through it at
    # that moment (the node drops its exit routes): only a connection under way while a clear
    # ran may fail.
    def during_a_clear(t0):
        return any(kind == "clear" and started - 1.0 < t0 < returned
                   for kind, started, returned in switches)
    errors = [entry for entry in lines if entry[1].startswith("ERROR")]
    assert all(during_a_clear(t0) for t0, _ in errors), (errors, switches)
    assert len(lines) - len(errors) >= 250
    # After each switch returned, until the next one started, every connection went the new way.
    for i, (kind, _, returned) in enumerate(switches):
        until = switches[i + 1][1] if i + 1 < len(switches) else float("inf")
        want = egress if kind == "set" else own_address
        after = [client for t0, client in lines if returned < t0 < until]
        assert after and all(c == want for c in after), (kind, after)
    before = [client for t0, client in lines if t0 < switches[0][1]]
    assert before and all(c == own_address for c in before)

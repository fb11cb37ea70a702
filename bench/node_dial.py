#!/usr/bin/env python3
"""The floor under (c)'s connect latency: how long the node's own dial interface takes, with no
tailproxy in the way. Run on the local tailnet:

    python -m tailproxy.testnet -- .venv/bin/python bench/node_dial.py [--n 500]

Two userspace tailscaleds in the client namespace, each dialled N times (after 50 warm-up) to an
echo server on `peer`:
  LocalAPI dial   tailproxy's node interface (`POST /localapi/v0/dial`, HTTP upgrade over the
                  node's unix socket: what tailproxy uses, libtailscale being unavailable here);
  SOCKS5 CONNECT  the anchor's interface (`tailscaled --socks5-server`, no auth, loopback TCP);
each with plain blocking calls (the interface's own cost), then from asyncio (tailproxy's
Node.dial, and an asyncio SOCKS5 client). Prints the median and p90 of each.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from tailproxy import eventloop  # noqa: E402
from tailproxy.node import Node, NodeConfig  # noqa: E402


def start_socks_node(info: dict, tmp: str) -> tuple[subprocess.Popen, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = os.path.join(tmp, "socks-node")
    os.makedirs(d, mode=0o700)
    env = dict(os.environ, TS_NO_LOGS_NO_SUPPORT="true", TS_DISABLE_PORTMAPPER="1")
    p = subprocess.Popen([info["bin"]["tailscaled"], "--tun=userspace-networking",
                          f"--socks5-server=127.0.0.1:{port}", f"--statedir={d}",
                          f"--socket={d}/s", "--port=0"], env=env, stdin=subprocess.DEVNULL,
                         stdout=open(os.path.join(d, "log"), "w"), stderr=subprocess.STDOUT)
    for _ in range(300):
        if os.path.exists(f"{d}/s"):
            break
        time.sleep(0.1)
    subprocess.run([info["bin"]["tailscale"], f"--socket={d}/s", "up",
                    f"--login-server={os.environ['TAILPROXY_CONTROL_URL']}",
                    f"--auth-key={os.environ['TS_AUTHKEY']}", "--hostname=nodedial-socks"],
                   check=True, capture_output=True, timeout=90)
    return p, port


async def socks_dial(port: int, ip: str, dport: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", port))
    await loop.sock_sendall(s, b"\x05\x01\x00")
    assert await loop.sock_recv(s, 2) == b"\x05\x00"
    await loop.sock_sendall(s, b"\x05\x01\x00\x01" + socket.inet_aton(ip) + struct.pack(">H", dport))
    rep = b""
    while len(rep) < 10:
        rep += await loop.sock_recv(s, 10 - len(rep))
    if rep[1] != 0:
        raise OSError(f"SOCKS5 reply {rep[1]}")
    return s


def localapi_dial_blocking(path: str, ip: str, dport: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall((f"POST /localapi/v0/dial HTTP/1.1\r\nHost: local-tailscaled.sock\r\n"
               f"Sec-Tailscale: localapi\r\nConnection: upgrade\r\nUpgrade: ts-dial\r\n"
               f"Dial-Host: {ip}\r\nDial-Port: {dport}\r\nContent-Length: 0\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(head.decode(errors="replace"))
    return s


def socks_dial_blocking(port: int, ip: str, dport: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(ip) + struct.pack(">H", dport))
    rep = b""
    while len(rep) < 10:
        rep += s.recv(10 - len(rep))
    if rep[1] != 0:
        raise OSError(f"SOCKS5 reply {rep[1]}")
    return s


def timed_blocking(dial, n: int) -> list[float]:
    for _ in range(50):
        dial().close()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s = dial()
        out.append((time.perf_counter() - t) * 1e6)
        s.close()
    return sorted(out)


async def timed(dial, n: int) -> list[float]:
    for _ in range(50):
        (await dial()).close()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s = await dial()
        out.append((time.perf_counter() - t) * 1e6)
        s.close()
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500)
    a = ap.parse_args()
    info = json.load(open(os.environ["TESTNET_INFO"]))
    peer = info["peers"]["peer"]
    tmp = tempfile.mkdtemp(prefix="nodedial-")
    echo = subprocess.Popen(["ip", "netns", "exec", peer["netns"], sys.executable, "-c", ECHO],
                            stdout=subprocess.PIPE, text=True)
    dport = int(echo.stdout.readline())
    node = Node(NodeConfig(state_dir=os.path.join(tmp, "localapi-node"), hostname="nodedial-localapi",
                           authkey=os.environ["TS_AUTHKEY"],
                           control_url=os.environ["TAILPROXY_CONTROL_URL"], ephemeral=True))
    sp = None
    try:
        node.up(90)
        sp, sport = start_socks_node(info, tmp)

        async def both():
            rows = []
            for name, dial in (("LocalAPI dial, tailproxy's Node.dial", lambda: node.dial(peer["ipv4"], dport)),
                               ("SOCKS5 CONNECT, asyncio client", lambda: socks_dial(sport, peer["ipv4"], dport))):
                ts = await timed(dial, a.n)
                rows.append((name, statistics.median(ts), ts[int(len(ts) * 0.9)]))
            return rows

        print(f"dial to {peer['ipv4']}:{dport} on peer, {a.n} times each")
        rows = []
        for name, dial in (("LocalAPI dial, blocking calls", lambda: localapi_dial_blocking(
                                node.localapi.socket_path, peer["ipv4"], dport)),
                           ("SOCKS5 CONNECT, blocking calls", lambda: socks_dial_blocking(
                                sport, peer["ipv4"], dport))):
            ts = timed_blocking(dial, a.n)
            rows.append((name, statistics.median(ts), ts[int(len(ts) * 0.9)]))
        rows += [(f"{n} ({eventloop.kind()})", m, p) for n, m, p in eventloop.run(both())]
        for name, med, p90 in rows:
            print(f"  {name:44s} median {med:6.0f} µs   p90 {p90:6.0f} µs")
    finally:
        node.close()
        if sp:
            sp.terminate()
            sp.wait(10)
        echo.terminate()
    return 0


ECHO = r"""
import socket, threading
l = socket.create_server(("0.0.0.0", 0), backlog=512)
print(l.getsockname()[1], flush=True)
def serve(c):
    with c:
        while (d := c.recv(65536)):
            c.sendall(d)
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

if __name__ == "__main__":
    sys.exit(main())

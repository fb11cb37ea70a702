#!/usr/bin/env python3
"""The floor under (c)'s connect latency: how long tailproxy's node takes to dial a peer, with
nothing of tailproxy around it (no preload, no proxy), next to a userspace tailscaled's SOCKS5
CONNECT (the anchor's interface). Run on the local tailnet:

    python -m tailproxy.testnet -- .venv/bin/python bench/node_dial.py [--n 500]

In this process, the node library as a plain Python library (`tailproxy.node.Node`: Go over
tsnet, loaded with ctypes), and a userspace tailscaled with --socks5-server in the client
namespace; each is dialled N times (after 50 warm-up) to an echo server on `peer`:

  Node.connect      the node's own dial: a ctypes call into Go, tsnet's Dial, the outcome back as
                    an event on the node's event pipe, on the event loop (uvloop when installed,
                    as tailproxy runs); the connection is then dropped unrelayed
  Node.dial + echo  the same, then the node relays it to a socket pair: one 1-byte echo through it
  SOCKS5 CONNECT    tailscaled's SOCKS5 server, plain blocking calls (what proxychains4 does in the
                    program), connect + handshake until the success reply; and with a 1-byte echo

(c) times connect() in the program: tailproxy adds the preload → proxy hop and the proxy's
relay handover on top of `Node.connect`; the anchor adds proxychains4's hook on top of
`SOCKS5 CONNECT`. Prints the median and p90 of each.
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

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "src"))

import benchlib as B  # noqa: E402
from tailproxy import eventloop  # noqa: E402
from tailproxy.node import Node, NodeConfig  # noqa: E402


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


def echo_blocking(s: socket.socket) -> None:
    s.sendall(b"x")
    if s.recv(1) != b"x":
        raise OSError("no echo")


def timed_blocking(dial, n: int, echo: bool) -> list[float]:
    out = []
    for i in range(50 + n):
        t = time.perf_counter()
        s = dial()
        if echo:
            echo_blocking(s)
        if i >= 50:
            out.append((time.perf_counter() - t) * 1e6)
        s.close()
    return sorted(out)


async def timed_node(node: Node, ip: str, dport: int, n: int, echo: bool) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    for i in range(50 + n):
        t = time.perf_counter()
        if echo:
            s = await node.dial(ip, dport)
            await loop.sock_sendall(s, b"x")
            if await loop.sock_recv(s, 1) != b"x":
                raise OSError("no echo")
            s.close()
        else:
            (await node.connect(ip, dport)).close()
        if i >= 50:
            out.append((time.perf_counter() - t) * 1e6)
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500)
    a = ap.parse_args()
    info = json.load(open(os.environ["TESTNET_INFO"]))
    peer = info["peers"]["peer"]
    tmp = tempfile.mkdtemp(prefix="nodedial-")
    argv = ["ip", "netns", "exec", peer["netns"], sys.executable, "-c", ECHO]
    B.show(argv[:-1] + ["ECHO"], note="threaded echo server in the peer's namespace")
    echo = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    dport = int(echo.stdout.readline())
    node = Node(NodeConfig(state_dir=os.path.join(tmp, "node"), hostname="nodedial-node",
                           authkey=os.environ["TS_AUTHKEY"],
                           control_url=os.environ["TAILPROXY_CONTROL_URL"], ephemeral=True))
    sp = None
    rows = []
    try:
        node.up(90)
        sp, sport = B.start_socks_tailscaled(info, os.path.join(tmp, "socks-node"), "nodedial-socks")
        ip = peer["ipv4"]
        print(f"dial {ip}:{dport} on peer, {a.n} times each (after 50 warm-up)", flush=True)

        async def ours():
            return [(f"Node.connect ({eventloop.kind()})", await timed_node(node, ip, dport, a.n, False)),
                    (f"Node.dial + 1-byte echo ({eventloop.kind()})",
                     await timed_node(node, ip, dport, a.n, True))]
        rows += eventloop.run(ours())
        rows.append(("SOCKS5 CONNECT, blocking", timed_blocking(lambda: socks_dial_blocking(sport, ip, dport),
                                                                a.n, False)))
        rows.append(("SOCKS5 CONNECT + 1-byte echo, blocking",
                     timed_blocking(lambda: socks_dial_blocking(sport, ip, dport), a.n, True)))
        for name, ts in rows:
            print(f"  {name:44s} median {statistics.median(ts):6.0f} µs   p90 {B.pct(ts, 0.9):6.0f} µs")
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

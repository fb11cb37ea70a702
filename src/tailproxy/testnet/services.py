"""Small servers the testnet runs inside its namespaces (stdlib only; the DNS servers are
dnsmasq, see dnsmasq.py).

    python -m tailproxy.testnet.services echo      --port 7    [--host ADDR]... [--ready-file F]
    python -m tailproxy.testnet.services udp-echo  --port 7    [--host ADDR]... [--ready-file F]
    python -m tailproxy.testnet.services http      --port 8080 --name peer [--host ADDR]...

Each binds all its sockets first, then creates --ready-file (the testnet waits on it), then
serves until killed.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, handler):
        self.address_family = _family(addr[0])
        super().__init__(addr, handler)


class _UDPServer(socketserver.UDPServer):
    allow_reuse_address = True
    max_packet_size = 65535

    def __init__(self, addr, handler):
        self.address_family = _family(addr[0])
        super().__init__(addr, handler)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, handler):
        self.address_family = _family(addr[0])
        super().__init__(addr, handler)


# ---- echo -------------------------------------------------------------------------------

class UDPEchoHandler(socketserver.BaseRequestHandler):
    """Each datagram back to its sender, whole."""

    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


class EchoHandler(socketserver.BaseRequestHandler):
    """Echo every byte back. Reading never waits on writing (an unbounded queue sits between
    them), so a client may send everything before reading anything. On the client's EOF the
    rest is sent, then our write side is shut down and the socket closed."""

    def handle(self):
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        q: queue.SimpleQueue = queue.SimpleQueue()
        failed = threading.Event()

        def writer():
            try:
                while True:
                    chunk = q.get()
                    if chunk is None:
                        break
                    if not failed.is_set():
                        sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                failed.set()

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        try:
            while True:
                chunk = sock.recv(256 * 1024)
                if not chunk or failed.is_set():
                    break
                q.put(chunk)
        except OSError:
            pass
        q.put(None)
        w.join()


# ---- http -------------------------------------------------------------------------------

def make_http_handler(host_name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "testnet-http"

        def log_message(self, fmt, *args):
            sys.stderr.write(f"{self.client_address[0]} {fmt % args}\n")

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n > 0 else b""

        def _reply(self, code: int, body: bytes, ctype: str):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self):
            body = self._body()
            path = self.path.split("?", 1)[0]
            if path.startswith("/bytes/"):  # /bytes/N: N deterministic bytes, for bulk tests
                try:
                    n = int(path[len("/bytes/"):])
                except ValueError:
                    n = -1
                if not 0 <= n <= 1 << 30:
                    return self._reply(400, b"bad size\n", "text/plain")
                pattern = bytes(range(256)) * 256
                data = (pattern * (n // len(pattern) + 1))[:n]
                return self._reply(200, data, "application/octet-stream")
            info = {
                "host": host_name,
                "client": self.client_address[0],
                "client_port": self.client_address[1],
                "method": self.command,
                "path": self.path,
                "host_header": self.headers.get("Host"),
                # Set when the request came through `tailscale serve` (the peer's http_serve_port):
                # the client's tailnet address, which a plain forwarded connection hides (it
                # arrives from 127.0.0.1).
                "forwarded_for": self.headers.get("X-Forwarded-For"),
                "tailscale_user": self.headers.get("Tailscale-User-Login"),
                "body_len": len(body),
            }
            self._reply(200, (json.dumps(info) + "\n").encode(), "application/json")

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

    return Handler


# ---- main -------------------------------------------------------------------------------

def _serve_forever(servers, ready_file):
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, ready_file)
    for t in threads:
        t.join()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tailproxy.testnet.services")
    sub = p.add_subparsers(dest="kind", required=True)
    for kind in ("echo", "udp-echo", "http"):
        s = sub.add_parser(kind)
        s.add_argument("--host", action="append", help="address to bind (repeatable)")
        s.add_argument("--port", type=int)
        s.add_argument("--ready-file")
        if kind == "http":
            s.add_argument("--name", required=True, help="host name reported in responses")
    a = p.parse_args(argv)
    hosts = a.host or ["127.0.0.1"]
    if a.kind == "echo":
        servers = [_TCPServer((h, a.port or 7), EchoHandler) for h in hosts]
    elif a.kind == "udp-echo":
        servers = [_UDPServer((h, a.port or 7), UDPEchoHandler) for h in hosts]
    else:
        handler = make_http_handler(a.name)
        servers = [_HTTPServer((h, a.port or 8080), handler) for h in hosts]
    _serve_forever(servers, a.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())

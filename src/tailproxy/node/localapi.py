"""Client for the node's LocalAPI, spoken as HTTP/1.1 over its private Unix socket.

Blocking calls (status, prefs, ...) use one short-lived connection each; `dial` is async and hands back
the raw socket after the `ts-dial` upgrade, so the relay can use it like any TCP connection.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import socket
import urllib.parse
from typing import Any

from .errors import LocalAPIError

_HOST = "local-tailscaled.sock"
_MAX_HEADER = 16 * 1024


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__(_HOST, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class NodeConnection(socket.socket):
    """A connection dialled through the node. tailscaled ends both directions at the first EOF
    and drops what its netstack still holds, so a relay waits for it to drain before passing a
    half-close on."""
    settle_before_half_close = True


class LocalAPI:
    """The node's LocalAPI (status, prefs, dns-query, whois, serve config, dial)."""

    def __init__(self, socket_path: str, timeout: float = 10.0):
        self.socket_path = socket_path
        self.timeout = timeout

    # -- plumbing ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple[int, dict, bytes]:
        conn = _UnixHTTPConnection(self.socket_path, timeout or self.timeout)
        hdrs = {"Host": _HOST, "Sec-Tailscale": "localapi"}
        if headers:
            hdrs.update(headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, "/localapi/v0/" + path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        except OSError as e:
            raise LocalAPIError(f"LocalAPI {path}: cannot talk to the node ({e.strerror or e})") from e
        finally:
            conn.close()

    def _json(self, method: str, path: str, body: Any = None, ok=(200,), **kw) -> Any:
        status, _, data = self.request(method, path, body, **kw)
        if status not in ok:
            raise LocalAPIError(f"LocalAPI {path}: {status} {data.decode(errors='replace').strip()}",
                                status=status)
        return json.loads(data) if data.strip() else None

    # -- endpoints --------------------------------------------------------------------------
    def status(self, peers: bool = True) -> dict:
        return self._json("GET", "status" + ("" if peers else "?peers=false"))

    def prefs(self) -> dict:
        return self._json("GET", "prefs")

    def edit_prefs(self, masked: dict) -> dict:
        """PATCH prefs: `masked` holds the new values plus `<Field>Set: true` for each."""
        return self._json("PATCH", "prefs", masked)

    def start(self, options: dict) -> None:
        self._json("POST", "start", options, ok=(200, 204))

    def login_interactive(self) -> None:
        self._json("POST", "login-interactive", ok=(200, 204))

    def dns_query(self, name: str, qtype: str = "A") -> dict:
        q = urllib.parse.urlencode({"name": name, "type": qtype})
        return self._json("GET", "dns-query?" + q)

    def whois(self, addr: str) -> dict | None:
        """Who is at `addr` (ip or ip:port); None when it is no node of this tailnet."""
        status, _, data = self.request("GET", "whois?" + urllib.parse.urlencode({"addr": addr}))
        if status == 404:
            return None
        if status != 200:
            raise LocalAPIError(f"LocalAPI whois: {status} {data.decode(errors='replace').strip()}",
                                status=status)
        return json.loads(data)

    def serve_config(self) -> tuple[dict, str]:
        status, headers, data = self.request("GET", "serve-config")
        if status != 200:
            raise LocalAPIError(f"LocalAPI serve-config: {status} {data.decode(errors='replace')}",
                                status=status)
        return (json.loads(data) if data.strip() else {}) or {}, headers.get("Etag", "")

    def set_serve_config(self, config: dict, etag: str) -> None:
        self._json("POST", "serve-config", config, ok=(200, 204), headers={"If-Match": etag})

    # -- dial -------------------------------------------------------------------------------
    async def dial(self, host: str, port: int) -> socket.socket:
        """Open a TCP connection through the node; returns the upgraded non-blocking socket.

        Raises LocalAPIError with the node's message when the dial fails (status 502).
        """
        loop = asyncio.get_running_loop()
        sock = NodeConnection(socket.AF_UNIX,
                              socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            try:
                sock.connect(self.socket_path)      # a local socket: at once, or EAGAIN
            except BlockingIOError:
                await loop.sock_connect(sock, self.socket_path)
            req = (f"POST /localapi/v0/dial HTTP/1.1\r\nHost: {_HOST}\r\n"
                   f"Sec-Tailscale: localapi\r\nConnection: upgrade\r\nUpgrade: ts-dial\r\n"
                   f"Dial-Host: {host}\r\nDial-Port: {int(port)}\r\nDial-Network: tcp\r\n"
                   f"Content-Length: 0\r\n\r\n").encode()
            await loop.sock_sendall(sock, req)
            head = await _read_head(loop, sock)
            status, headers = _parse_head(head)
            if status == 101:
                return sock
            body = await _read_body(loop, sock, headers)
            msg = body.decode(errors="replace").strip() or f"HTTP {status}"
            raise LocalAPIError(msg, status=status)
        except OSError as e:
            sock.close()
            raise LocalAPIError(f"cannot talk to the node ({e.strerror or e})") from e
        except BaseException:
            sock.close()
            raise


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    # Peek, then consume exactly the header: bytes after it belong to the dialled stream
    # (server-first protocols send a banner at once) and must stay in the socket.
    while True:
        await _wait_readable(loop, sock)
        try:
            peek = sock.recv(_MAX_HEADER, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not peek:
            raise LocalAPIError("the node closed the LocalAPI connection during dial")
        end = peek.find(b"\r\n\r\n")
        if end >= 0:
            return sock.recv(end + 4)
        if len(peek) >= _MAX_HEADER:
            raise LocalAPIError("oversized LocalAPI response header")
        await asyncio.sleep(0)  # header still arriving; MSG_PEEK leaves the fd readable


async def _wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


def _parse_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise LocalAPIError(f"bad LocalAPI response line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def _read_body(loop, sock, headers: dict) -> bytes:
    limit = 64 * 1024
    want = int(headers.get("content-length", limit))
    buf = bytearray()
    while len(buf) < min(want, limit):
        chunk = await loop.sock_recv(sock, min(want, limit) - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)

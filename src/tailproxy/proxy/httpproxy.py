"""HTTP proxy half of the SOCKS5/HTTP port.

- ``CONNECT host:port`` -> ``200 Connection established`` and a tunnel;
- absolute-URI requests (``GET http://host[:port]/path``) are forwarded in
  origin-form with hop-by-hop headers removed and ``Connection: close``; the
  body and the response stream through the relay unchanged;
- ``Proxy-Authorization: Basic`` is required when the server has
  credentials (else ``407`` with ``Proxy-Authenticate``).

Dial errors: ETIMEDOUT -> 504, EACCES/EPERM -> 403, others -> 502; the body
names the errno. The codec (:func:`parse_head`, :func:`rewrite_request`...)
is pure.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import ipaddress
import re
from dataclasses import dataclass

from .dialer import DialError, errno_name
from .hostname import is_visible_ascii

MAX_HEAD = 64 * 1024
MAX_HEADERS = 200

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization",
        "proxy-authenticate", "te", "trailer", "upgrade"}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Head:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def parse_head(buf: bytes):
    """Request line + headers up to the blank line -> (Head, consumed), None
    when incomplete; raises HttpError(400) when malformed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        # tolerate bare LF line ends
        end2 = buf.find(b"\n\n")
        if end2 < 0:
            return None
        end, sep = end2, 2
    else:
        sep = 4
    try:
        text = buf[:end].decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise HttpError(400, "bad encoding") from None
    lines = text.replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, "bad request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, "bad method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400 if not version.startswith("HTTP/") else 505, "bad HTTP version")
    headers = []
    for line in lines[1:]:
        if not line or line[0] in " \t":
            raise HttpError(400, "obsolete line folding")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise HttpError(400, "bad header line")
        headers.append((name, value.strip(" \t")))
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, "too many headers")
    return Head(method, target, version, tuple(headers)), end + sep


def split_hostport(authority: str, default_port: int | None) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'host' (with default_port) -> (host, port)."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise HttpError(400, "bad authority")
        host, rest = authority[1:close], authority[close + 1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise HttpError(400, "bad IPv6 literal") from None
        if rest and not rest.startswith(":"):
            raise HttpError(400, "bad authority")
        port_s = rest[1:] if rest else ""
    else:
        host, colon, port_s = authority.rpartition(":")
        if not colon:
            host, port_s = authority, ""
        if ":" in host:
            raise HttpError(400, "IPv6 literal needs brackets")
    if not host or any(c in host for c in "/@ \t?#\\") or not is_visible_ascii(host):
        raise HttpError(400, "bad host")
    if port_s == "":
        if default_port is None:
            raise HttpError(400, "port required")
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise HttpError(400, "bad port")
    return host, int(port_s)


def parse_absolute_uri(target: str) -> tuple[str, int, str]:
    """'http://host[:port]/path?q' -> (host, port, '/path?q')."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise HttpError(400, "not a proxy request (absolute URI required)")
    if scheme.lower() != "http":
        raise HttpError(400, f"scheme {scheme!r} not supported (use CONNECT)")
    slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:slash], rest[slash:]
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    if "#" in path:
        path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    host, port = split_hostport(authority, 80)
    return host, port, path


def check_auth(head: Head, auth: tuple[bytes, bytes] | None) -> bool:
    if auth is None:
        return True
    value = head.get("proxy-authorization")
    if not value:
        return False
    scheme, _, cred = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        raw = base64.b64decode(cred.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, colon, pw = raw.partition(b":")
    if not colon:
        return False
    return bool(hmac.compare_digest(user, auth[0]) & hmac.compare_digest(pw, auth[1]))


def rewrite_request(head: Head, host: str, port: int, path: str) -> bytes:
    """Origin-form request head for the upstream server."""
    conn_tokens = set()
    for k, v in head.headers:
        if k.lower() in ("connection", "proxy-connection"):
            conn_tokens.update(t.strip().lower() for t in v.split(","))
    out = [f"{head.method} {path} {head.version}"]
    have_host = False
    for k, v in head.headers:
        kl = k.lower()
        if kl in _HOP or kl in conn_tokens:
            continue
        if kl == "host":
            have_host = True
        out.append(f"{k}: {v}")
    if not have_host:
        h = f"[{host}]" if ":" in host else host
        out.insert(1, f"Host: {h}" if port == 80 else f"Host: {h}:{port}")
    out.append("Connection: close")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


_REASONS = {200: "Connection established", 400: "Bad Request", 403: "Forbidden",
            405: "Method Not Allowed", 407: "Proxy Authentication Required",
            431: "Request Header Fields Too Large", 502: "Bad Gateway",
            504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


def response(status: int, body: str = "", extra: tuple[str, ...] = ()) -> bytes:
    reason = _REASONS.get(status, "Error")
    data = (body + "\n").encode() if body else b""
    lines = [f"HTTP/1.1 {status} {reason}", *extra]
    if status != 200:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}",
                  "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def status_for_errno(err: int) -> int:
    if err == errno.ETIMEDOUT:
        return 504
    if err in (errno.EACCES, errno.EPERM):
        return 403
    return 502


async def handshake(server, rd, t0, asked):
    """Read one request head; returns (remote, label, bytes to send upstream
    first) or (None, label, b"") after an error response. ``asked()`` is
    called once the client authenticated and its request is understood."""
    try:
        head = await rd.parse(parse_head, MAX_HEAD)
    except ValueError:
        await rd.sendall(response(431, "request head too large"))
        server._report("http", "-", "bad-request", 0, 0, t0)
        return None, "-", b""
    except HttpError as exc:
        await rd.sendall(response(exc.status, str(exc)))
        server._report("http", "-", "bad-request", 0, 0, t0)
        return None, "-", b""
    if not check_auth(head, server.auth):
        await rd.sendall(response(407, "proxy authentication required",
                                  ('Proxy-Authenticate: Basic realm="tailproxy"',)))
        server._report("http", "-", "auth-required", 0, 0, t0)
        return None, "-", b""
    try:
        if head.method == "CONNECT":
            host, port = split_hostport(head.target, None)
            first = b""
        else:
            host, port, path = parse_absolute_uri(head.target)
            first = rewrite_request(head, host, port, path)
    except HttpError as exc:
        await rd.sendall(response(exc.status, str(exc)))
        server._report("http", "-", "bad-request", 0, 0, t0)
        return None, "-", b""
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    asked()
    try:
        remote = await server._dial(host, port)
    except DialError as exc:
        await rd.sendall(response(status_for_errno(exc.errno), f"{exc.name}: {exc.message}",
                                  (f"X-Tailproxy-Errno: {errno_name(exc.errno)}",)))
        server._report("http", label, exc.name, 0, 0, t0)
        return None, label, b""
    if head.method == "CONNECT":
        try:
            await rd.sendall(response(200))
        except BaseException:
            remote.close()
            raise
    return remote, label, first

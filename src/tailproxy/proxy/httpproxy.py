"""HTTP proxy half of the SOCKS5/HTTP port, on h11 (sans-IO HTTP/1.1).

- ``CONNECT host:port`` -> ``200 Connection established`` and a raw tunnel
  (bytes the client sent past the head go first);
- absolute-URI requests (``GET http://host[:port]/path``) are forwarded in
  origin-form with hop-by-hop headers removed. Both sides are framed by h11
  (Content-Length, chunked, or until close), bodies stream in bounded chunks,
  and the client connection is kept alive: it may send more requests, to the
  same origin or others. An origin connection is reused for the next request
  to the same origin when both sides allow it. A tailnet origin (an Upstream,
  relayed in the node) is joined to one end of a socket pair so that its
  responses can be read here;
- ``Proxy-Authorization: Basic`` is required on every request when the
  server has credentials (else ``407`` with ``Proxy-Authenticate``).

Dial errors: ETIMEDOUT -> 504, EACCES/EPERM -> 403, others -> 502; the body
names the errno. Errors close the client connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import ipaddress
import socket
import time

import h11

from .dialer import DialError, Outbound, errno_name
from .hostname import is_visible_ascii

MAX_HEAD = 64 * 1024
MAX_HEADERS = 200
CHUNK = 64 * 1024
KEEPALIVE_IDLE_S = 60.0     # how long an idle client connection waits for its next request
UPLOAD_GRACE_S = 2.0        # the response ended; how long the request body may still take

_HOP = {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization",
        b"proxy-authenticate", b"te", b"trailer", b"upgrade"}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def _get(headers, name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def check_auth(headers, auth: tuple[bytes, bytes] | None) -> bool:
    """``headers``: (name, value) byte pairs."""
    if auth is None:
        return True
    value = _get(headers, b"proxy-authorization")
    if not value:
        return False
    scheme, _, cred = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        raw = base64.b64decode(cred.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, colon, pw = raw.partition(b":")
    if not colon:
        return False
    return bool(hmac.compare_digest(user, auth[0]) & hmac.compare_digest(pw, auth[1]))


def _connection_tokens(headers) -> set[bytes]:
    out = set()
    for k, v in headers:
        if k.lower() in (b"connection", b"proxy-connection"):
            out.update(t.strip().lower() for t in v.split(b","))
    return out


def strip_hop(headers) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers and those named in Connection (framing headers stay: h11
    frames each side itself)."""
    tokens = _connection_tokens(headers)
    return [(k, v) for k, v in headers if k.lower() not in _HOP and k.lower() not in tokens]


def request_headers(headers, host: str, port: int, *, keep_host: bool = True,
                    close: bool = False) -> list[tuple[bytes, bytes]]:
    """The headers of the origin-form request: hop-by-hop ones removed, a Host added when
    the client sent none (or ``keep_host`` is false), ``Connection: close`` on request."""
    out = strip_hop(headers)
    if not keep_host:
        out = [(k, v) for k, v in out if k.lower() != b"host"]
    if _get(out, b"host") is None:
        h = f"[{host}]" if ":" in host else host
        out.insert(0, (b"Host", (h if port == 80 else f"{h}:{port}").encode("ascii")))
    if close:
        out.append((b"Connection", b"close"))
    return out


def wants_close(req: h11.Request) -> bool:
    tokens = _connection_tokens(req.headers.raw_items())
    if req.http_version == b"1.0":
        return b"keep-alive" not in tokens
    return b"close" in tokens


_REASONS = {200: "Connection established", 400: "Bad Request", 403: "Forbidden",
            405: "Method Not Allowed", 407: "Proxy Authentication Required",
            431: "Request Header Fields Too Large", 501: "Not Implemented",
            502: "Bad Gateway", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


def response(status: int, body: str = "", extra: tuple[str, ...] = ()) -> bytes:
    """A response of our own (errors end the connection; 200 opens a tunnel)."""
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


def dial_error_response(exc: DialError) -> bytes:
    return response(status_for_errno(exc.errno), f"{exc.name}: {exc.message}",
                    (f"X-Tailproxy-Errno: {errno_name(exc.errno)}",))


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _with_host(data: bytes) -> bytes | None:
    """``data`` (a request head lacking Host) with a placeholder Host after the request
    line, so that h11 accepts an HTTP/1.1 proxy request without one (CONNECT often has
    none); None when there is no request line."""
    nl = data.find(b"\n")
    if nl < 0:
        return None
    return data[:nl + 1] + b"Host: " + _NO_HOST + b"\r\n" + data[nl + 1:]


_NO_HOST = b"tailproxy.no-host.invalid"


def new_server_conn() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)


class Asked:
    """A parsed, authenticated, understood request: ``target`` is (host, port) for
    CONNECT, else (host, port, path)."""
    __slots__ = ("req", "host", "port", "path", "label", "keep_host", "cs")

    def __init__(self, req, host, port, path, keep_host, cs):
        self.req, self.host, self.port, self.path = req, host, port, path
        self.label, self.keep_host, self.cs = _label(host, port), keep_host, cs

    @property
    def connect(self) -> bool:
        return self.req.method == b"CONNECT"


async def read_request(server, sock: socket.socket, cs: h11.Connection, t0, *,
                       first: bool) -> tuple[Asked | None, bool]:
    """Read the next request head on ``cs``. Returns (Asked, _) or (None, replied): None
    after an error response (replied True) or when the client ended/reset (False)."""
    loop = asyncio.get_running_loop()
    seen = bytearray(cs.trailing_data[0])
    try:
        while True:
            try:
                ev = cs.next_event()
            except h11.RemoteProtocolError as exc:
                if len(seen) > MAX_HEAD:
                    raise HttpError(431, "request head too large") from None
                if "Missing mandatory Host" not in str(exc):
                    raise
                patched = _with_host(bytes(seen))
                if patched is None:
                    raise
                cs = new_server_conn()
                cs.receive_data(patched)
                ev = cs.next_event()
            if ev is h11.NEED_DATA:
                try:
                    data = await loop.sock_recv(sock, CHUNK)
                except ConnectionError:
                    data = b""
                if len(seen) <= MAX_HEAD:
                    seen += data
                cs.receive_data(data)
                continue
            break
        if isinstance(ev, h11.ConnectionClosed):
            return None, False
        assert isinstance(ev, h11.Request), ev
        if len(seen) - len(cs.trailing_data[0]) > MAX_HEAD:
            raise HttpError(431, "request head too large")
        if ev.http_version not in (b"1.0", b"1.1"):
            raise HttpError(505, "bad HTTP version")
        if len(ev.headers) > MAX_HEADERS:
            raise HttpError(431, "too many headers")
    except h11.RemoteProtocolError as exc:
        if not first and not seen.strip():
            return None, False          # keep-alive connection ended between requests
        status = exc.error_status_hint if exc.error_status_hint in (400, 431, 501) else 400
        if status == 431 or "too long" in str(exc).lower():
            status, msg = 431, "request head too large"
        else:
            msg = str(exc)[:200]
        await loop.sock_sendall(sock, response(status, msg))
        server._report("http", "-", "bad-request", 0, 0, t0)
        return None, True
    except HttpError as exc:
        await loop.sock_sendall(sock, response(exc.status, str(exc)))
        server._report("http", "-", "bad-request", 0, 0, t0)
        return None, True
    headers = ev.headers.raw_items()
    if not check_auth(headers, server.auth):
        await loop.sock_sendall(sock, response(407, "proxy authentication required",
                                               ('Proxy-Authenticate: Basic realm="tailproxy"',)))
        server._report("http", "-", "auth-required", 0, 0, t0)
        return None, True
    keep_host = _get(headers, b"host") != _NO_HOST
    try:
        target = ev.target.decode("ascii")
        if ev.method == b"CONNECT":
            host, port = split_hostport(target, None)
            path = ""
        else:
            host, port, path = parse_absolute_uri(target)
    except (HttpError, UnicodeDecodeError) as exc:
        status = exc.status if isinstance(exc, HttpError) else 400
        await loop.sock_sendall(sock, response(status, str(exc)))
        server._report("http", "-", "bad-request", 0, 0, t0)
        return None, True
    return Asked(ev, host, port, path, keep_host, cs), False


async def handshake(server, rd, t0, asked):
    """Read the first request head. Returns (remote, label, bytes to send upstream first)
    for CONNECT, (Forwarding, label, b"") for an absolute-URI request (its ``run`` serves
    this and the following requests), or (None, label, b"") after an error response.
    ``asked()`` is called once the client authenticated and its request is understood."""
    cs = new_server_conn()
    cs.receive_data(rd.leftover())
    got, _replied = await read_request(server, rd.sock, cs, t0, first=True)
    if got is None:
        return None, "-", b""
    asked()
    if not got.connect:
        return Forwarding(server, rd.sock, got, t0), got.label, b""
    remote = await dial_tunnel(server, rd.sock, got, t0)
    if remote is None:
        return None, got.label, b""
    return remote, got.label, got.cs.trailing_data[0]


async def dial_tunnel(server, sock, got: Asked, t0) -> Outbound | None:
    loop = asyncio.get_running_loop()
    try:
        remote = await server._dial(got.host, got.port)
    except DialError as exc:
        await loop.sock_sendall(sock, dial_error_response(exc))
        server._report("http", got.label, exc.name, 0, 0, t0)
        return None
    try:
        await loop.sock_sendall(sock, response(200))
    except BaseException:
        remote.close()
        raise
    return remote


def as_socket(remote: Outbound) -> socket.socket:
    """A socket to read and write the outbound connection with: itself, or for an Upstream
    (relayed in the node) one end of a socket pair whose other end the Upstream relays."""
    if isinstance(remote, socket.socket):
        return remote
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        remote.join(theirs, lambda up, down, err, reason: None, b"")
    except BaseException:
        ours.close()
        theirs.close()
        remote.close()
        raise
    ours.setblocking(False)
    return ours


class _Failed(Exception):
    """An exchange failed: ``status`` is the response the client gets if none started."""

    def __init__(self, status: int, message: str, errno_: int | None = None):
        super().__init__(message)
        self.status, self.errno = status, errno_


class _Origin:
    __slots__ = ("key", "sock", "h")

    def __init__(self, key, sock: socket.socket):
        self.key, self.sock = key, sock
        self.h = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def reusable(self) -> bool:
        """Idle on both sides, and the origin has not closed (nor sent anything unasked)."""
        if self.h.our_state is not h11.IDLE or self.h.their_state is not h11.IDLE:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    def close(self) -> None:
        self.sock.close()


async def _next_event(conn: h11.Connection, sock: socket.socket, idle: float | None):
    """The next h11 event, reading ``sock`` as needed; TimeoutError (an OSError) after
    ``idle`` s without a byte."""
    loop = asyncio.get_running_loop()
    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        try:
            async with asyncio.timeout(idle):
                data = await loop.sock_recv(sock, CHUNK)
        except ConnectionError:
            data = b""
        conn.receive_data(data)


class Forwarding:
    """Serves absolute-URI requests on one client connection until it ends or fails. While it
    runs it is in the server's relay set: it is "delivering" (relay.drain waits for it) while
    a request is being forwarded, not while the connection waits for the next one."""

    def __init__(self, server, conn: socket.socket, first: Asked, t0: float):
        self.server, self.conn, self.first, self.t0 = server, conn, first, t0
        self.origin: _Origin | None = None
        self.served = 0
        self.linger = False
        self.finished = False
        self._busy = False
        self.loop = asyncio.get_running_loop()

    def delivering(self) -> bool:
        return self._busy and not self.finished

    def bytes_so_far(self) -> None:
        return None

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.origin is not None:
            self.origin.close()
            self.origin = None

    async def run(self) -> bool:
        """Serve; returns whether the client should get a lingering close (an error response
        was sent while it may still be sending)."""
        got = self.first
        self.server._relays.add(self)
        try:
            while True:
                if got.connect:      # a CONNECT after forwarded requests: tunnel from here on
                    self.server._relays.discard(self)
                    await self._tunnel(got)
                    return False
                self._busy = True
                try:
                    if not await self._exchange(got):
                        return self.linger
                finally:
                    self._busy = False
                cs = got.cs
                if cs.our_state is not h11.DONE or cs.their_state is not h11.DONE:
                    return False
                cs.start_next_cycle()
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(self.server.idle_timeout or KEEPALIVE_IDLE_S):
                        got, replied = await read_request(self.server, self.conn, cs, t0,
                                                          first=False)
                except TimeoutError:
                    return False
                if got is None:
                    return replied
        finally:
            self.finished = True
            self.server._relays.discard(self)
            self.close()

    async def _tunnel(self, got: Asked) -> None:
        from .relay import relay_outbound, relay_outcome
        self.close()
        t0 = time.monotonic()
        remote = await dial_tunnel(self.server, self.conn, got, t0)
        if remote is None:
            return
        up, down, error, reason = await relay_outbound(
            self.conn, remote, idle_timeout=self.server.idle_timeout, bufsize=self.server.bufsize,
            initial_up=got.cs.trailing_data[0], track=self.server._relays)
        self.server._report("http", got.label, relay_outcome(error, reason), up, down, t0)

    async def _exchange(self, got: Asked) -> bool:
        """Forward one request and its response; True when the client connection may carry
        another request."""
        t0 = time.monotonic() if self.served else self.t0
        self.served += 1
        key = (got.host, got.port)
        o = self.origin
        reused = o is not None and o.key == key and o.reusable()
        if o is not None and not reused:
            self.close()
        if not reused:
            try:
                remote = await self.server._dial(got.host, got.port)
            except DialError as exc:
                await self.loop.sock_sendall(self.conn, dial_error_response(exc))
                self.server._report("http", got.label, exc.name, 0, 0, t0)
                self.linger = True
                return False
            try:
                self.origin = _Origin(key, as_socket(remote))
            except OSError as exc:
                await self.loop.sock_sendall(self.conn, response(502, f"the origin connection failed: {exc}"))
                self.server._report("http", got.label, "ECONNRESET", 0, 0, t0)
                self.linger = True
                return False
        o = self.origin
        cs = got.cs
        close = wants_close(got.req)
        self.up = self.down = 0
        try:
            headers = request_headers(got.req.headers.raw_items(), got.host, got.port,
                                      keep_host=got.keep_host, close=close)
            await self.loop.sock_sendall(o.sock, o.h.send(h11.Request(
                method=got.req.method, target=got.path.encode("ascii"), headers=headers)))
            await self._both(o, cs)
        except _Failed as exc:
            self.close()
            if cs.our_state is h11.SEND_RESPONSE:
                extra = (f"X-Tailproxy-Errno: {errno_name(exc.errno)}",) if exc.errno else ()
                try:
                    await self.loop.sock_sendall(self.conn, response(exc.status, str(exc), extra))
                except OSError:
                    pass
                self.linger = True
            self.server._report("http", got.label, f"failed ({exc})", self.up, self.down, t0)
            return False
        except (OSError, h11.ProtocolError) as exc:
            self.close()
            if cs.our_state is h11.SEND_RESPONSE:
                try:
                    await self.loop.sock_sendall(self.conn, response(502, f"origin: {exc}"))
                except OSError:
                    pass
                self.linger = True
            self.server._report("http", got.label, f"failed ({exc or type(exc).__name__})",
                                self.up, self.down, t0)
            return False
        if o.h.our_state is h11.DONE and o.h.their_state is h11.DONE:
            o.h.start_next_cycle()
        else:
            self.close()
        note = f" (request {self.served} on the connection{', origin reused' if reused else ''})" \
            if self.served > 1 else ""
        self.server._report("http", got.label, "ok" + note, self.up, self.down, t0)
        return not close

    async def _both(self, o: _Origin, cs: h11.Connection) -> None:
        up = asyncio.ensure_future(self._upload(o, cs))
        down = asyncio.ensure_future(self._download(o, cs))
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up in done and up.exception() is not None:
                up.result()
            if down in done:
                down.result()
                if not up.done():
                    # the response ended first: the rest of the body may still come
                    await asyncio.wait({up}, timeout=UPLOAD_GRACE_S)
                    if not up.done():
                        raise _UploadAbandoned()
                up.result()
            else:
                await down
        finally:
            for t in (up, down):
                if not t.done():
                    t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _upload(self, o: _Origin, cs: h11.Connection) -> None:
        while True:
            try:
                ev = await _next_event(cs, self.conn, self.server.idle_timeout)
            except h11.RemoteProtocolError as exc:
                raise _Failed(400, f"client: {exc}") from None
            if isinstance(ev, h11.Data):
                self.up += len(ev.data)
                await self.loop.sock_sendall(o.sock, o.h.send(h11.Data(data=ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                await self.loop.sock_sendall(o.sock, o.h.send(h11.EndOfMessage()))
                return
            else:
                raise _Failed(400, "client: the request ended early")

    async def _download(self, o: _Origin, cs: h11.Connection) -> None:
        while True:
            try:
                ev = await _next_event(o.h, o.sock, self.server.idle_timeout)
            except h11.RemoteProtocolError as exc:
                raise _Failed(502, f"origin: {exc}") from None
            if isinstance(ev, h11.InformationalResponse):
                if ev.status_code == 101:
                    raise _Failed(502, "origin: unexpected 101 Switching Protocols")
                out = cs.send(h11.InformationalResponse(
                    status_code=ev.status_code, headers=strip_hop(ev.headers.raw_items()),
                    reason=ev.reason))
            elif isinstance(ev, h11.Response):
                out = cs.send(h11.Response(status_code=ev.status_code,
                                           headers=strip_hop(ev.headers.raw_items()),
                                           reason=ev.reason))
            elif isinstance(ev, h11.Data):
                self.down += len(ev.data)
                out = cs.send(h11.Data(data=ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                await self.loop.sock_sendall(self.conn, cs.send(h11.EndOfMessage()))
                return
            else:
                raise _Failed(502, "origin: closed before the response", errno.ECONNRESET)
            await self.loop.sock_sendall(self.conn, out)


class _UploadAbandoned(_Failed):
    def __init__(self):
        super().__init__(400, "the response ended before the request body")

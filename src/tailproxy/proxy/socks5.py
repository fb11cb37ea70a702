"""SOCKS5 (RFC 1928, RFC 1929 username/password) + HTTP proxy on one port.

The first byte decides: 0x05 is SOCKS5, anything else is HTTP (see
:mod:`.httpproxy`). CONNECT and UDP ASSOCIATE (:mod:`.socks5_udp`) are
supported; BIND gets 0x07. Every message is read in full with bounded sizes.

Reply codes reflect the real dial outcome:

=============  =====  =========================================
errno          reply  meaning
=============  =====  =========================================
ECONNREFUSED   0x05   connection refused
EHOSTUNREACH   0x04   host unreachable (unknown/offline peer, name)
ENETUNREACH    0x03   network unreachable
ETIMEDOUT      0x04   host unreachable -- deliberately *not* 0x06
                      "TTL expired": clients print that literally
                      and it misleads; a dial timeout means the host
                      did not answer, i.e. unreachable
EACCES, EPERM  0x02   connection not allowed by ruleset
other          0x01   general failure
=============  =====  =========================================

The codec below is pure: ``parse_*(buf)`` returns ``(value, consumed)``,
``None`` when more bytes are needed, or raises :class:`SocksError`.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

from .accept import accepted
from .dialer import DialError, Dialer, Outbound, guarded_dial
from .hostname import is_visible_ascii
from .preauth import AUTH_DEADLINE_S, PreAuthGate, Ticket
from .relay import DEFAULT_BUFSIZE, relay_outbound, relay_outcome
from .relay import drain as drain_relays
from .socks5_udp import UdpAssociation
from .sockreader import HandshakeEOF, SockReader

__all__ = ["SocksServer", "SocksError", "Request", "parse_greeting", "parse_userpass",
           "parse_request", "encode_reply", "choose_method", "reply_for_errno"]

VER = 5
AUTH_VER = 1

M_NOAUTH = 0x00
M_USERPASS = 0x02
M_NONE = 0xFF

CMD_CONNECT = 1
CMD_BIND = 2
CMD_UDP = 3

ATYP_V4 = 1
ATYP_DOMAIN = 3
ATYP_V6 = 4

REP_OK = 0x00
REP_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NET_UNREACH = 0x03
REP_HOST_UNREACH = 0x04
REP_REFUSED = 0x05
REP_TTL_EXPIRED = 0x06
REP_CMD_UNSUPPORTED = 0x07
REP_ATYP_UNSUPPORTED = 0x08

TIMEOUT_REPLY = REP_HOST_UNREACH   # see module docstring

_ERRNO_REPLY = {
    errno.ECONNREFUSED: REP_REFUSED,
    errno.EHOSTUNREACH: REP_HOST_UNREACH,
    errno.EHOSTDOWN: REP_HOST_UNREACH,
    errno.ENETUNREACH: REP_NET_UNREACH,
    errno.ENETDOWN: REP_NET_UNREACH,
    errno.ETIMEDOUT: TIMEOUT_REPLY,
    errno.EACCES: REP_NOT_ALLOWED,
    errno.EPERM: REP_NOT_ALLOWED,
}

MAX_GREETING = 2 + 255
MAX_USERPASS = 3 + 255 + 255
MAX_REQUEST = 4 + 1 + 255 + 2


class SocksError(Exception):
    """Malformed or unsupported message. ``reply`` is the SOCKS5 reply code to
    send (None: close without a reply, e.g. wrong version)."""

    def __init__(self, message: str, reply: int | None = None):
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Request:
    cmd: int
    atyp: int
    host: str
    port: int

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if self.atyp == ATYP_V6 else f"{self.host}:{self.port}"


def reply_for_errno(err: int) -> int:
    return _ERRNO_REPLY.get(err, REP_FAILURE)


def parse_greeting(buf: bytes):
    """VER NMETHODS METHODS... -> (set of methods, consumed)."""
    if len(buf) < 2:
        return None
    if buf[0] != VER:
        raise SocksError(f"not SOCKS5 (version {buf[0]})")
    n = buf[1]
    if n == 0:
        raise SocksError("no methods offered")
    if len(buf) < 2 + n:
        return None
    return frozenset(buf[2:2 + n]), 2 + n


def choose_method(methods, auth_required: bool) -> int:
    if auth_required:
        return M_USERPASS if M_USERPASS in methods else M_NONE
    if M_NOAUTH in methods:
        return M_NOAUTH
    return M_USERPASS if M_USERPASS in methods else M_NONE


def parse_userpass(buf: bytes):
    """RFC 1929: VER ULEN UNAME PLEN PASSWD -> ((user, pw) bytes, consumed)."""
    if len(buf) < 2:
        return None
    if buf[0] != AUTH_VER:
        raise SocksError(f"bad auth version {buf[0]}")
    ulen = buf[1]
    if ulen == 0:
        raise SocksError("empty username")
    if len(buf) < 2 + ulen + 1:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    return (bytes(buf[2:2 + ulen]), bytes(buf[3 + ulen:end])), end


def parse_request(buf: bytes):
    """VER CMD RSV ATYP DST.ADDR DST.PORT -> (Request, consumed).

    Raises SocksError with reply 0x07 for an unsupported command, 0x08 for an
    unknown address type, 0x01 for a malformed address."""
    if len(buf) < 4:
        return None
    ver, cmd, _rsv, atyp = buf[0], buf[1], buf[2], buf[3]
    if ver != VER:
        raise SocksError(f"bad request version {ver}")
    if atyp == ATYP_V4:
        end = 4 + 4 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[4:8])))
    elif atyp == ATYP_V6:
        end = 4 + 16 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[4:20])))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < 5:
            return None
        n = buf[4]
        end = 5 + n + 2
        if len(buf) < end:
            return None
        # A name no resolver could find (empty, control bytes, not IDNA) is an unreachable host.
        if n == 0:
            raise SocksError("empty domain name", REP_HOST_UNREACH)
        raw = bytes(buf[5:5 + n])
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            try:
                host = raw.decode("utf-8").encode("idna").decode("ascii")
            except (UnicodeError, ValueError):
                raise SocksError("bad domain name", REP_HOST_UNREACH) from None
        if not is_visible_ascii(host) or "/" in host or host.startswith("-"):
            raise SocksError("bad domain name", REP_HOST_UNREACH)
    else:
        raise SocksError(f"address type {atyp} not supported", REP_ATYP_UNSUPPORTED)
    (port,) = struct.unpack_from("!H", buf, end - 2)
    if cmd not in (CMD_CONNECT, CMD_BIND, CMD_UDP):
        raise SocksError(f"unknown command {cmd}", REP_CMD_UNSUPPORTED)
    if cmd == CMD_BIND:
        raise SocksError(f"command {cmd} not supported", REP_CMD_UNSUPPORTED)
    return Request(cmd, atyp, host, port), end


def encode_reply(rep: int, bind: tuple | None = None) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT; ``bind`` an AF_INET/AF_INET6
    sockaddr or None (0.0.0.0:0)."""
    if bind:
        ip = ipaddress.ip_address(bind[0].split("%", 1)[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        atyp = ATYP_V4 if ip.version == 4 else ATYP_V6
        return struct.pack("!BBBB", VER, rep, 0, atyp) + ip.packed + struct.pack("!H", bind[1])
    return struct.pack("!BBBB", VER, rep, 0, ATYP_V4) + bytes(6)


# ---------------------------------------------------------------- server

async def _lingering_close(conn: socket.socket, timeout: float = 1.0, limit: int = 1 << 20) -> None:
    """After an error reply: send FIN, discard what the client still sends
    (bounded), so closing does not reset the connection and destroy the
    reply before the client read it."""
    loop = asyncio.get_running_loop()
    try:
        conn.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(timeout):
            n = 0
            while n < limit:
                data = await loop.sock_recv(conn, 65536)
                if not data:
                    break
                n += len(data)
    except (OSError, TimeoutError):
        pass


ConnLog = Callable[[str, str, str, int, int, float], None]


class SocksServer:
    """SOCKS5 + HTTP proxy listener. ``auth=(user, password)`` makes
    authentication mandatory for both protocols."""

    def __init__(self, dialer: Dialer, listen: tuple[str, int], *,
                 auth: tuple[str, str] | None = None, connect_timeout: float = 30.0,
                 idle_timeout: float | None = None, handshake_timeout: float = AUTH_DEADLINE_S,
                 gate: PreAuthGate | None = None,
                 on_conn: ConnLog | None = None, log: Callable[[str], None] | None = None,
                 bufsize: int = DEFAULT_BUFSIZE):
        self.dialer = dialer
        self.listen_addr = listen
        self.auth = (auth[0].encode(), auth[1].encode()) if auth else None
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout   # to authenticate and ask (preauth.py)
        self.gate = gate or PreAuthGate()
        self.on_conn = on_conn
        self.log = log or (lambda m: None)
        self.bufsize = bufsize
        self._lsock: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()
        self._conns: set[socket.socket] = set()
        self._relays: set = set()

    @property
    def address(self) -> tuple | None:
        return self._lsock.getsockname()[:2] if self._lsock is not None else None

    async def start(self) -> None:
        host, port = self.listen_addr
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        fam, _t, _p, _c, addr = infos[0]
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(512)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._lsock = s
        self._spawn(self._accept_loop(loop, s))

    async def drain(self, timeout: float) -> int:
        """See relay.drain."""
        return await drain_relays(self._relays, timeout)

    async def close(self) -> None:
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for c in list(self._conns):
            c.close()
        self._conns.clear()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _accept_loop(self, loop, lsock) -> None:
        async for conn, _ in accepted(loop, lsock, "socks", self.log):
            ticket = self.gate.admit(conn)
            if ticket is None:      # over the per-uid cap or into the fd headroom
                conn.close()
                continue
            self._conns.add(conn)
            self._spawn(self._serve(conn, ticket))

    def _report(self, source, label, outcome, up, down, t0) -> None:
        if self.on_conn is not None:
            try:
                self.on_conn(source, label, outcome, up, down, time.monotonic() - t0)
            except Exception:
                pass

    async def _dial(self, host: str, port: int) -> Outbound:
        return await guarded_dial(self.dialer, host, port, self.connect_timeout, self.log)

    async def _serve(self, conn: socket.socket, ticket: Ticket) -> None:
        from . import httpproxy
        t0 = time.monotonic()
        remote = None
        source, label, initial = "socks", "-", b""
        try:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            rd = SockReader(conn)
            try:
                async with asyncio.timeout(self.handshake_timeout) as deadline:
                    def asked() -> None:
                        """Authenticated and asked: the dial has its own timeout."""
                        ticket.release()
                        deadline.reschedule(None)
                    await rd.fill(1)
                    if rd.buf[0] == VER:
                        remote, label = await self._socks_handshake(rd, t0, asked)
                    else:
                        source = "http"
                        remote, label, initial = await httpproxy.handshake(self, rd, t0, asked)
            except (HandshakeEOF, TimeoutError, OSError, ValueError) as exc:
                if remote is not None:
                    remote.close()
                    remote = None
                self.log(f"{source} handshake: {exc or type(exc).__name__}")
                return
            if remote is None:
                await _lingering_close(conn)   # replied with an error already
                return
            if isinstance(remote, UdpAssociation):
                assoc, remote = remote, None
                await self._hold_association(conn, rd, assoc, label, t0)
                return
            if isinstance(remote, httpproxy.Forwarding):   # absolute-URI requests, keep-alive
                fwd, remote = remote, None
                if await fwd.run():
                    await _lingering_close(conn)
                return
            pre = initial + rd.leftover()     # rewritten head + bytes read past it
            self._conns.discard(conn)
            r, remote = remote, None
            up, down, error, reason = await relay_outbound(
                conn, r, idle_timeout=self.idle_timeout, bufsize=self.bufsize, initial_up=pre,
                track=self._relays)
            self._report(source, label, relay_outcome(error, reason), up, down, t0)
        finally:
            ticket.release()
            if remote is not None:
                remote.close()
            self._conns.discard(conn)
            conn.close()

    async def _socks_handshake(self, rd: SockReader, t0, asked: Callable[[], None]):
        """Returns (remote socket, label) or (None, label) after an error reply."""
        try:
            methods = await rd.parse(parse_greeting, MAX_GREETING)
        except SocksError as exc:
            self.log(f"socks: {exc}")
            return None, "-"
        method = choose_method(methods, self.auth is not None)
        await rd.sendall(bytes([VER, method]))
        if method == M_NONE:
            self._report("socks", "-", "auth-required", 0, 0, t0)
            return None, "-"
        if method == M_USERPASS:
            try:
                user, pw = await rd.parse(parse_userpass, MAX_USERPASS)
            except SocksError as exc:
                self.log(f"socks: {exc}")
                await rd.sendall(bytes([AUTH_VER, 1]))
                return None, "-"
            if self.auth is not None and not (hmac.compare_digest(user, self.auth[0])
                                              & hmac.compare_digest(pw, self.auth[1])):
                await rd.sendall(bytes([AUTH_VER, 1]))
                self._report("socks", "-", "auth-failed", 0, 0, t0)
                return None, "-"
            await rd.sendall(bytes([AUTH_VER, 0]))
        try:
            req = await rd.parse(parse_request, MAX_REQUEST)
        except SocksError as exc:
            if exc.reply is not None:
                await rd.sendall(encode_reply(exc.reply))
            self._report("socks", "-", f"bad-request ({exc})", 0, 0, t0)
            return None, "-"
        asked()
        if req.cmd == CMD_UDP:
            return await self._associate(rd, req)
        try:
            remote = await self._dial(req.host, req.port)
        except DialError as exc:
            await rd.sendall(encode_reply(reply_for_errno(exc.errno)))
            self._report("socks", req.label, exc.name, 0, 0, t0)
            return None, req.label
        try:
            await rd.sendall(encode_reply(REP_OK, _bound_address(remote)))
        except BaseException:
            remote.close()
            raise
        return remote, req.label


    async def _associate(self, rd: SockReader, req: Request):
        """UDP ASSOCIATE: open the association's UDP port on the address the client reached
        us at, and reply with it."""
        conn = rd.sock
        client = (conn.getpeername()[0], req.port)
        assoc = UdpAssociation(self.dialer, client, conn.getsockname()[0],
                               timeout=self.connect_timeout, log=self.log)
        try:
            assoc.open()
        except OSError as exc:
            await rd.sendall(encode_reply(REP_FAILURE))
            self.log(f"socks udp: cannot open the association: {exc}")
            return None, "udp"
        try:
            await rd.sendall(encode_reply(REP_OK, assoc.address))
        except BaseException:
            assoc.close()
            raise
        return assoc, f"udp {assoc.address[0]}:{assoc.address[1]}"

    async def _hold_association(self, conn: socket.socket, rd: SockReader,
                                assoc: UdpAssociation, label: str, t0: float) -> None:
        """The association lives as long as its control connection: wait for its end,
        discarding what the client sends on it (bounded by the socket's buffer)."""
        loop = asyncio.get_running_loop()
        reason = "ok"
        try:
            while await loop.sock_recv(conn, 4096):
                pass
        except OSError as exc:
            reason = f"control connection: {exc}"
        finally:
            up, down = assoc.close()
        self._report("socks", label, reason if not assoc.dropped else
                     f"{reason} ({assoc.dropped} datagrams dropped)", up, down, t0)


def _bound_address(remote: Outbound) -> tuple | None:
    """BND.ADDR/BND.PORT for the reply: the outbound connection's local address."""
    if isinstance(remote, socket.socket):
        return remote.getsockname() if remote.family in (socket.AF_INET, socket.AF_INET6) else None
    return remote.local_address

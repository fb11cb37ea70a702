"""Codec of the preload <-> proxy channel (docs/CHANNEL.md). Pure functions.

All integers are in host byte order, fixed sizes, no padding::

    request header (8):  u8 version=1 | u8 op | u16 flags | u32 seq
    reply header   (8):  u8 version=1 | u8 op | u16 reserved | i32 err
    address (20):        u8 family (4|6) | u8 zero | u16 port | u8 addr[16]

Decoding raises :class:`ProtoError` whose ``errno`` is the reply error the
server must send before closing the channel connection: EPROTO (bad
version/op/size), EINVAL (bad field), EBADF (wrong fd count).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

VERSION = 1

OP_CONNECT = 1
OP_STATUS = 2
OP_PEER = 3
OP_RESOLVE = 4      # name service: name -> addresses
OP_REVERSE = 5      # name service: address -> name
OP_QUERY = 6        # name service: raw DNS query -> raw DNS answer
OP_LISTEN = 7
OP_UNLISTEN = 8
OP_UDP = 9          # a UDP association of the program's socket with a destination
OPS = (OP_CONNECT, OP_STATUS, OP_PEER, OP_RESOLVE, OP_REVERSE, OP_QUERY, OP_LISTEN, OP_UNLISTEN,
       OP_UDP)
NAME_OPS = (OP_RESOLVE, OP_REVERSE, OP_QUERY)

FLAG_BLOCKING = 0x0001
FLAG_PARKED = 0x0002       # CONNECT: the preload parked the socket itself; no reply wanted
FLAG_IDN = 0x0001          # RESOLVE: the name may be UTF-8, encode it with IDNA (AI_IDN)
FLAG_SEARCH = 0x0001       # QUERY: apply the resolver's search list (res_search)
FLAG_LISTEN_UDP = 0x0001   # LISTEN: a UDP socket was bound to that port (a UDP server)

# RESOLVE reply flags
RES_PLACEHOLDER = 0x01     # addresses are placeholders for the name
RES_TAILNET = 0x02         # a tailnet name
RES_HOSTS = 0x04           # from /etc/hosts

FAMILY_V4 = 4
FAMILY_V6 = 6

HOST_MAX = 255

_REQ_HDR = struct.Struct("=BBHI")
_REP_HDR = struct.Struct("=BBHi")
_ADDR = struct.Struct("=BBH16s")
_CONNECT_BODY = struct.Struct("=20sIB255s")
_LISTEN_BODY = struct.Struct("=BBHi")         # family 4|6, zero, port, pid
_U64 = struct.Struct("=Q")
_RESOLVE_BODY = struct.Struct("=BBBB255s")    # family 0|4|6, zero, namelen, zero, name
_RESOLVE_REP = struct.Struct("=BBBBHH")       # naddr, flags, canonlen, naliases, aliaslen, zero
_REVERSE_REP = struct.Struct("=BBH")          # namelen, naliases, aliaslen
_QUERY_BODY = struct.Struct("=HH512s")        # len, zero, DNS message
_QUERY_REP = struct.Struct("=HH")             # len, zero; then the message

REQ_HDR_SIZE = _REQ_HDR.size          # 8
REP_HDR_SIZE = _REP_HDR.size          # 8
ADDR_SIZE = _ADDR.size                # 20
CONNECT_REQ_SIZE = REQ_HDR_SIZE + _CONNECT_BODY.size   # 288
STATUS_REQ_SIZE = REQ_HDR_SIZE + _U64.size             # 16
PEER_REQ_SIZE = REQ_HDR_SIZE + ADDR_SIZE               # 28
CONNECT_REP_SIZE = REP_HDR_SIZE + _U64.size            # 16
STATUS_REP_SIZE = REP_HDR_SIZE                         # 8
PEER_REP_SIZE = REP_HDR_SIZE + ADDR_SIZE               # 28
LISTEN_REQ_SIZE = REQ_HDR_SIZE + _LISTEN_BODY.size      # 16
LISTEN_REP_SIZE = REP_HDR_SIZE                          # 8
UDP_REQ_SIZE = REQ_HDR_SIZE + 2 * ADDR_SIZE             # 48: destination, program's address
UDP_REP_SIZE = REP_HDR_SIZE + ADDR_SIZE                 # 28: the endpoint (family 0: direct)

NAME_MAX = 255             # a name on the channel (no NUL)
RESOLVE_MAX_ADDRS = 16
CANON_FIELD = 256          # canonical/reverse name field (NUL-terminated)
ALIASES_FIELD = 512        # aliases: each NUL-terminated, packed
QUERY_MAX = 512            # a DNS query
ANSWER_MAX = 4096          # a DNS answer
RESOLVE_REQ_SIZE = REQ_HDR_SIZE + _RESOLVE_BODY.size    # 267
RESOLVE_REP_SIZE = (REP_HDR_SIZE + _RESOLVE_REP.size + RESOLVE_MAX_ADDRS * ADDR_SIZE
                    + CANON_FIELD + ALIASES_FIELD)       # 1104
REVERSE_REQ_SIZE = REQ_HDR_SIZE + ADDR_SIZE              # 28
REVERSE_REP_SIZE = REP_HDR_SIZE + _REVERSE_REP.size + CANON_FIELD + ALIASES_FIELD   # 780
QUERY_REQ_SIZE = REQ_HDR_SIZE + _QUERY_BODY.size         # 524
QUERY_REP_MIN = REP_HDR_SIZE + _QUERY_REP.size           # 12, + the answer (variable)

REQ_SIZES = {OP_CONNECT: CONNECT_REQ_SIZE, OP_STATUS: STATUS_REQ_SIZE, OP_PEER: PEER_REQ_SIZE,
             OP_RESOLVE: RESOLVE_REQ_SIZE, OP_REVERSE: REVERSE_REQ_SIZE,
             OP_QUERY: QUERY_REQ_SIZE,
             OP_LISTEN: LISTEN_REQ_SIZE, OP_UNLISTEN: LISTEN_REQ_SIZE, OP_UDP: UDP_REQ_SIZE}
MAX_REQ_SIZE = max(REQ_SIZES.values())

assert (CONNECT_REQ_SIZE, CONNECT_REP_SIZE) == (288, 16)
assert (RESOLVE_REQ_SIZE, RESOLVE_REP_SIZE, REVERSE_REP_SIZE, QUERY_REQ_SIZE) == (267, 1104, 780, 524)


class ProtoError(Exception):
    """Malformed request; ``errno`` goes into the error reply, ``op`` is the
    request's op if it could be read (else 0)."""

    def __init__(self, err: int, message: str, op: int = 0):
        super().__init__(message)
        self.errno = err
        self.op = op


@dataclass(frozen=True, slots=True)
class Address:
    """An IP endpoint. ``ip`` is the canonical text form (IPv4 dotted or
    IPv6 compressed); ``family`` is 4 or 6."""

    family: int
    ip: str
    port: int

    def sockaddr(self) -> tuple:
        return (self.ip, self.port) if self.family == FAMILY_V4 else (self.ip, self.port, 0, 0)

    @property
    def af(self) -> int:
        return socket.AF_INET if self.family == FAMILY_V4 else socket.AF_INET6

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}" if self.family == FAMILY_V4 else f"[{self.ip}]:{self.port}"

    @classmethod
    def from_sockaddr(cls, sa: tuple) -> "Address":
        """From a Python AF_INET/AF_INET6 sockaddr tuple; IPv4-mapped IPv6
        addresses are normalised to IPv4 (one key for both views)."""
        if len(sa) == 2:        # AF_INET: already canonical, as the kernel printed it
            return cls(FAMILY_V4, sa[0], int(sa[1]))
        ip = ipaddress.ip_address(sa[0].split("%", 1)[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return cls(ip.version, str(ip), int(sa[1]))

    def normalized(self) -> "Address":
        if self.family == FAMILY_V6:
            ip = ipaddress.IPv6Address(self.ip)
            if ip.ipv4_mapped is not None:
                return Address(FAMILY_V4, str(ip.ipv4_mapped), self.port)
        return self


@dataclass(frozen=True, slots=True)
class ConnectReq:
    seq: int
    flags: int
    dst: Address
    timeout_ms: int
    host: str          # "" when absent

    @property
    def blocking(self) -> bool:
        return bool(self.flags & FLAG_BLOCKING)


@dataclass(frozen=True, slots=True)
class StatusReq:
    seq: int
    flags: int
    token: int


@dataclass(frozen=True, slots=True)
class PeerReq:
    seq: int
    flags: int
    local: Address


@dataclass(frozen=True, slots=True)
class ListenReq:
    """A socket of the program started (LISTEN) or may have stopped (UNLISTEN) listening."""
    seq: int
    flags: int
    op: int
    family: int
    port: int
    pid: int


@dataclass(frozen=True, slots=True)
class ResolveReq:
    """Name -> addresses. ``family`` 0 (any), 4 or 6; ``name`` as bytes (maybe UTF-8)."""
    seq: int
    flags: int
    family: int
    name: bytes

    @property
    def idn(self) -> bool:
        return bool(self.flags & FLAG_IDN)


@dataclass(frozen=True, slots=True)
class ReverseReq:
    """Address -> name (port ignored)."""
    seq: int
    flags: int
    addr: Address


@dataclass(frozen=True, slots=True)
class QueryReq:
    """A raw DNS query (res_query & co., UDP port 53) to be answered."""
    seq: int
    flags: int
    msg: bytes

    @property
    def search(self) -> bool:
        return bool(self.flags & FLAG_SEARCH)


@dataclass(frozen=True, slots=True)
class UdpReq:
    """The program's UDP socket, sending from ``local`` (the address datagrams to a loopback
    endpoint will come from), wants to reach ``dst``."""
    seq: int
    flags: int
    dst: Address
    local: Address


Request = (ConnectReq | StatusReq | PeerReq | ListenReq | ResolveReq | ReverseReq | QueryReq
           | UdpReq)
NameRequest = ResolveReq | ReverseReq | QueryReq


# ---------------------------------------------------------------- addresses

def encode_address(addr: Address) -> bytes:
    if addr.family == FAMILY_V4:
        raw = ipaddress.IPv4Address(addr.ip).packed + bytes(12)
    elif addr.family == FAMILY_V6:
        raw = ipaddress.IPv6Address(addr.ip).packed
    else:
        raise ValueError(f"bad family {addr.family}")
    if not 0 <= addr.port <= 0xFFFF:
        raise ValueError(f"bad port {addr.port}")
    return _ADDR.pack(addr.family, 0, addr.port, raw)


def decode_address(data: bytes, op: int = 0) -> Address:
    if len(data) != ADDR_SIZE:
        raise ProtoError(errno.EPROTO, f"address is {len(data)} bytes, want {ADDR_SIZE}", op)
    family, zero, port, raw = _ADDR.unpack(data)
    if zero != 0:
        raise ProtoError(errno.EINVAL, "address: nonzero pad byte", op)
    if family == FAMILY_V4:
        return Address(FAMILY_V4, socket.inet_ntop(socket.AF_INET, raw[:4]), port)
    if family == FAMILY_V6:
        return Address(FAMILY_V6, str(ipaddress.IPv6Address(raw)), port)
    raise ProtoError(errno.EINVAL, f"address: bad family {family}", op)


# ---------------------------------------------------------------- requests

def decode_request(data: bytes, nfds: int = 0) -> Request:
    """Decode one request message; ``nfds`` is the number of fds that came
    with it (SCM_RIGHTS). Raises ProtoError."""
    if len(data) < REQ_HDR_SIZE:
        raise ProtoError(errno.EPROTO, f"short message ({len(data)} bytes)")
    version, op, flags, seq = _REQ_HDR.unpack_from(data)
    if version != VERSION:
        raise ProtoError(errno.EPROTO, f"unsupported version {version}", op if op in OPS else 0)
    if op not in REQ_SIZES:
        raise ProtoError(errno.EPROTO, f"unknown op {op}")
    if len(data) != REQ_SIZES[op]:
        raise ProtoError(errno.EPROTO, f"op {op}: {len(data)} bytes, want {REQ_SIZES[op]}", op)
    want_fds = 1 if op == OP_CONNECT else 0
    if nfds != want_fds:
        raise ProtoError(errno.EBADF, f"op {op}: {nfds} fds, want {want_fds}", op)
    body = memoryview(data)[REQ_HDR_SIZE:]
    if op == OP_CONNECT:
        raw_dst, timeout_ms, hostlen, raw_host = _CONNECT_BODY.unpack(body)
        dst = decode_address(raw_dst, op)
        if dst.port == 0:
            raise ProtoError(errno.EINVAL, "connect: port 0", op)
        host = ""
        if hostlen:
            hb = raw_host[:hostlen]
            if b"\0" in hb:
                raise ProtoError(errno.EINVAL, "connect: NUL in host", op)
            try:
                host = hb.decode("ascii")
            except UnicodeDecodeError:
                raise ProtoError(errno.EINVAL, "connect: host is not ASCII", op) from None
            if not host.strip() or any(c.isspace() for c in host):
                raise ProtoError(errno.EINVAL, "connect: bad host", op)
        return ConnectReq(seq, flags, dst, timeout_ms, host)
    if op == OP_STATUS:
        (token,) = _U64.unpack(body)
        return StatusReq(seq, flags, token)
    if op in (OP_LISTEN, OP_UNLISTEN):
        family, zero, port, pid = _LISTEN_BODY.unpack(body)
        if family not in (FAMILY_V4, FAMILY_V6) or zero or not port:
            raise ProtoError(errno.EINVAL, f"listen notice: family {family}, port {port}", op)
        return ListenReq(seq, flags, op, family, port, pid)
    if op == OP_RESOLVE:
        family, _z, namelen, _z2, raw = _RESOLVE_BODY.unpack(body)
        if family not in (0, FAMILY_V4, FAMILY_V6):
            raise ProtoError(errno.EINVAL, f"resolve: bad family {family}", op)
        name = raw[:namelen]
        if not namelen or b"\0" in name:
            raise ProtoError(errno.EINVAL, "resolve: empty name or NUL in name", op)
        return ResolveReq(seq, flags, family, bytes(name))
    if op == OP_REVERSE:
        return ReverseReq(seq, flags, decode_address(bytes(body), op))
    if op == OP_QUERY:
        n, _z, raw = _QUERY_BODY.unpack(body)
        if not 12 <= n <= QUERY_MAX:
            raise ProtoError(errno.EINVAL, f"query: bad length {n}", op)
        return QueryReq(seq, flags, bytes(raw[:n]))
    if op == OP_UDP:
        dst = decode_address(bytes(body[:ADDR_SIZE]), op)
        local = decode_address(bytes(body[ADDR_SIZE:]), op)
        if not dst.port or not local.port:
            raise ProtoError(errno.EINVAL, "udp: port 0", op)
        return UdpReq(seq, flags, dst, local)
    return PeerReq(seq, flags, decode_address(bytes(body), op))


def encode_connect(dst: Address, *, seq: int = 0, blocking: bool = False,
                   timeout_ms: int = 0, host: str = "") -> bytes:
    hb = host.encode("ascii")
    if len(hb) > HOST_MAX:
        raise ValueError("host too long")
    return (_REQ_HDR.pack(VERSION, OP_CONNECT, FLAG_BLOCKING if blocking else 0, seq)
            + _CONNECT_BODY.pack(encode_address(dst), timeout_ms, len(hb), hb))


def encode_udp(dst: Address, local: Address, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, OP_UDP, 0, seq) + encode_address(dst) + encode_address(local)


def encode_status(token: int, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, OP_STATUS, 0, seq) + _U64.pack(token)


def encode_peer(local: Address, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, OP_PEER, 0, seq) + encode_address(local)


def encode_listen(op: int, family: int, port: int, pid: int, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, op, 0, seq) + _LISTEN_BODY.pack(family, 0, port, pid)


def encode_resolve(name: bytes | str, family: int = 0, *, seq: int = 0, idn: bool = False) -> bytes:
    nb = name.encode() if isinstance(name, str) else name
    if not 0 < len(nb) <= NAME_MAX:
        raise ValueError("bad name length")
    return (_REQ_HDR.pack(VERSION, OP_RESOLVE, FLAG_IDN if idn else 0, seq)
            + _RESOLVE_BODY.pack(family, 0, len(nb), 0, nb))


def encode_reverse(addr: Address, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, OP_REVERSE, 0, seq) + encode_address(addr)


def encode_query(msg: bytes, *, seq: int = 0, search: bool = False) -> bytes:
    if not 12 <= len(msg) <= QUERY_MAX:
        raise ValueError("bad query length")
    return (_REQ_HDR.pack(VERSION, OP_QUERY, FLAG_SEARCH if search else 0, seq)
            + _QUERY_BODY.pack(len(msg), 0, msg))


# ---------------------------------------------------------------- replies

def encode_reply_header(op: int, err: int) -> bytes:
    return _REP_HDR.pack(VERSION, op, 0, err)


def encode_connect_reply(err: int, token: int = 0) -> bytes:
    return _REP_HDR.pack(VERSION, OP_CONNECT, 0, err) + _U64.pack(token)


def encode_status_reply(err: int) -> bytes:
    return _REP_HDR.pack(VERSION, OP_STATUS, 0, err)


def encode_peer_reply(err: int, dst: Address | None = None) -> bytes:
    body = encode_address(dst) if dst is not None else bytes(ADDR_SIZE)
    return _REP_HDR.pack(VERSION, OP_PEER, 0, err) + body


def encode_udp_reply(err: int, endpoint: Address | None = None) -> bytes:
    """UDP reply: the loopback endpoint to send to, or none (all zero: send directly)."""
    body = encode_address(endpoint) if endpoint is not None and err == 0 else bytes(ADDR_SIZE)
    return _REP_HDR.pack(VERSION, OP_UDP, 0, err) + body


def _names_field(names: list[str], size: int) -> tuple[int, bytes]:
    """(count, packed NUL-terminated names) fitting in ``size`` bytes; the rest is dropped."""
    out, n = b"", 0
    for a in names:
        ab = a.encode("utf-8", "replace")[:NAME_MAX] + b"\0"
        if len(out) + len(ab) > size or n == 255:
            break
        out += ab
        n += 1
    return n, out


def encode_resolve_reply(err: int, addrs: list[str] = (), *, flags: int = 0, canon: str = "",
                         aliases: list[str] = ()) -> bytes:
    """RESOLVE reply: addresses as text (at most RESOLVE_MAX_ADDRS kept)."""
    addrs = list(addrs)[:RESOLVE_MAX_ADDRS] if err == 0 else []
    raw = b"".join(encode_address(Address(6 if ":" in a else 4, a, 0)) for a in addrs)
    cb = canon.encode("utf-8", "replace")[:CANON_FIELD - 1]
    nal, al = _names_field(list(aliases), ALIASES_FIELD)
    return (_REP_HDR.pack(VERSION, OP_RESOLVE, 0, err)
            + _RESOLVE_REP.pack(len(addrs), flags, len(cb), nal, len(al), 0)
            + raw.ljust(RESOLVE_MAX_ADDRS * ADDR_SIZE, b"\0")
            + cb.ljust(CANON_FIELD, b"\0") + al.ljust(ALIASES_FIELD, b"\0"))


def encode_reverse_reply(err: int, name: str = "", aliases: list[str] = ()) -> bytes:
    nb = name.encode("utf-8", "replace")[:CANON_FIELD - 1] if err == 0 else b""
    nal, al = _names_field(list(aliases), ALIASES_FIELD) if err == 0 else (0, b"")
    return (_REP_HDR.pack(VERSION, OP_REVERSE, 0, err) + _REVERSE_REP.pack(len(nb), nal, len(al))
            + nb.ljust(CANON_FIELD, b"\0") + al.ljust(ALIASES_FIELD, b"\0"))


def encode_query_reply(err: int, answer: bytes = b"") -> bytes:
    if len(answer) > ANSWER_MAX:
        raise ValueError("answer too long")
    return _REP_HDR.pack(VERSION, OP_QUERY, 0, err) + _QUERY_REP.pack(len(answer), 0) + answer


def encode_error_reply(op: int, err: int) -> bytes:
    """Error reply of the size the op's reply has (header only if op unknown)."""
    if op == OP_CONNECT:
        return encode_connect_reply(err, 0)
    if op == OP_PEER:
        return encode_peer_reply(err)
    if op == OP_RESOLVE:
        return encode_resolve_reply(err)
    if op == OP_REVERSE:
        return encode_reverse_reply(err)
    if op == OP_QUERY:
        return encode_query_reply(err)
    if op == OP_UDP:
        return encode_udp_reply(err)
    return encode_reply_header(op, err)


@dataclass(frozen=True, slots=True)
class Reply:
    op: int
    err: int
    token: int | None = None
    dst: Address | None = None
    addrs: tuple = ()          # RESOLVE: addresses (text)
    flags: int = 0             # RESOLVE: RES_* flags
    name: str | None = None    # RESOLVE: canonical name; REVERSE: the name
    aliases: tuple = ()        # RESOLVE/REVERSE
    answer: bytes | None = None  # QUERY


def _split_names(raw: bytes, count: int) -> tuple:
    parts = raw.split(b"\0")
    return tuple(p.decode("utf-8", "replace") for p in parts[:count])


def decode_reply(data: bytes) -> Reply:
    """For tests and tools (the C side has its own)."""
    if len(data) < REP_HDR_SIZE:
        raise ProtoError(errno.EPROTO, "short reply")
    version, op, _res, err = _REP_HDR.unpack_from(data)
    if version != VERSION:
        raise ProtoError(errno.EPROTO, f"unsupported version {version}")
    body = data[REP_HDR_SIZE:]
    if op == OP_CONNECT and len(body) == 8:
        return Reply(op, err, token=_U64.unpack(body)[0])
    if op == OP_PEER and len(body) == ADDR_SIZE:
        return Reply(op, err, dst=decode_address(body) if err == 0 else None)
    if op == OP_RESOLVE and len(data) == RESOLVE_REP_SIZE:
        naddr, flags, clen, nal, alen, _z = _RESOLVE_REP.unpack_from(body)
        off = _RESOLVE_REP.size
        addrs = tuple(decode_address(body[off + i * ADDR_SIZE: off + (i + 1) * ADDR_SIZE]).ip
                      for i in range(naddr))
        off += RESOLVE_MAX_ADDRS * ADDR_SIZE
        canon = body[off:off + clen].decode("utf-8", "replace")
        off += CANON_FIELD
        return Reply(op, err, addrs=addrs, flags=flags, name=canon,
                     aliases=_split_names(body[off:off + alen], nal))
    if op == OP_REVERSE and len(data) == REVERSE_REP_SIZE:
        nlen, nal, alen = _REVERSE_REP.unpack_from(body)
        off = _REVERSE_REP.size
        name = body[off:off + nlen].decode("utf-8", "replace") if err == 0 else None
        off += CANON_FIELD
        return Reply(op, err, name=name, aliases=_split_names(body[off:off + alen], nal))
    if op == OP_QUERY and len(data) >= QUERY_REP_MIN:
        n, _z = _QUERY_REP.unpack_from(body)
        ans = body[_QUERY_REP.size:]
        if len(ans) != n:
            raise ProtoError(errno.EPROTO, "query reply: bad length")
        return Reply(op, err, answer=ans)
    if not body:
        return Reply(op, err)
    raise ProtoError(errno.EPROTO, f"reply op {op}: bad size {len(data)}")

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
# 4-6: name service (RESOLVE, REVERSE, QUERY)
OP_LISTEN = 7
OP_UNLISTEN = 8
OPS = (OP_CONNECT, OP_STATUS, OP_PEER, OP_LISTEN, OP_UNLISTEN)

FLAG_BLOCKING = 0x0001

FAMILY_V4 = 4
FAMILY_V6 = 6

HOST_MAX = 255

_REQ_HDR = struct.Struct("=BBHI")
_REP_HDR = struct.Struct("=BBHi")
_ADDR = struct.Struct("=BBH16s")
_CONNECT_BODY = struct.Struct("=20sIB255s")
_LISTEN_BODY = struct.Struct("=BBHi")         # family 4|6, zero, port, pid
_U64 = struct.Struct("=Q")

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

REQ_SIZES = {OP_CONNECT: CONNECT_REQ_SIZE, OP_STATUS: STATUS_REQ_SIZE, OP_PEER: PEER_REQ_SIZE,
             OP_LISTEN: LISTEN_REQ_SIZE, OP_UNLISTEN: LISTEN_REQ_SIZE}
MAX_REQ_SIZE = max(REQ_SIZES.values())

assert (CONNECT_REQ_SIZE, CONNECT_REP_SIZE) == (288, 16)


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


Request = ConnectReq | StatusReq | PeerReq | ListenReq


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
        return Address(FAMILY_V4, str(ipaddress.IPv4Address(raw[:4])), port)
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
    return PeerReq(seq, flags, decode_address(bytes(body), op))


def encode_connect(dst: Address, *, seq: int = 0, blocking: bool = False,
                   timeout_ms: int = 0, host: str = "") -> bytes:
    hb = host.encode("ascii")
    if len(hb) > HOST_MAX:
        raise ValueError("host too long")
    return (_REQ_HDR.pack(VERSION, OP_CONNECT, FLAG_BLOCKING if blocking else 0, seq)
            + _CONNECT_BODY.pack(encode_address(dst), timeout_ms, len(hb), hb))


def encode_status(token: int, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, OP_STATUS, 0, seq) + _U64.pack(token)


def encode_peer(local: Address, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, OP_PEER, 0, seq) + encode_address(local)


def encode_listen(op: int, family: int, port: int, pid: int, *, seq: int = 0) -> bytes:
    return _REQ_HDR.pack(VERSION, op, 0, seq) + _LISTEN_BODY.pack(family, 0, port, pid)


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


def encode_error_reply(op: int, err: int) -> bytes:
    """Error reply of the size the op's reply has (header only if op unknown)."""
    if op == OP_CONNECT:
        return encode_connect_reply(err, 0)
    if op == OP_PEER:
        return encode_peer_reply(err)
    return encode_reply_header(op, err)


@dataclass(frozen=True, slots=True)
class Reply:
    op: int
    err: int
    token: int | None = None
    dst: Address | None = None


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
    if not body:
        return Reply(op, err)
    raise ProtoError(errno.EPROTO, f"reply op {op}: bad size {len(data)}")

"""PROXY protocol v2 (haproxy spec), TCP over IPv4/IPv6 only: encode and decode the header."""
from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_CMD_LOCAL, _CMD_PROXY = 0x20, 0x21
_TCP4, _TCP6 = 0x11, 0x21
MAX_HEADER = 16 + 0xFFFF


class ProxyProtocolError(ValueError):
    pass


def encode(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version != d.version:
        if s.version == 4:
            s = ipaddress.IPv6Address(f"::ffff:{s}")
        else:
            d = ipaddress.IPv6Address(f"::ffff:{d}")
    fam = _TCP4 if s.version == 4 else _TCP6
    body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    return SIGNATURE + struct.pack("!BBH", _CMD_PROXY, fam, len(body)) + body


def header_length(prefix: bytes) -> int | None:
    """Total header length once 16 bytes are known; None while fewer are."""
    if len(prefix) < 16:
        if not SIGNATURE.startswith(bytes(prefix[:12])):
            raise ProxyProtocolError("not a PROXY protocol v2 header")
        return None
    if bytes(prefix[:12]) != SIGNATURE:
        raise ProxyProtocolError("not a PROXY protocol v2 header")
    return 16 + struct.unpack("!H", prefix[14:16])[0]


def decode(header: bytes) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(source, destination) of a complete header; None for LOCAL or non-TCP headers."""
    n = header_length(header)
    if n is None or len(header) < n:
        raise ProxyProtocolError("truncated PROXY protocol header")
    ver_cmd, fam = header[12], header[13]
    if ver_cmd >> 4 != 2 or ver_cmd not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"bad PROXY protocol version/command {ver_cmd:#x}")
    if ver_cmd == _CMD_LOCAL:
        return None
    body = header[16:n]
    if fam == _TCP4 and len(body) >= 12:
        s, d, sp, dp = body[0:4], body[4:8], *struct.unpack("!HH", body[8:12])
    elif fam == _TCP6 and len(body) >= 36:
        s, d, sp, dp = body[0:16], body[16:32], *struct.unpack("!HH", body[32:36])
    else:
        return None
    return (str(ipaddress.ip_address(bytes(s))), sp), (str(ipaddress.ip_address(bytes(d))), dp)

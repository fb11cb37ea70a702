"""DNS wire format (RFC 1035), only what the name service needs: read a query's question, build
answers (A, AAAA, PTR, CNAME), build queries, read answers. Pure functions, no I/O."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

_HDR = struct.Struct("!HHHHHH")
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080


class DNSFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str          # as written, without the trailing dot ("" = root)
    qtype: int
    qclass: int
    question: bytes    # the question section as received (echoed in the answer)
    edns_size: int     # 0: no OPT record (512-byte UDP answers)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def key(self) -> str:
        return self.name.lower()


def encode_name(name: str) -> bytes:
    name = name.rstrip(".")
    out = b""
    if name:
        for label in name.split("."):
            lb = label.encode("utf-8", "surrogateescape") if not isinstance(label, bytes) else label
            if not 0 < len(lb) < 64:
                raise ValueError(f"bad label in {name!r}")
            out += bytes([len(lb)]) + lb
    if len(out) + 1 > 255:
        raise ValueError("name too long")
    return out + b"\0"


def decode_name(buf: bytes, off: int) -> tuple[str, int]:
    """(name, offset after it); follows compression pointers."""
    labels, end, jumps = [], None, 0
    while True:
        if off >= len(buf):
            raise DNSFormatError("name runs past the end")
        n = buf[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(buf):
                raise DNSFormatError("truncated pointer")
            if end is None:
                end = off + 2
            jumps += 1
            if jumps > 64:
                raise DNSFormatError("pointer loop")
            off = ((n & 0x3F) << 8) | buf[off + 1]
            continue
        if n & 0xC0:
            raise DNSFormatError("bad label type")
        if n == 0:
            return ".".join(labels), (end if end is not None else off + 1)
        if off + 1 + n > len(buf):
            raise DNSFormatError("label runs past the end")
        labels.append(buf[off + 1:off + 1 + n].decode("utf-8", "surrogateescape"))
        off += 1 + n


def _skip_rr(buf: bytes, off: int) -> tuple[int, int, int, int]:
    """(offset after the RR, type, class, rdata offset)."""
    _, off = decode_name(buf, off)
    if off + 10 > len(buf):
        raise DNSFormatError("truncated record")
    rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
    if off + 10 + rdlen > len(buf):
        raise DNSFormatError("truncated rdata")
    return off + 10 + rdlen, rtype, rclass, off + 10


def parse_query(buf: bytes) -> Query:
    if len(buf) < 12:
        raise DNSFormatError("short message")
    qid, flags, qd, an, ns, ar = _HDR.unpack_from(buf)
    if flags & QR:
        raise DNSFormatError("a response, not a query")
    if qd != 1:
        raise DNSFormatError(f"{qd} questions")
    name, off = decode_name(buf, 12)
    if off + 4 > len(buf):
        raise DNSFormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", buf, off)
    question = buf[12:off + 4]
    edns = 0
    p = off + 4
    try:
        for _ in range(an + ns):
            p, *_r = _skip_rr(buf, p)
        for _ in range(ar):
            p, rtype, rclass, _rd = _skip_rr(buf, p)
            if rtype == OPT:
                edns = max(512, rclass)
    except DNSFormatError:
        pass
    return Query(qid, flags, name, qtype, qclass, question, edns)


def build_query(name: str, qtype: int, qid: int = 0, rd: bool = True) -> bytes:
    return _HDR.pack(qid, RD if rd else 0, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def rdata_for(rtype: int, value: str) -> bytes:
    if rtype == A:
        return ipaddress.IPv4Address(value).packed
    if rtype == AAAA:
        return ipaddress.IPv6Address(value).packed
    if rtype in (PTR, CNAME):
        return encode_name(value)
    raise ValueError(f"no rdata builder for type {rtype}")


def build_answer(q: Query, rcode: int = NOERROR, answers: list[tuple[str | None, int, int, str]] = (),
                 aa: bool = False) -> bytes:
    """answers: (owner name or None for the question's name, type, ttl, value)."""
    flags = QR | (q.flags & (0x7800 | RD)) | RA | (AA if aa else 0) | (rcode & 0xF)
    out = _HDR.pack(q.id, flags, 1, len(answers), 0, 0) + q.question
    for owner, rtype, ttl, value in answers:
        rd = rdata_for(rtype, value)
        on = b"\xc0\x0c" if owner is None else encode_name(owner)
        out += on + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rd)) + rd
    return out


def error_answer(buf: bytes, rcode: int) -> bytes:
    """An error answer to a message we could not parse (header + question if readable)."""
    if len(buf) < 12:
        return b""
    qid, flags = struct.unpack_from("!HH", buf)
    try:
        q = parse_query(buf)
        return build_answer(q, rcode)
    except DNSFormatError:
        return _HDR.pack(qid, QR | (flags & (0x7800 | RD)) | RA | (rcode & 0xF), 0, 0, 0, 0)


def with_id(answer: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + answer[2:] if len(answer) >= 12 else answer


def truncate(answer: bytes, limit: int) -> bytes:
    """Fit a UDP answer in `limit` bytes: header and question only, TC set."""
    if len(answer) <= limit:
        return answer
    qid, flags, qd, *_ = _HDR.unpack_from(answer)
    off = 12
    try:
        for _ in range(qd):
            _, off = decode_name(answer, off)
            off += 4
    except DNSFormatError:
        off = 12
        qd = 0
    return _HDR.pack(qid, flags | TC, qd, 0, 0, 0) + answer[12:off]


@dataclass
class Answer:
    id: int
    rcode: int
    records: list[tuple[str, int, int, object]]   # (owner, type, ttl, value: str | bytes)

    def values(self, rtype: int) -> list:
        return [v for _o, t, _ttl, v in self.records if t == rtype]


def parse_answer(buf: bytes) -> Answer:
    if len(buf) < 12:
        raise DNSFormatError("short message")
    qid, flags, qd, an, _ns, _ar = _HDR.unpack_from(buf)
    off = 12
    for _ in range(qd):
        _, off = decode_name(buf, off)
        off += 4
    recs = []
    for _ in range(an):
        owner, p = decode_name(buf, off)
        end, rtype, _rc, rdo = _skip_rr(buf, off)
        ttl = struct.unpack_from("!I", buf, p + 4)[0]
        rd = buf[rdo:end]
        if rtype == A and len(rd) == 4:
            val: object = str(ipaddress.IPv4Address(rd))
        elif rtype == AAAA and len(rd) == 16:
            val = str(ipaddress.IPv6Address(rd))
        elif rtype in (PTR, CNAME, NS):
            val = decode_name(buf, rdo)[0]
        else:
            val = rd
        recs.append((owner, rtype, ttl, val))
        off = end
    return Answer(qid, flags & 0xF, recs)


def ptr_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def ip_of_ptr(name: str) -> str | None:
    """"4.3.2.1.in-addr.arpa" -> "1.2.3.4"; nibble form for ip6.arpa; None if not an address."""
    n = name.lower().rstrip(".")
    try:
        if n.endswith(".in-addr.arpa"):
            parts = n[:-len(".in-addr.arpa")].split(".")
            if len(parts) != 4:
                return None
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        if n.endswith(".ip6.arpa"):
            nib = n[:-len(".ip6.arpa")].split(".")
            if len(nib) != 32 or any(len(x) != 1 for x in nib):
                return None
            return str(ipaddress.IPv6Address(int("".join(reversed(nib)), 16)))
    except ValueError:
        return None
    return None

"""Minimal DNS wire format (RFC 1035) for the testnet's DNS servers.

Only what the two test servers need: parse a query's header and question, and build
responses with A/AAAA/SOA records. Pure functions, no I/O, so they are unit tested.
Kept apart from tailproxy.resolver.dnsmsg on purpose: the test servers judge what the name
service sends, so they must not share its codec (a shared bug would cancel out).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
          28: "AAAA", 33: "SRV", 41: "OPT", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
QTYPE_NUM = {v: k for k, v in QTYPES.items()}
CLASS_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

_HEADER = struct.Struct("!HHHHHH")


class DNSFormatError(ValueError):
    pass


def qtype_name(qtype: int) -> str:
    return QTYPES.get(qtype, f"TYPE{qtype}")


@dataclass
class Question:
    name: str  # lower-case, no trailing dot ("" is the root)
    qtype: int
    qclass: int = CLASS_IN


@dataclass
class Message:
    id: int
    flags: int
    questions: list[Question] = field(default_factory=list)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)


def normalize(name: str) -> str:
    return name.rstrip(".").lower()


def decode_name(buf: bytes, off: int) -> tuple[str, int]:
    """Decode a possibly compressed name at off; returns (name, offset after it)."""
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        if off >= len(buf):
            raise DNSFormatError("name runs past end of message")
        n = buf[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(buf):
                raise DNSFormatError("truncated compression pointer")
            if end is None:
                end = off + 2
            jumps += 1
            if jumps > 64:  # pointer loop
                raise DNSFormatError("compression loop")
            off = ((n & 0x3F) << 8) | buf[off + 1]
            continue
        if n & 0xC0:
            raise DNSFormatError("bad label type")
        off += 1
        if n == 0:
            break
        if off + n > len(buf):
            raise DNSFormatError("label runs past end of message")
        labels.append(buf[off:off + n].decode("ascii", "backslashreplace"))
        off += n
    name = ".".join(labels)
    if len(name) > 253:
        raise DNSFormatError("name too long")
    return name, (end if end is not None else off)


def encode_name(name: str) -> bytes:
    out = bytearray()
    name = name.rstrip(".")
    if name:
        for label in name.split("."):
            raw = label.encode("ascii")
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad label in {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def parse_message(data: bytes) -> Message:
    """Parse header and question section; other sections are ignored."""
    if len(data) < _HEADER.size:
        raise DNSFormatError("short message")
    mid, flags, qd, _an, _ns, _ar = _HEADER.unpack_from(data)
    off = _HEADER.size
    questions = []
    for _ in range(qd):
        name, off = decode_name(data, off)
        if off + 4 > len(data):
            raise DNSFormatError("truncated question")
        qtype, qclass = struct.unpack_from("!HH", data, off)
        off += 4
        questions.append(Question(normalize(name), qtype, qclass))
    return Message(mid, flags, questions)


def encode_query(name: str, qtype: int | str = "A", mid: int = 0x1234, rd: bool = True) -> bytes:
    if isinstance(qtype, str):
        qtype = QTYPE_NUM[qtype.upper()]
    flags = 0x0100 if rd else 0
    return _HEADER.pack(mid, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


@dataclass
class RR:
    name: str
    rtype: int
    ttl: int
    rdata: bytes


def a_rdata(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def aaaa_rdata(addr: str) -> bytes:
    return ipaddress.IPv6Address(addr).packed


def soa_rdata(mname: str, rname: str, serial: int = 1, refresh: int = 3600, retry: int = 600,
              expire: int = 86400, minimum: int = 60) -> bytes:
    return encode_name(mname) + encode_name(rname) + struct.pack(
        "!IIIII", serial, refresh, retry, expire, minimum)


def build_response(query: Message, rcode: int, answers: list[RR] = (), authority: list[RR] = (),
                   aa: bool = False) -> bytes:
    """Response echoing the query's id, opcode, RD and question (names uncompressed)."""
    flags = 0x8000 | (query.flags & 0x7800) | (query.flags & 0x0100) | (rcode & 0xF)
    if aa:
        flags |= 0x0400
    out = bytearray(_HEADER.pack(query.id, flags, len(query.questions), len(answers),
                                 len(authority), 0))
    for q in query.questions:
        out += encode_name(q.name) + struct.pack("!HH", q.qtype, q.qclass)
    for rr in list(answers) + list(authority):
        out += encode_name(rr.name) + struct.pack("!HHIH", rr.rtype, CLASS_IN, rr.ttl, len(rr.rdata))
        out += rr.rdata
    return bytes(out)


def header_only_error(data: bytes, rcode: int) -> bytes | None:
    """An error reply for a message whose question could not be parsed (None if no header)."""
    if len(data) < _HEADER.size:
        return None
    mid, flags = struct.unpack_from("!HH", data)
    if flags & 0x8000:
        return None
    return build_response(Message(mid, flags), rcode)


@dataclass
class Zone:
    """An authoritative zone: records maps lower-case name -> {qtype: [rdata]}."""
    origin: str
    records: dict[str, dict[int, list[bytes]]]
    ttl: int = 60

    def soa(self) -> RR:
        return RR(self.origin, 6, self.ttl, soa_rdata(f"ns.{self.origin}", f"hostmaster.{self.origin}",
                                                      minimum=self.ttl))

    def contains(self, name: str) -> bool:
        return name == self.origin or name.endswith("." + self.origin)

    def answer(self, query: Message) -> bytes:
        if query.opcode != 0:
            return build_response(query, NOTIMP)
        if len(query.questions) != 1:
            return build_response(query, FORMERR)
        q = query.questions[0]
        if q.qclass != CLASS_IN or not self.contains(q.name):
            return build_response(query, REFUSED)
        node = self.records.get(q.name)
        if q.name == self.origin:
            node = dict(node or {})
            node.setdefault(6, [self.soa().rdata])
        if node is None:
            return build_response(query, NXDOMAIN, authority=[self.soa()], aa=True)
        types = list(node) if q.qtype == 255 else [q.qtype]
        answers = [RR(q.name, t, self.ttl, rd) for t in types for rd in node.get(t, [])]
        if not answers:  # NODATA
            return build_response(query, NOERROR, authority=[self.soa()], aa=True)
        return build_response(query, NOERROR, answers=answers, aa=True)


def make_zone(origin: str, a: dict[str, str] | None = None, aaaa: dict[str, str] | None = None,
              ttl: int = 60) -> Zone:
    origin = normalize(origin)
    records: dict[str, dict[int, list[bytes]]] = {}
    for name, addr in (a or {}).items():
        records.setdefault(normalize(name), {}).setdefault(1, []).append(a_rdata(addr))
    for name, addr in (aaaa or {}).items():
        records.setdefault(normalize(name), {}).setdefault(28, []).append(aaaa_rdata(addr))
    return Zone(origin, records, ttl)


@dataclass
class Answer:
    """A parsed response, for tests: rcode and the answer section's (name, type, rdata)."""
    id: int
    rcode: int
    aa: bool
    answers: list[tuple[str, int, bytes]]
    nauthority: int


def parse_response(data: bytes) -> Answer:
    if len(data) < _HEADER.size:
        raise DNSFormatError("short message")
    mid, flags, qd, an, ns, _ar = _HEADER.unpack_from(data)
    off = _HEADER.size
    for _ in range(qd):
        _, off = decode_name(data, off)
        off += 4
    answers = []
    for _ in range(an):
        name, off = decode_name(data, off)
        if off + 10 > len(data):
            raise DNSFormatError("truncated record")
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, off)
        off += 10
        answers.append((normalize(name), rtype, data[off:off + rdlen]))
        off += rdlen
    return Answer(mid, flags & 0xF, bool(flags & 0x0400), answers, ns)

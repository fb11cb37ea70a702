"""DNS messages for the name service, on dnspython (``dns.message``): the few conversions our
code needs around it. Parsing and building (EDNS, compression, truncation, every record type)
are dnspython's. Pure functions, no I/O."""
from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.reversename

# What a message that dnspython cannot read raises (bad wire format, bad TSIG, too many
# questions for the checks below...): answered FORMERR or dropped by the callers.
ERRORS = (dns.exception.DNSException, ValueError)


def name_text(name: dns.name.Name) -> str:
    """The name as written, without the trailing dot ("" = root); labels decoded as UTF-8 with
    surrogateescape (not dnspython's \\DDD escapes), so odd bytes reach the name checks."""
    labels = name.labels[:-1] if name.is_absolute() else name.labels
    return ".".join(l.decode("utf-8", "surrogateescape") for l in labels)


def to_name(text: str) -> dns.name.Name:
    """The inverse of name_text (no escapes, no IDNA): ValueError-like dnspython errors when a
    label or the name is too long."""
    text = text.rstrip(".")
    labels = [l.encode("utf-8", "surrogateescape") for l in text.split(".")] if text else []
    if any(not l for l in labels):
        raise dns.name.EmptyLabel
    return dns.name.Name([*labels, b""])


def read_query(raw: bytes) -> dns.message.Message:
    """A query with exactly one question; records after the question that cannot be read
    (a bad OPT, an unknown TSIG key...) are ignored, as a server would rather answer."""
    try:
        q = dns.message.from_wire(raw)
    except ERRORS:
        q = dns.message.from_wire(raw, question_only=True)
    if q.flags & dns.flags.QR:
        raise dns.message.ShortHeader("a response, not a query")
    if len(q.question) != 1:
        raise dns.exception.FormError(f"{len(q.question)} questions")
    return q


def udp_limit(raw: bytes) -> int:
    """How large a UDP answer to this query may be: 512, or the EDNS size (at most 4096)."""
    try:
        q = read_query(raw)
    except ERRORS:
        return 512
    return max(512, min(q.payload, 4096)) if q.edns >= 0 else 512


def response(q: dns.message.Message, rcode: int = dns.rcode.NOERROR,
             aa: bool = False) -> dns.message.Message:
    r = dns.message.make_response(q, recursion_available=True, our_payload=4096)
    r.set_rcode(rcode)
    if aa:
        r.flags |= dns.flags.AA
    return r


def error_answer(raw: bytes, rcode: int) -> bytes:
    """An error answer to a message we could not read (header + question if readable)."""
    if len(raw) < 12:
        return b""
    try:
        q = dns.message.from_wire(raw, question_only=True)
        if not q.flags & dns.flags.QR:
            return response(q, rcode).to_wire()
    except ERRORS:
        pass
    qid, flags = struct.unpack_from("!HH", raw)
    flags = dns.flags.QR | (flags & (0x7800 | dns.flags.RD)) | dns.flags.RA | (rcode & 0xF)
    return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)


def with_id(answer: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + answer[2:] if len(answer) >= 12 else answer


def truncate(answer: bytes, limit: int) -> bytes:
    """Fit an answer in ``limit`` bytes (UDP, the channel): whole RRsets that fit, TC set;
    an answer dnspython cannot read keeps its header and question only."""
    if len(answer) <= limit:
        return answer
    try:
        m = dns.message.from_wire(answer)
        m.flags |= dns.flags.TC      # dnspython sets it only when it drops answer records
        return m.to_wire(max_size=limit, prefer_truncation=True)
    except ERRORS:
        pass
    try:
        m = dns.message.from_wire(answer, question_only=True)
        m.flags |= dns.flags.TC
        out = m.to_wire(max_size=limit)
    except ERRORS:
        out = answer[:12]
    return out[:2] + bytes([out[2] | 0x02, out[3]]) + out[4:6] + bytes(6) + out[12:] \
        if len(out) >= 12 else b""


def ptr_name(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


def ip_of_ptr(name: str) -> str | None:
    """"4.3.2.1.in-addr.arpa" -> "1.2.3.4"; nibble form for ip6.arpa; None if not an address."""
    try:
        n = dns.name.from_text(name.lower().rstrip(".") + ".")
        if len(n) not in (7, 35):      # a whole address: 4 (32) labels + in-addr (ip6).arpa.
            return None
        return dns.reversename.to_address(n)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return None

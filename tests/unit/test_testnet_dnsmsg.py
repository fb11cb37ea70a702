"""DNS wire format used by the testnet's DNS servers."""
import struct

import pytest

from tailproxy.testnet import dnsmsg


def test_query_roundtrip():
    q = dnsmsg.encode_query("Internet.Test.", "AAAA", mid=0xBEEF)
    m = dnsmsg.parse_message(q)
    assert m.id == 0xBEEF and m.rd and not m.is_response and m.opcode == 0
    assert [(x.name, x.qtype, x.qclass) for x in m.questions] == [("internet.test", 28, 1)]


def test_encode_name_root_and_errors():
    assert dnsmsg.encode_name("") == b"\x00"
    assert dnsmsg.encode_name("a.b") == b"\x01a\x01b\x00"
    with pytest.raises(ValueError):
        dnsmsg.encode_name("a..b")
    with pytest.raises(ValueError):
        dnsmsg.encode_name("x" * 64 + ".test")


def test_decode_compressed_name():
    # "foo.example" at 12, then "bar" + pointer to it.
    buf = bytes(12) + b"\x03foo\x07example\x00" + b"\x03bar\xc0\x0c"
    name, off = dnsmsg.decode_name(buf, 12)
    assert (name, off) == ("foo.example", 25)
    name, off = dnsmsg.decode_name(buf, 25)
    assert (name, off) == ("bar.foo.example", len(buf))


@pytest.mark.parametrize("buf", [
    bytes(12) + b"\xc0\x0c",            # pointer to itself
    bytes(12) + b"\x05ab",              # label past end
    bytes(12) + b"\x40abc",             # reserved label type
    b"\x00\x01",                        # short header
])
def test_malformed(buf):
    with pytest.raises(dnsmsg.DNSFormatError):
        if len(buf) < 12:
            dnsmsg.parse_message(buf)
        else:
            dnsmsg.decode_name(buf, 12)


def test_truncated_question():
    q = dnsmsg.encode_query("a.test")
    with pytest.raises(dnsmsg.DNSFormatError):
        dnsmsg.parse_message(q[:-2])


ZONE = dnsmsg.make_zone("internet.test", {"internet.test": "198.19.0.2"})


def ask(name, qtype="A", zone=ZONE):
    return dnsmsg.parse_response(zone.answer(dnsmsg.parse_message(dnsmsg.encode_query(name, qtype, mid=7))))


def test_zone_a_record():
    r = ask("internet.test")
    assert r.id == 7 and r.rcode == dnsmsg.NOERROR and r.aa
    assert r.answers == [("internet.test", 1, bytes([198, 19, 0, 2]))]


def test_zone_case_insensitive():
    assert ask("INTERNET.test.").answers[0][2] == bytes([198, 19, 0, 2])


def test_zone_nodata_for_other_type():
    r = ask("internet.test", "AAAA")
    assert r.rcode == dnsmsg.NOERROR and r.answers == [] and r.nauthority == 1


def test_zone_nxdomain_inside_zone():
    r = ask("nope.internet.test")
    assert r.rcode == dnsmsg.NXDOMAIN and r.aa and r.nauthority == 1


def test_zone_refuses_outside():
    for name in ("example.com", "test", "xinternet.test"):
        r = ask(name)
        assert r.rcode == dnsmsg.REFUSED and not r.aa, name


def test_zone_notimp_and_formerr():
    q = dnsmsg.encode_query("internet.test")
    iquery = q[:2] + struct.pack("!H", 0x0900) + q[4:]  # opcode 1
    r = dnsmsg.parse_response(ZONE.answer(dnsmsg.parse_message(iquery)))
    assert r.rcode == dnsmsg.NOTIMP
    two = q[:4] + struct.pack("!H", 2) + q[6:] + q[12:]
    r = dnsmsg.parse_response(ZONE.answer(dnsmsg.parse_message(two)))
    assert r.rcode == dnsmsg.FORMERR


def test_response_flags_echo_rd():
    m = dnsmsg.parse_message(dnsmsg.encode_query("x.test", rd=False))
    out = dnsmsg.build_response(m, dnsmsg.REFUSED)
    _id, flags = struct.unpack("!HH", out[:4])
    assert flags & 0x8000 and not flags & 0x0100 and flags & 0xF == dnsmsg.REFUSED


def test_header_only_error():
    assert dnsmsg.header_only_error(b"\x00", dnsmsg.FORMERR) is None
    bad = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"
    r = dnsmsg.parse_response(dnsmsg.header_only_error(bad, dnsmsg.FORMERR))
    assert r.id == 0x1234 and r.rcode == dnsmsg.FORMERR


def test_qtype_name():
    assert dnsmsg.qtype_name(1) == "A" and dnsmsg.qtype_name(65) == "HTTPS"
    assert dnsmsg.qtype_name(999) == "TYPE999"

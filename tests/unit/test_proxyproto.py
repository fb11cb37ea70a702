import pytest

from tailproxy import proxyproto


@pytest.mark.parametrize("src, dst", [(("100.64.0.5", 41000), ("100.64.0.1", 8000)),
                                      (("fd7a:115c:a1e0::5", 1), ("fd7a:115c:a1e0::1", 65535))])
def test_roundtrip(src, dst):
    h = proxyproto.encode(src, dst)
    assert proxyproto.header_length(h[:16]) == len(h)
    assert proxyproto.decode(h) == (src, dst)


def test_mixed_families_map_to_v6():
    h = proxyproto.encode(("100.64.0.5", 1), ("fd7a::1", 2))
    assert proxyproto.decode(h)[0] == ("::ffff:6440:5", 1)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c"])
def test_garbage_rejected(data):
    with pytest.raises(proxyproto.ProxyProtocolError):
        proxyproto.header_length(data)


def test_truncated_and_short_prefix():
    h = proxyproto.encode(("1.2.3.4", 1), ("5.6.7.8", 2))
    assert proxyproto.header_length(h[:5]) is None
    with pytest.raises(proxyproto.ProxyProtocolError, match="truncated"):
        proxyproto.decode(h[:-1])

"""HTTP proxy on the SOCKS5 port: 407, CONNECT, absolute-URI forwarding."""

import base64
import errno
import socket
import threading

import pytest

from test_proxy_harness import FakeDialer, ProxyThread
from tailproxy.proxy import httpproxy as hp

USER, PW = "tp-user", "s3cret:with:colons"
GOOD = "Basic " + base64.b64encode(f"{USER}:{PW}".encode()).decode()


class Origin:
    """Tiny loopback HTTP origin recording the request it gets."""

    def __init__(self):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.requests = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            clen = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    clen = int(v)
            while len(body) < clen:
                body += c.recv(4096)
            self.requests.append((head.decode(), body))
            payload = b"hello from origin"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(payload), payload))
            c.close()

    def close(self):
        self.lsock.close()


@pytest.fixture
def env():
    origin = Origin()
    d = FakeDialer()
    d.script[("web.tailnet.example", 80)] = ("tcp", "127.0.0.1", origin.port)
    d.script[("100.64.0.5", 8080)] = ("tcp", "127.0.0.1", origin.port)
    d.script[("100.64.0.5", 22)] = "echo"
    d.script[("fd7a::5", 22)] = "echo"
    d.script[("100.64.0.7", 80)] = errno.ECONNREFUSED
    d.script[("100.64.0.8", 80)] = errno.ETIMEDOUT
    d.script[("100.64.0.10", 80)] = errno.EACCES
    pt = ProxyThread(d, socks_listen=("127.0.0.1", 0), socks_auth=(USER, PW), verbose=True)
    pt.origin = origin
    yield pt
    pt.stop()
    origin.close()


def exchange(env, data: bytes) -> bytes:
    s = socket.create_connection(env.proxy.socks_address, timeout=5)
    s.sendall(data)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def test_407_without_credentials(env):
    out = exchange(env, b"GET http://web.tailnet.example/ HTTP/1.1\r\nHost: web.tailnet.example\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 407 ")
    assert b'Proxy-Authenticate: Basic realm="tailproxy"' in out
    assert env.dialer.calls == []


@pytest.mark.parametrize("value", [
    "Basic " + base64.b64encode(b"tp-user:nope").decode(),
    "Basic !!!notbase64",
    "Bearer abc",
    "Basic " + base64.b64encode(b"nocolon").decode(),
])
def test_407_wrong_credentials(env, value):
    out = exchange(env, f"CONNECT 100.64.0.5:22 HTTP/1.1\r\nProxy-Authorization: {value}\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 407 ")


@pytest.mark.parametrize("host", [b"a\x00b", b"a\x1b[2Jb", b"a\x7fb", b"caf\xc3\xa9"])
def test_hostile_bytes_in_the_host_are_400_and_never_dialled(env, host):
    for line in (b"CONNECT " + host + b":17007 HTTP/1.1\r\n",
                 b"GET http://" + host + b":17007/ HTTP/1.1\r\n"):
        out = exchange(env, line + f"Proxy-Authorization: {GOOD}\r\n\r\n".encode())
        assert out.startswith(b"HTTP/1.1 400 "), out
    assert env.dialer.calls == []


def test_connect_tunnel(env):
    s = socket.create_connection(env.proxy.socks_address, timeout=5)
    s.sendall(f"CONNECT 100.64.0.5:22 HTTP/1.1\r\nHost: 100.64.0.5:22\r\n"
              f"Proxy-Authorization: {GOOD}\r\n\r\nSSH-2.0-early".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200 ")
    got = b""
    while len(got) < len(b"SSH-2.0-early"):
        got += s.recv(100)
    assert got == b"SSH-2.0-early"
    s.sendall(b"more")
    assert s.recv(100) == b"more"
    s.close()


def test_connect_ipv6_literal(env):
    s = socket.create_connection(env.proxy.socks_address, timeout=5)
    s.sendall(f"CONNECT [fd7a::5]:22 HTTP/1.1\r\nProxy-Authorization: {GOOD}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert env.dialer.calls[-1][:2] == ("fd7a::5", 22)
    s.close()


@pytest.mark.parametrize("ip,status", [("100.64.0.7", 502), ("100.64.0.8", 504),
                                       ("100.64.0.10", 403), ("100.64.0.6", 502)])
def test_connect_errors(env, ip, status):
    out = exchange(env, f"CONNECT {ip}:80 HTTP/1.1\r\nProxy-Authorization: {GOOD}\r\n\r\n".encode())
    assert out.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"X-Tailproxy-Errno: E" in out


def test_get_forwarding(env):
    out = exchange(env, (f"GET http://web.tailnet.example/a/b?x=1#frag HTTP/1.1\r\n"
                         f"Host: web.tailnet.example\r\nProxy-Authorization: {GOOD}\r\n"
                         f"Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\n"
                         f"X-Hop: 1\r\nUser-Agent: t\r\n\r\n").encode())
    assert out.startswith(b"HTTP/1.1 200 OK")
    assert out.endswith(b"hello from origin")
    head, body = env.origin.requests[-1]
    lines = head.split("\r\n")
    assert lines[0] == "GET /a/b?x=1 HTTP/1.1"
    assert "Host: web.tailnet.example" in lines
    assert "User-Agent: t" in lines
    assert "Connection: close" in lines
    low = head.lower()
    assert "proxy-authorization" not in low and "proxy-connection" not in low
    assert "x-hop" not in low and "keep-alive" not in low


def test_post_forwarding_with_body_and_port(env):
    body = b"a=1&b=2" * 1000
    out = exchange(env, (f"POST http://100.64.0.5:8080/form HTTP/1.1\r\n"
                         f"Proxy-Authorization: {GOOD}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    assert out.startswith(b"HTTP/1.1 200 OK")
    head, got = env.origin.requests[-1]
    assert head.startswith("POST /form HTTP/1.1")
    assert "Host: 100.64.0.5:8080" in head
    assert got == body


@pytest.mark.parametrize("req,status", [
    (b"GET /relative HTTP/1.1\r\n", 400),
    (b"GET https://x/ HTTP/1.1\r\n", 400),
    (b"GARBAGE\r\n", 400),
    (b"GET http://x/ HTTP/2.0\r\n", 505),
    (b"CONNECT nohostport HTTP/1.1\r\n", 400),
    (b"CONNECT [::1 HTTP/1.1\r\n", 400),
])
def test_bad_requests(env, req, status):
    out = exchange(env, req + f"Proxy-Authorization: {GOOD}\r\n\r\n".encode())
    assert out.startswith(f"HTTP/1.1 {status} ".encode()), out


def test_head_too_large(env):
    big = b"GET http://x/ HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    out = exchange(env, big)
    assert out.startswith(b"HTTP/1.1 431 ")


# ---------------------------------------------------------------- codec

def test_parse_head_incomplete_and_ok():
    data = b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\nBODY"
    for n in range(len(data) - 4):
        assert hp.parse_head(data[:n]) is None
    head, used = hp.parse_head(data)
    assert head.method == "GET" and head.get("host") == "h" and data[used:] == b"BODY"


@pytest.mark.parametrize("data", [
    b"GET  http://h/ HTTP/1.1\r\n\r\n",
    b"G@T http://h/ HTTP/1.1\r\n\r\n",
    b"GET http://h/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
    b"GET http://h/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
])
def test_parse_head_malformed(data):
    with pytest.raises(hp.HttpError):
        hp.parse_head(data)


def test_split_hostport():
    assert hp.split_hostport("h:1", None) == ("h", 1)
    assert hp.split_hostport("[::1]:443", None) == ("::1", 443)
    assert hp.split_hostport("h", 80) == ("h", 80)
    for bad in ("h", "h:0", "h:70000", "h:x", "::1:80", "[zz]:1", "[::1]x", ":80", "a/b:1"):
        with pytest.raises(hp.HttpError):
            hp.split_hostport(bad, None)


def test_parse_absolute_uri():
    assert hp.parse_absolute_uri("http://h") == ("h", 80, "/")
    assert hp.parse_absolute_uri("http://u:p@h:81?q") == ("h", 81, "/?q")
    assert hp.parse_absolute_uri("HTTP://[fd7a::1]:8/x") == ("fd7a::1", 8, "/x")

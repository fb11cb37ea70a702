"""HTTP proxy on the SOCKS5 port: 407, CONNECT, absolute-URI forwarding."""

import base64
import errno
import socket
import threading

import h11
import pytest

from test_proxy_harness import FakeDialer, ProxyThread, wait_until
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
    """Send ``data``, end our side (else the proxy keeps the connection for more requests),
    read all."""
    s = socket.create_connection(env.proxy.socks_address, timeout=5)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
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
    low = head.lower()
    assert "connection:" not in low     # keep-alive is the default; the client's is hop-by-hop
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

@pytest.mark.parametrize("data", [
    b"GET  http://h/ HTTP/1.1\r\n",
    b"G@T http://h/ HTTP/1.1\r\n",
    b"GET http://h/ HTTP/1.1\r\nBad Header: x\r\n",
    b"GET http://h/ HTTP/1.1\r\nA: b\r\nA: b\r\nHost: a\r\nHost: b\r\n",
])
def test_malformed_heads_are_400(env, data):
    out = exchange(env, data + f"Proxy-Authorization: {GOOD}\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert env.dialer.calls == []


def test_request_headers():
    got = hp.request_headers([(b"Host", b"h"), (b"Connection", b"keep-alive, X-Hop"),
                              (b"X-Hop", b"1"), (b"Proxy-Authorization", b"x"),
                              (b"Keep-Alive", b"5"), (b"Content-Length", b"3"), (b"A", b"b")],
                             "h", 80)
    assert got == [(b"Host", b"h"), (b"Content-Length", b"3"), (b"A", b"b")]
    assert hp.request_headers([], "fd7a::1", 81, close=True) == [
        (b"Host", b"[fd7a::1]:81"), (b"Connection", b"close")]
    assert hp.request_headers([(b"Host", b"x")], "h", 82, keep_host=False) == [(b"Host", b"h:82")]


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


# ---------------------------------------------------------------- keep-alive

class KeepAliveOrigin:
    """Loopback HTTP/1.1 origin on h11 that serves many requests per connection. It records
    (connection number, method, target, headers, body) per request. ``/chunked`` answers
    chunked, ``/close`` answers and closes, ``/big`` sends 1 MiB; others Content-Length."""

    def __init__(self, name: str):
        self.name = name
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.requests = []
        self.conns = 0
        self.closed = threading.Event()     # a connection of ours saw its client go away
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self.serve, args=(c, self.conns), daemon=True).start()

    def serve(self, c, n):
        h = h11.Connection(h11.SERVER)
        try:
            while True:
                req, body = None, b""
                while True:
                    ev = h.next_event()
                    if ev is h11.NEED_DATA:
                        h.receive_data(c.recv(65536))
                        continue
                    if isinstance(ev, h11.Request):
                        req = ev
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
                if req is None:
                    return
                if not isinstance(ev, h11.EndOfMessage):
                    return
                target = req.target.decode()
                self.requests.append((n, req.method.decode(), target,
                                      dict(req.headers.raw_items()), body))
                payload = f"{self.name} {req.method.decode()} {target} {len(body)}".encode()
                if target == "/chunked":
                    out = h.send(h11.Response(status_code=200,
                                              headers=[("Transfer-Encoding", "chunked")]))
                    for part in (payload, b"-part2", b"-part3"):
                        out += h.send(h11.Data(data=part))
                elif target == "/big":
                    out = h.send(h11.Response(status_code=200,
                                              headers=[("Content-Length", str(1 << 20))]))
                    out += h.send(h11.Data(data=b"x" * (1 << 20)))
                else:
                    hdrs = [("Content-Length", str(len(payload)))]
                    if target == "/close":
                        hdrs.append(("Connection", "close"))
                    if target == "/silent-close":     # keep-alive, then closes when idle
                        c.sendall(h.send(h11.Response(status_code=200, headers=hdrs))
                                  + h.send(h11.Data(data=payload)) + h.send(h11.EndOfMessage()))
                        return
                    out = h.send(h11.Response(status_code=200, headers=hdrs))
                    out += h.send(h11.Data(data=payload))
                out += h.send(h11.EndOfMessage())
                c.sendall(out)
                if h.our_state is h11.MUST_CLOSE:
                    return
                h.start_next_cycle()
        except (OSError, h11.ProtocolError):
            pass
        finally:
            self.closed.set()
            c.close()

    def close(self):
        self.lsock.close()


class Client:
    """A keep-alive client of the proxy (h11)."""

    def __init__(self, env):
        self.sock = socket.create_connection(env.proxy.socks_address, timeout=5)
        self.h = h11.Connection(h11.CLIENT)

    def request(self, url: str, method="GET", body: bytes | None = None, chunked=False,
                headers=()):
        hdrs = [("Host", url.split("/")[2]), ("Proxy-Authorization", GOOD), *headers]
        if body is not None:
            hdrs.append(("Transfer-Encoding", "chunked") if chunked
                        else ("Content-Length", str(len(body))))
        out = self.h.send(h11.Request(method=method, target=url, headers=hdrs))
        if body is not None:
            for i in range(0, len(body), 5000):
                out += self.h.send(h11.Data(data=body[i:i + 5000]))
        out += self.h.send(h11.EndOfMessage())
        self.sock.sendall(out)
        return self.response()

    def response(self):
        resp, data = None, b""
        while True:
            ev = self.h.next_event()
            if ev is h11.NEED_DATA:
                self.h.receive_data(self.sock.recv(65536))
            elif isinstance(ev, h11.Response):
                resp = ev
            elif isinstance(ev, h11.Data):
                data += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                raise AssertionError(ev)
        if self.h.our_state is h11.DONE and self.h.their_state is h11.DONE:
            self.h.start_next_cycle()
        return resp, data

    def close(self):
        self.sock.close()


@pytest.fixture
def ka(env):
    a, b = KeepAliveOrigin("A"), KeepAliveOrigin("B")
    env.dialer.script[("a.example", 80)] = ("tcp", "127.0.0.1", a.port)
    env.dialer.script[("b.example", 8080)] = ("tcp", "127.0.0.1", b.port)
    env.a, env.b = a, b
    yield env
    a.close()
    b.close()


def _accepted(env) -> int:
    """Client connections the proxy served: one --verbose line each request; count the
    ones from a first request (no 'request N on the connection' note)."""
    return sum(1 for line in env.logs if " http " in line and "on the connection" not in line)


def test_keepalive_two_requests_same_origin_reuse_it(ka):
    c = Client(ka)
    r1, d1 = c.request("http://a.example/one")
    r2, d2 = c.request("http://a.example/two?x=1")
    c.close()
    assert (r1.status_code, d1) == (200, b"A GET /one 0")
    assert (r2.status_code, d2) == (200, b"A GET /two?x=1 0")
    assert [r[0] for r in ka.a.requests] == [1, 1]      # one origin connection for both
    assert [d[:2] for d in ka.dialer.calls] == [("a.example", 80)]
    for _, _, _, headers, _ in ka.a.requests:
        assert b"Proxy-Authorization" not in headers and headers[b"Host"] == b"a.example"
    wait_until(lambda: any("request 2 on the connection, origin reused" in l for l in ka.logs),
             what="the second request's log line")


def test_keepalive_three_requests_different_origins_and_chunked(ka):
    c = Client(ka)
    r1, d1 = c.request("http://a.example/chunked")
    r2, d2 = c.request("http://b.example:8080/x")
    r3, d3 = c.request("http://a.example/y")
    c.close()
    assert d1 == b"A GET /chunked 0-part2-part3"
    assert (r2.status_code, d2) == (200, b"B GET /x 0")
    assert d3 == b"A GET /y 0"
    assert [d[:2] for d in ka.dialer.calls] == [("a.example", 80), ("b.example", 8080),
                                                 ("a.example", 80)]
    assert len(ka.a.requests) == 2 and len(ka.b.requests) == 1
    wait_until(lambda: any("request 3 on the connection)" in l for l in ka.logs),
             what="the third request's log line")


def test_keepalive_post_bodies_content_length_and_chunked(ka):
    c = Client(ka)
    body = bytes(range(256)) * 400
    r1, d1 = c.request("http://a.example/p", "POST", body)
    r2, d2 = c.request("http://a.example/q", "POST", body, chunked=True)
    r3, d3 = c.request("http://a.example/big")
    c.close()
    assert d1 == f"A POST /p {len(body)}".encode()
    assert d2 == f"A POST /q {len(body)}".encode()
    assert [r[4] for r in ka.a.requests[:2]] == [body, body]
    assert len(d3) == 1 << 20 and r3.status_code == 200
    assert [r[0] for r in ka.a.requests] == [1, 1, 1]


def test_keepalive_origin_closing_is_redialled(ka):
    c = Client(ka)
    _, d1 = c.request("http://a.example/close")
    _, d2 = c.request("http://a.example/again")
    c.close()
    assert (d1, d2) == (b"A GET /close 0", b"A GET /again 0")
    assert [r[0] for r in ka.a.requests] == [1, 2]


def test_keepalive_origin_gone_idle_is_redialled(ka):
    c = Client(ka)
    _, d1 = c.request("http://a.example/silent-close")
    assert ka.a.closed.wait(5)
    _, d2 = c.request("http://a.example/again")
    c.close()
    assert (d1, d2) == (b"A GET /silent-close 0", b"A GET /again 0")
    assert [r[0] for r in ka.a.requests] == [1, 2]


def test_keepalive_pipelined_requests(ka):
    s = socket.create_connection(ka.proxy.socks_address, timeout=5)
    auth = f"Proxy-Authorization: {GOOD}\r\n"
    s.sendall((f"GET http://a.example/1 HTTP/1.1\r\nHost: a.example\r\n{auth}\r\n"
               f"GET http://b.example:8080/2 HTTP/1.1\r\nHost: b.example\r\n{auth}"
               f"Connection: close\r\n\r\n").encode())
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    assert out.count(b"HTTP/1.1 200 ") == 2
    assert b"A GET /1 0" in out and out.endswith(b"B GET /2 0")
    assert ka.b.requests[0][3][b"Connection"] == b"close"


def test_keepalive_http10_client_gets_a_close_delimited_answer(ka):
    out = exchange(ka, f"GET http://a.example/chunked HTTP/1.0\r\nProxy-Authorization: {GOOD}\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200 ")
    assert out.endswith(b"\r\n\r\nA GET /chunked 0-part2-part3")


def test_keepalive_later_request_needs_auth_and_errors_close(ka):
    c = Client(ka)
    c.request("http://a.example/1")
    c.sock.sendall(b"GET http://a.example/2 HTTP/1.1\r\nHost: a.example\r\n\r\n")
    resp, _ = c.response()
    assert resp.status_code == 407
    assert c.sock.recv(100) == b""
    c.close()
    c = Client(ka)
    c.request("http://a.example/1")
    resp, _ = c.request("http://100.64.0.8/")
    assert resp.status_code == 504 and dict(resp.headers)[b"x-tailproxy-errno"] == b"ETIMEDOUT"
    assert c.sock.recv(100) == b""
    c.close()


def test_client_closing_mid_body_closes_the_origin_connection(ka):
    s = socket.create_connection(ka.proxy.socks_address, timeout=5)
    s.sendall((f"POST http://a.example/p HTTP/1.1\r\nHost: a.example\r\n"
               f"Proxy-Authorization: {GOOD}\r\nContent-Length: 100000\r\n\r\n").encode()
              + b"x" * 5000)
    wait_until(lambda: ka.a.conns == 1, what="the origin connection")
    s.close()
    assert ka.a.closed.wait(5)          # the proxy ended the origin connection too
    assert ka.a.requests == []
    wait_until(lambda: any("a.example:80 failed" in l for l in ka.logs), what="the log line")


def test_connect_after_forwarded_request_tunnels(ka):
    c = Client(ka)
    c.request("http://a.example/1")
    c.sock.sendall(f"CONNECT 100.64.0.5:22 HTTP/1.1\r\nProxy-Authorization: {GOOD}\r\n\r\nearly".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200 ")
    got = b""
    while len(got) < 5:
        got += c.sock.recv(100)
    assert got == b"early"
    c.close()


class PyUpstream:
    """An Upstream (relays itself once joined) over a loopback TCP connection, as the
    tailnet node's are."""

    def __init__(self, port):
        self.remote = socket.create_connection(("127.0.0.1", port))
        self.local_address = None

    def join(self, local, done, initial=b""):
        remote = self.remote

        def pump(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        local.setblocking(True)
        t1 = threading.Thread(target=pump, args=(local, remote), daemon=True)
        t2 = threading.Thread(target=pump, args=(remote, local), daemon=True)
        t1.start()
        t2.start()
        return self

    finished = False

    def delivering(self):
        return False

    def abort(self):
        pass

    def close(self):
        self.remote.close()


def test_keepalive_through_an_upstream(ka):
    plain = ka.dialer.dial

    async def dial(host, port, timeout):
        if host == "up.example":
            return PyUpstream(ka.a.port)
        return await plain(host, port, timeout)
    ka.dialer.dial = dial
    c = Client(ka)
    _, d1 = c.request("http://up.example/1")
    _, d2 = c.request("http://up.example/2", "POST", b"abc" * 1000)
    _, d3 = c.request("http://up.example/chunked")
    c.close()
    assert (d1, d2, d3) == (b"A GET /1 0", b"A POST /2 3000", b"A GET /chunked 0-part2-part3")
    assert [r[0] for r in ka.a.requests] == [1, 1, 1]
    assert [r[3][b"Host"] for r in ka.a.requests] == [b"up.example"] * 3

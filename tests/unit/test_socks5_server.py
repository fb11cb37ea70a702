"""SOCKS5 server end to end (fake dialer, loopback only)."""

import errno
import socket
import struct
import time

import pytest

from test_proxy_harness import FakeDialer, ProxyThread, assert_no_fd_leak, count_fds

DST = ("100.64.0.5", 80)
USER, PW = "u" * 12, "p4ss-w0rd"


@pytest.fixture
def env():
    d = FakeDialer()
    d.script[DST] = "echo"
    d.script[("fd7a:115c:a1e0::5", 443)] = "echo"
    d.script[("db.tailnet.example", 5432)] = "echo"
    d.script[("100.64.0.7", 80)] = errno.ECONNREFUSED
    d.script[("100.64.0.8", 80)] = errno.ETIMEDOUT
    d.script[("100.64.0.9", 80)] = errno.ENETUNREACH
    d.script[("100.64.0.10", 80)] = errno.EACCES
    d.script[("100.64.0.11", 80)] = errno.EIO
    pt = ProxyThread(d, socks_listen=("127.0.0.1", 0), socks_auth=(USER, PW), verbose=True)
    pt.addr = pt.proxy.socks_address
    yield pt
    pt.stop()


def recvn(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def open_client(env):
    s = socket.create_connection(env.addr, timeout=5)
    return s


def auth(s, user=USER, pw=PW):
    s.sendall(b"\x05\x01\x02")
    assert recvn(s, 2) == b"\x05\x02"
    u, p = user.encode(), pw.encode()
    s.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
    return recvn(s, 2)


def request(s, atyp, addr, port, cmd=1):
    s.sendall(bytes([5, cmd, 0, atyp]) + addr + struct.pack("!H", port))
    head = recvn(s, 4)
    assert len(head) == 4 and head[0] == 5
    alen = {1: 4, 4: 16}[head[3]]
    tail = recvn(s, alen + 2)
    return head[1], tail


def echo(s, data=b"ping"):
    s.sendall(data)
    assert recvn(s, len(data)) == data


def test_connect_ipv4(env):
    s = open_client(env)
    assert auth(s) == b"\x01\x00"
    rep, _ = request(s, 1, socket.inet_aton(DST[0]), DST[1])
    assert rep == 0
    echo(s, b"x" * 100000)
    s.close()


def test_connect_ipv6_dest(env):
    s = open_client(env)
    assert auth(s) == b"\x01\x00"
    rep, _ = request(s, 4, socket.inet_pton(socket.AF_INET6, "fd7a:115c:a1e0::5"), 443)
    assert rep == 0
    echo(s)
    assert env.dialer.calls[-1][:2] == ("fd7a:115c:a1e0::5", 443)
    s.close()


def test_connect_domain_dest(env):
    s = open_client(env)
    assert auth(s) == b"\x01\x00"
    name = b"db.tailnet.example"
    rep, _ = request(s, 3, bytes([len(name)]) + name, 5432)
    assert rep == 0
    echo(s)
    assert env.dialer.calls[-1][:2] == ("db.tailnet.example", 5432)
    s.close()


def test_pipelined_handshake(env):
    """Everything in one write, data included: nothing lost."""
    s = open_client(env)
    u, p = USER.encode(), PW.encode()
    s.sendall(b"\x05\x01\x02" + bytes([1, len(u)]) + u + bytes([len(p)]) + p
              + bytes([5, 1, 0, 1]) + socket.inet_aton(DST[0]) + struct.pack("!H", DST[1])
              + b"early data")
    assert recvn(s, 2) == b"\x05\x02"
    assert recvn(s, 2) == b"\x01\x00"
    assert recvn(s, 10)[1] == 0
    assert recvn(s, 10) == b"early data"
    s.close()


def test_noauth_refused_when_auth_required(env):
    s = open_client(env)
    s.sendall(b"\x05\x01\x00")
    assert recvn(s, 2) == b"\x05\xff"
    assert s.recv(10) == b""
    s.close()


@pytest.mark.parametrize("user,pw", [(USER, "wrong"), ("someone", PW), (USER, "")])
def test_wrong_credentials(env, user, pw):
    s = open_client(env)
    assert auth(s, user, pw) == b"\x01\x01"
    assert s.recv(10) == b""
    s.close()


@pytest.mark.parametrize("cmd", [2])
def test_unsupported_command(env, cmd):
    s = open_client(env)
    auth(s)
    rep, _ = request(s, 1, socket.inet_aton(DST[0]), DST[1], cmd=cmd)
    assert rep == 0x07
    s.close()


def test_unsupported_atyp(env):
    s = open_client(env)
    auth(s)
    s.sendall(bytes([5, 1, 0, 9]) + bytes(6))
    assert recvn(s, 2) == b"\x05\x08"
    s.close()


@pytest.mark.parametrize("ip,code", [("100.64.0.7", 0x05), ("100.64.0.6", 0x04),
                                     ("100.64.0.8", 0x04), ("100.64.0.9", 0x03),
                                     ("100.64.0.10", 0x02), ("100.64.0.11", 0x01)])
def test_reply_codes(env, ip, code):
    s = open_client(env)
    auth(s)
    rep, _ = request(s, 1, socket.inet_aton(ip), 80)
    assert rep == code
    assert s.recv(10) == b""
    s.close()


@pytest.mark.parametrize("data", [
    b"\x05",                               # greeting cut
    b"\x05\x02\x02",                       # methods cut
    b"\x05\x01\x02\x01\x05us",             # username cut
    b"\x05\x01\x02\x01\x04user\x06sec",    # password cut
])
def test_truncated_messages(env, data):
    before_tasks = len(env.proxy.socks._tasks)
    s = open_client(env)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    # whatever partial replies came, the server closes
    s.settimeout(5)
    while s.recv(100):
        pass
    s.close()
    t_end = time.monotonic() + 2
    while len(env.proxy.socks._tasks) > before_tasks and time.monotonic() < t_end:
        time.sleep(0.01)
    assert len(env.proxy.socks._tasks) == before_tasks


def test_truncated_request(env):
    s = open_client(env)
    auth(s)
    s.sendall(bytes([5, 1, 0, 3, 20]) + b"short")
    s.shutdown(socket.SHUT_WR)
    assert s.recv(10) == b""
    s.close()


def test_bad_version_closes(env):
    s = open_client(env)
    auth(s)
    s.sendall(bytes([4, 1, 0, 1]) + bytes(6))
    assert s.recv(10) == b""
    s.close()


def test_handshake_timeout(env):
    env.proxy.socks.handshake_timeout = 0.3
    s = open_client(env)
    s.sendall(b"\x05")
    s.settimeout(5)
    t0 = time.monotonic()
    assert s.recv(10) == b""
    assert time.monotonic() - t0 < 3
    s.close()


def test_no_auth_server():
    d = FakeDialer()
    d.script[DST] = "echo"
    pt = ProxyThread(d, socks_listen=("127.0.0.1", 0))
    try:
        s = socket.create_connection(pt.proxy.socks_address, timeout=5)
        s.sendall(b"\x05\x01\x00")
        assert recvn(s, 2) == b"\x05\x00"
        rep, _ = request(s, 1, socket.inet_aton(DST[0]), DST[1])
        assert rep == 0
        echo(s)
        s.close()
    finally:
        pt.stop()


def test_log_line(env):
    s = open_client(env)
    auth(s)
    request(s, 1, socket.inet_aton(DST[0]), DST[1])
    echo(s, b"12345")
    s.close()
    t_end = time.monotonic() + 3
    while not any("socks 100.64.0.5:80 ok" in line for line in env.logs) and time.monotonic() < t_end:
        time.sleep(0.01)
    line = next(line for line in env.logs if "socks 100.64.0.5:80 ok" in line)
    assert "up=5B down=5B" in line


def test_no_fd_leak(env):
    for i in range(5):
        s = open_client(env)
        auth(s)
        request(s, 1, socket.inet_aton(DST[0]), DST[1])
        echo(s)
        s.close()
    time.sleep(0.2)
    before = count_fds()
    for i in range(300):
        s = open_client(env)
        if i % 3 == 0:
            auth(s)
            request(s, 1, socket.inet_aton(DST[0]), DST[1])
            echo(s)
        elif i % 3 == 1:
            auth(s, pw="bad")
        else:
            auth(s)
            request(s, 1, socket.inet_aton("100.64.0.7"), 80)
        s.close()
    t_end = time.monotonic() + 5
    while count_fds() > before and time.monotonic() < t_end:
        time.sleep(0.05)
    assert_no_fd_leak(before)


def test_proxy_close_with_live_connections_no_leak(tmp_path):
    before = count_fds()
    d = FakeDialer()
    d.script[DST] = "echo"
    gate = d.gate("100.64.0.99", 1)
    pt = ProxyThread(d, socks_listen=("127.0.0.1", 0), channel_path=str(tmp_path / "c.sock"))
    live = socket.create_connection(pt.proxy.socks_address, timeout=5)
    live.sendall(b"\x05\x01\x00")
    recvn(live, 2)
    request(live, 1, socket.inet_aton(DST[0]), DST[1])
    echo(live)
    dialling = socket.create_connection(pt.proxy.socks_address, timeout=5)
    dialling.sendall(b"\x05\x01\x00" + bytes([5, 1, 0, 1]) + socket.inet_aton("100.64.0.99") + b"\0\1")
    half = socket.create_connection(pt.proxy.socks_address, timeout=5)
    half.sendall(b"\x05")
    time.sleep(0.1)
    pt.stop()
    gate.set()
    for s in (live, dialling, half):
        s.settimeout(5)
        try:
            while s.recv(100):
                pass
        except ConnectionResetError:
            pass
        s.close()
    assert_no_fd_leak(before)

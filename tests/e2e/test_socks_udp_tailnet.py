"""SOCKS5 UDP ASSOCIATE in proxy-only mode on the local tailnet: datagrams to `peer`'s UDP echo go
through the node (Node.dial_udp) and come back whole, with a raw client and with PySocks."""
import os
import signal
import socket
import struct
import subprocess
import time

import pytest
import socks     # PySocks

from helpers import readline, tailproxy_argv
from tailproxy.proxy.socks5_udp import encode_udp_header
from tailproxy.testnet.dnsmasq import read_queries

pytestmark = pytest.mark.tailnet

USER, PW = "u", "secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_proxy(state_dir, hostname, *extra):
    port = _free_port()
    p = subprocess.Popen(tailproxy_argv("--state-dir", state_dir, "--hostname", hostname, "--verbose",
                                        "--socks5", f"127.0.0.1:{port}", "--socks5-auth",
                                        f"{USER}:{PW}", *extra),
                         stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.monotonic() + 90
    while "proxy on" not in (lines[-1] if lines else ""):
        line = readline(p.stderr, 30)
        lines.append(line)
        if not line or time.monotonic() > deadline:
            p.kill()
            raise AssertionError("no banner:\n" + "".join(lines))
    return p, port


def _stop(p):
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=20)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    p, port = _start_proxy(str(tmp_path_factory.mktemp("tpstate")), "socksudp")
    yield port
    _stop(p)


def _recvn(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "control connection closed"
        out += chunk
    return out


def _associate(port):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(b"\x05\x01\x02")
    assert _recvn(c, 2) == b"\x05\x02"
    c.sendall(bytes([1, len(USER)]) + USER.encode() + bytes([len(PW)]) + PW.encode())
    assert _recvn(c, 2) == b"\x01\x00"
    c.sendall(b"\x05\x03\x00\x01" + bytes(6))
    head = _recvn(c, 4)
    assert head[:2] == b"\x05\x00", head
    tail = _recvn(c, 6)
    return c, (socket.inet_ntoa(tail[:4]), struct.unpack("!H", tail[4:])[0])


def _echoed(u, relay, atyp, host, port, payload, tries=5):
    """One datagram there and back (sent again if UDP lost it)."""
    hdr = encode_udp_header(atyp, host, port)
    for _ in range(tries):
        u.sendto(hdr + payload, relay)
        try:
            data, _ = u.recvfrom(70000)
        except socket.timeout:
            continue
        assert data.startswith(hdr), data[:40]
        return data[len(hdr):]
    raise AssertionError(f"no echo from {host}:{port}")


def test_raw_client_reaches_peer_by_address_and_name(proxy, testnet):
    peer = testnet["peers"]["peer"]
    port = peer["udp_echo_port"]
    c, relay = _associate(proxy)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    try:
        for atyp, host in ((1, peer["ipv4"]), (4, peer["ipv6"]), (3, peer["fqdn"].split(".")[0]),
                           (3, peer["fqdn"].rstrip("."))):
            for payload in (b"x", bytes(range(256)) * 4):
                assert _echoed(u, relay, atyp, host, port, payload) == payload, host
    finally:
        u.close()
        c.close()


def test_pysocks_udp_client(proxy, testnet):
    peer = testnet["peers"]["peer"]
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, "127.0.0.1", proxy, username=USER, password=PW)
    s.settimeout(2)
    try:
        for _ in range(5):
            s.sendto(b"hello over the tailnet", (peer["ipv4"], peer["udp_echo_port"]))
            try:
                data, src = s.recvfrom(2048)
                break
            except socket.timeout:
                continue
        else:
            raise AssertionError("no echo through PySocks")
        assert data == b"hello over the tailnet" and src[0] == peer["ipv4"]
    finally:
        s.close()


def test_through_the_exit_node_by_address_and_name_without_a_dns_query_here(testnet, tmp_path):
    inet = testnet["internet"]
    p, port = _start_proxy(str(tmp_path), "socksudpexit", "--exit-node", "exit")
    log_start = os.path.getsize(testnet["dns_log"])
    c, relay = _associate(port)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    try:
        for atyp, host in ((1, inet["ipv4"]), (3, inet["name"])):
            assert _echoed(u, relay, atyp, host, inet["udp_echo_port"], b"via exit") == b"via exit"
    finally:
        u.close()
        c.close()
        _stop(p)
    assert read_queries(testnet["dns_log"], log_start) == []    # the name went to the exit node

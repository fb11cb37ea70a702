"""The testnet's small servers, run on loopback in this process, and how the testnet reads
its DNS servers' (dnsmasq) query log."""
import json
import os
import socket
import threading
import urllib.request

import pytest

from tailproxy.testnet import dnsmasq, services


def _serve(server):
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return server


@pytest.fixture
def echo():
    s = _serve(services._TCPServer(("127.0.0.1", 0), services.EchoHandler))
    yield s.server_address
    s.shutdown()
    s.server_close()


def _recv_all(sock):
    chunks = []
    while True:
        c = sock.recv(1 << 16)
        if not c:
            return b"".join(chunks)
        chunks.append(c)


def test_echo_16mib_send_all_first_then_half_close(echo):
    # The client writes everything before reading: the server must keep reading meanwhile.
    data = os.urandom(1 << 20) * 16
    with socket.create_connection(echo, timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = _recv_all(s)
    assert got == data


def test_echo_interactive_then_close(echo):
    with socket.create_connection(echo, timeout=5) as s:
        for msg in (b"hello", b"x" * 1000):
            s.sendall(msg)
            buf = b""
            while len(buf) < len(msg):
                buf += s.recv(4096)
            assert buf == msg
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""  # server closes after our half-close


def test_http_reports_host_and_client():
    s = _serve(services._HTTPServer(("127.0.0.1", 0), services.make_http_handler("peer")))
    try:
        url = f"http://127.0.0.1:{s.server_address[1]}/hello?x=1"
        body = json.load(urllib.request.urlopen(url, timeout=5))
        assert body["host"] == "peer" and body["client"] == "127.0.0.1" and body["path"] == "/hello?x=1"
        data = urllib.request.urlopen(f"http://127.0.0.1:{s.server_address[1]}/bytes/70000", timeout=5).read()
        assert len(data) == 70000 and data[:3] == b"\x00\x01\x02" and data[256] == 0
    finally:
        s.shutdown()
        s.server_close()


def test_dnsmasq_query_log_is_read_one_entry_per_query(tmp_path):
    log = tmp_path / "dns.log"
    log.write_text(
        "Nov 30 03:48:47 dnsmasq[20132]: started, version 2.90 cachesize 150\n"
        "Nov 30 03:48:47 dnsmasq[20132]: warning: no upstream servers configured\n"
        "Nov 30 03:48:47 dnsmasq[20132]: query[A] foo.example from 127.0.0.1\n"
        "Nov 30 03:48:47 dnsmasq[20132]: config error is REFUSED (EDE: not ready)\n"
        "Nov  1 13:08:09 dnsmasq[20143]: 7 127.0.0.1/4242 query[AAAA] Bar.Example from 127.0.0.1\n")
    q = dnsmasq.read_queries(str(log))
    assert [(e["qname"], e["qtype"], e["client"]) for e in q] == [
        ("foo.example", "A", "127.0.0.1"), ("Bar.Example", "AAAA", "127.0.0.1")]
    assert all(isinstance(e["time"], float) for e in q)
    offset = len(log.read_bytes())
    with open(log, "a") as f:
        f.write("Nov 30 03:48:48 dnsmasq[20132]: query[type=65280] x.test from 127.0.0.1\n")
    assert [(e["qname"], e["qtype"]) for e in dnsmasq.read_queries(str(log), offset)] == [
        ("x.test", "type=65280")]
    assert dnsmasq.started(str(log)) and not dnsmasq.started(str(tmp_path / "none"))


def test_dnsmasq_argv_binds_only_the_given_address():
    rec = dnsmasq.recorder_argv("127.0.0.53", "/tmp/x.log")
    auth = dnsmasq.authoritative_argv("198.19.0.2", "internet.test", {"internet.test": "198.19.0.2"})
    for argv in (rec, auth):
        assert "--bind-interfaces" in argv and "--no-resolv" in argv and "--log-queries" in argv
    assert "--listen-address=127.0.0.53" in rec and "--log-facility=/tmp/x.log" in rec
    assert "--auth-zone=internet.test" in auth and "--host-record=internet.test,198.19.0.2" in auth


def test_ready_file_written_after_bind(tmp_path):
    ready = tmp_path / "ready"
    s = services._TCPServer(("127.0.0.1", 0), services.EchoHandler)
    t = threading.Thread(target=services._serve_forever, args=([s], str(ready)), daemon=True)
    t.start()
    for _ in range(200):
        if ready.exists():
            break
        threading.Event().wait(0.01)
    assert ready.read_text() == str(os.getpid())
    s.shutdown()
    s.server_close()


def test_udp_echo_returns_each_datagram_whole():
    srv = services._UDPServer(("127.0.0.1", 0), services.UDPEchoHandler)
    _serve(srv)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        for size in (1, 1200, 60000):
            msg = os.urandom(size)
            c.sendto(msg, srv.server_address)
            assert c.recvfrom(65535)[0] == msg

"""The testnet's small servers, run on loopback in this process."""
import json
import os
import socket
import threading
import urllib.request

import pytest

from tailproxy.testnet import dnsmsg, services


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


def test_dns_zone_over_udp_and_tcp():
    zone = dnsmsg.make_zone("internet.test", {"internet.test": "198.19.0.2"})
    srv = services._dns_servers(["127.0.0.1"], 0, services.zone_answerer(zone))
    # port 0 gives UDP and TCP different ports; query each on its own.
    for s in srv:
        _serve(s)
    try:
        u, t = srv
        q = dnsmsg.encode_query("internet.test", "A", mid=42)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(q, u.server_address)
            r = dnsmsg.parse_response(c.recv(4096))
        assert r.id == 42 and r.answers[0][2] == bytes([198, 19, 0, 2])
        with socket.create_connection(t.server_address, timeout=5) as c:
            q2 = dnsmsg.encode_query("other.example", "A", mid=43)
            c.sendall(len(q).to_bytes(2, "big") + q + len(q2).to_bytes(2, "big") + q2)
            f = c.makefile("rb")
            r1 = dnsmsg.parse_response(f.read(int.from_bytes(f.read(2), "big")))
            r2 = dnsmsg.parse_response(f.read(int.from_bytes(f.read(2), "big")))
        assert r1.rcode == dnsmsg.NOERROR and r2.rcode == dnsmsg.REFUSED and r2.id == 43
    finally:
        for s in srv:
            s.shutdown()
            s.server_close()


def test_recording_answerer_logs_json_lines(tmp_path):
    log = tmp_path / "dns.jsonl"
    answer = services.recording_answerer(str(log))
    reply = answer(dnsmsg.encode_query("foo.example", "AAAA", mid=5), "udp", "127.0.0.1")
    r = dnsmsg.parse_response(reply)
    assert r.id == 5 and r.rcode == dnsmsg.REFUSED
    assert answer(b"\x01", "udp", "127.0.0.1") is None  # no header: dropped, not logged
    (entry,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert entry["qname"] == "foo.example" and entry["qtype"] == "AAAA" and entry["proto"] == "udp"
    assert isinstance(entry["time"], float)


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

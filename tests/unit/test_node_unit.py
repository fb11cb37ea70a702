"""Error paths of the node binding, with fakes standing in for tailscaled."""
import asyncio
import errno
import os
import socket
import stat
import threading

import pytest

from tailproxy.node import (DialFailed, LocalAPI, LocalAPIError, Node, NodeConfig, NodeError,
                            NodeStateError)
from tailproxy.node.errors import errno_for_dial_message


@pytest.mark.parametrize("kwargs, needle", [
    (dict(state_dir=""), "state_dir"),
    (dict(state_dir="/x", hostname=""), "hostname"),
    (dict(state_dir="/x", hostname="a b"), "hostname"),
    (dict(state_dir="/x", control_url="ftp://x"), "control URL"),
])
def test_config_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        NodeConfig(**kwargs)


def test_config_repr_hides_authkey():
    assert "tskey-secret" not in repr(NodeConfig(state_dir="/x", authkey="tskey-secret"))


def test_calls_before_up_and_after_close(tmp_path):
    n = Node(NodeConfig(state_dir=str(tmp_path)))
    with pytest.raises(NodeStateError, match="not up"):
        asyncio.run(n.dial("peer", 80))
    with pytest.raises(NodeStateError, match="not up"):
        n.ips()
    with pytest.raises(NodeStateError, match="not started"):
        n.localapi
    with pytest.raises(NodeStateError):
        asyncio.run(n.listen(80))
    n.close()
    with pytest.raises(NodeStateError, match="closed"):
        n.up(timeout=1)
    with pytest.raises(NodeStateError, match="closed"):
        n.ips()


def test_up_rejects_nonpositive_timeout(tmp_path):
    with pytest.raises(ValueError):
        Node(NodeConfig(state_dir=str(tmp_path))).up(timeout=0)


def test_missing_binary_is_a_clear_error(tmp_path):
    n = Node(NodeConfig(state_dir=str(tmp_path / "s"), tailscaled=str(tmp_path / "nope")))
    with pytest.raises(NodeError, match="cannot start the node"):
        n.up(timeout=2)


def test_daemon_dying_early_shows_its_log(tmp_path):
    fake = tmp_path / "tailscaled"
    fake.write_text("#!/bin/sh\necho 'fake: bad flag' >&2\nexit 3\n")
    fake.chmod(0o755)
    n = Node(NodeConfig(state_dir=str(tmp_path / "s"), tailscaled=str(fake)))
    with pytest.raises(NodeError, match=r"exited with status 3[\s\S]*fake: bad flag"):
        n.up(timeout=5)
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700


def test_state_of_another_control_without_key_is_refused(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    (s / "tailproxy-node.json").write_text('{"control_url": "https://a.test"}')
    (s / "tailscaled.state").write_text("{}")
    with pytest.raises(NodeError, match="belongs to the control server https://a.test"):
        Node(NodeConfig(state_dir=str(s), control_url="https://b.test")).up(timeout=1)


@pytest.mark.parametrize("msg, code", [
    ("dial tcp 100.64.0.2:1: connect: connection refused", errno.ECONNREFUSED),
    ("unknown peer 100.64.9.9", errno.EHOSTUNREACH),
    ("dial tcp: i/o timeout", errno.ETIMEDOUT),
    ("no route to host", errno.EHOSTUNREACH),
    ("something new", errno.EHOSTUNREACH),
])
def test_dial_error_texts_map_to_errno(msg, code):
    assert errno_for_dial_message(msg) == code


class FakeLocalAPI:
    """A Unix-socket HTTP server answering one canned response per connection."""

    def __init__(self, path, response: bytes):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen()
        self.response = response
        self.requests = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            self.requests.append(data)
            c.sendall(self.response)
            c.shutdown(socket.SHUT_WR)
            c.recv(1)
            c.close()


def test_localapi_dial_keeps_bytes_after_upgrade(tmp_path):
    path = str(tmp_path / "api.sock")
    FakeLocalAPI(path, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ts-dial\r\n"
                       b"Connection: upgrade\r\n\r\nSSH-2.0-banner\r\n")
    api = LocalAPI(path)

    async def go():
        sock = await api.dial("peer", 22)
        sock.setblocking(True)
        sock.settimeout(5)
        data = sock.recv(100)
        sock.close()
        return data
    assert asyncio.run(go()) == b"SSH-2.0-banner\r\n"


def test_localapi_dial_failure_message(tmp_path):
    path = str(tmp_path / "api.sock")
    body = b"dial failure: dial tcp 100.64.0.2:1: connect: connection refused\n"
    fake = FakeLocalAPI(path, b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body))
    with pytest.raises(LocalAPIError, match="connection refused") as e:
        asyncio.run(LocalAPI(path).dial("100.64.0.2", 1))
    assert e.value.status == 502
    assert b"Dial-Host: 100.64.0.2" in fake.requests[0]


def test_localapi_unreachable_socket(tmp_path):
    with pytest.raises(LocalAPIError, match="cannot talk to the node"):
        LocalAPI(str(tmp_path / "none.sock")).status()


FAKE_STUCK_DAEMON = r'''
import json, os, socket, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
starts = os.path.join(args["--statedir"], "fake-starts")
n = int(open(starts).read()) if os.path.exists(starts) else 0
open(starts, "w").write(str(n + 1))
print("fake tailscaled start", n + 1, flush=True)
running = n >= 1                    # the first start stays Starting, the second runs
srv = socket.socket(socket.AF_UNIX)
srv.bind(args["--socket"])
srv.listen()
while True:
    c, _ = srv.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    want = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            want = int(line.split(b":")[1])
    while len(body) < want:
        body += c.recv(4096)
    if b"/status" in head.split(b"\r\n")[0]:
        out = {"BackendState": "Running" if running else "Starting", "HaveNodeKey": True,
               "TailscaleIPs": ["100.64.0.9"] if running else [], "Health": [],
               "Self": {"HostName": "tailproxy"}}
    else:
        out = {}
    out = json.dumps(out).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n%s" % (len(out), out))
    c.close()
'''


def _stuck_daemon(tmp_path):
    import sys
    fake = tmp_path / "tailscaled"
    fake.write_text(f"#!{sys.executable}\n" + FAKE_STUCK_DAEMON)
    fake.chmod(0o755)
    return str(fake)


def test_a_node_stuck_starting_is_restarted_once(tmp_path, monkeypatch):
    import tailproxy.node.node as nodemod
    monkeypatch.setattr(nodemod, "STUCK_STARTING_S", 0.5)
    said = []
    s = tmp_path / "s"
    n = Node(NodeConfig(state_dir=str(s), tailscaled=_stuck_daemon(tmp_path), authkey="k"),
             log=said.append)
    try:
        n.up(timeout=10)
        assert n.ips() == ["100.64.0.9"]
    finally:
        n.close()
    assert (s / "fake-starts").read_text() == "2"
    assert any("restarting it once" in m for m in said), said
    # the stuck run's log is kept next to the new one
    assert "start 1" in (s / "tailscaled.log.1").read_text()
    assert "start 2" in (s / "tailscaled.log").read_text()


def test_no_restart_when_the_timeout_leaves_no_room(tmp_path, monkeypatch):
    import tailproxy.node.node as nodemod
    from tailproxy.node.errors import UpTimeout
    monkeypatch.setattr(nodemod, "STUCK_STARTING_S", 5)
    s = tmp_path / "s"
    n = Node(NodeConfig(state_dir=str(s), tailscaled=_stuck_daemon(tmp_path), authkey="k"))
    with pytest.raises(UpTimeout, match="state Starting"):
        n.up(timeout=1)
    assert (s / "fake-starts").read_text() == "1"

"""The HTTP proxy (proxy-only mode) on the local tailnet: keep-alive for absolute-URI requests.
The peer's HTTP service keeps connections alive, and the node's connections are Upstreams (relayed
in Go), so this also covers the socket pair the proxy joins them to in order to read responses."""
import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import readline, tailproxy_argv

pytestmark = pytest.mark.tailnet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """`tailproxy --verbose --socks5 127.0.0.1:PORT --socks5-auth u:secret` until its banner."""
    port = _free_port()
    p = subprocess.Popen(tailproxy_argv("--state-dir", str(tmp_path_factory.mktemp("tpstate")),
                                        "--hostname", "httpproxy", "--verbose",
                                        "--socks5", f"127.0.0.1:{port}", "--socks5-auth", "u:secret"),
                         stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 90
    while True:
        line = readline(p.stderr, 30)
        lines.append(line)
        if "proxy on" in line:
            break
        if not line or time.monotonic() > deadline:
            p.kill()
            raise AssertionError("no banner:\n" + "".join(lines))
    state = {"port": port, "proc": p, "log": None}
    yield state
    if state["log"] is None:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=20)


def _stop(proxy) -> str:
    p = proxy["proc"]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    proxy["log"] = err
    return err


def test_curl_two_urls_share_one_proxy_connection(proxy, testnet):
    peer = testnet["peers"]["peer"]
    base = f"http://peer:{peer['http_port']}"
    cp = subprocess.run(["curl", "-sS", "-v", "-m", "30", "--proxy",
                         f"http://u:secret@127.0.0.1:{proxy['port']}",
                         f"{base}/one", f"{base}/two?x=1"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    answers = [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]
    assert [(a["host"], a["path"], a["host_header"]) for a in answers] == [
        ("peer", "/one", f"peer:{peer['http_port']}"),
        ("peer", "/two?x=1", f"peer:{peer['http_port']}")]
    # one proxy connection served both (curl says so, and so does the proxy's log) ...
    assert "Re-using existing connection" in cp.stderr, cp.stderr
    # ... and a python client through HTTP_PROXY: a POST with a body, then a large answer
    code = f"""
        import http.client, base64
        c = http.client.HTTPConnection("127.0.0.1", {proxy['port']}, timeout=30)
        auth = {{"Proxy-Authorization": "Basic " + base64.b64encode(b"u:secret").decode()}}
        c.request("POST", "{base}/post", body=b"z" * 300000, headers=auth)
        r = c.getresponse(); print(r.status, r.read().decode().strip())
        c.request("GET", "{base}/bytes/2000000", headers=auth)
        r = c.getresponse(); data = r.read(); print(r.status, len(data), data == (bytes(range(256)) * 7813)[:2000000])
    """
    py = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=60)
    assert py.returncode == 0, py.stderr
    first, second = py.stdout.splitlines()
    status, body = first.split(" ", 1)
    assert status == "200" and json.loads(body)["body_len"] == 300000
    assert second == "200 2000000 True"
    log = _stop(proxy)
    label = f"http peer:{peer['http_port']} ok"
    assert sum(label in line for line in log.splitlines()) == 4, log
    assert sum("(request 2 on the connection, origin reused)" in line
               for line in log.splitlines()) == 2, log

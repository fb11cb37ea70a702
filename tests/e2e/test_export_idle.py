"""--export-idle-timeout on the local tailnet (issue 13): an export a tailnet peer uses stays;
once nobody has connected for the timeout the node withdraws it (the peer is refused, and
`top --once --json` and `ps` show it withdrawn); the program's next listen() exports it
again."""
import json
import subprocess
import time

import pytest

from helpers import py, readline, run_tp
from test_agent import AGENT, ident, popen_tpa  # noqa: F401 (fixture)

pytestmark = pytest.mark.tailnet

IDLE_S = 3


def peer_get(testnet, host: str, port: int) -> subprocess.CompletedProcess:
    p = testnet["peers"]["peer"]
    return subprocess.run(["ip", "netns", "exec", p["netns"], "curl", "-sS", "-m", "5",
                           "--socks5-hostname", p["socks5"], f"http://{host}:{port}/"],
                          capture_output=True, text=True, timeout=30)


def program_view(host: str, pid: int) -> dict:
    top = json.loads(run_tp("top", "--once", "--json", env=AGENT, timeout=60).stdout)
    [agent] = [a for a in top["agents"] if a["hostname"] == host]
    [prog] = [p for p in agent["programs"] if p["pid"] == pid]
    return dict(prog, node_name=agent["node_name"])


def test_an_unused_export_is_withdrawn_until_the_next_listen(ident, testnet):
    state, host = ident
    server = py("""
        import http.server, os, sys, threading
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"served")
            def log_message(self, *a): pass
        s = http.server.HTTPServer(("127.0.0.1", 0), H)
        port = s.server_address[1]
        threading.Thread(target=s.serve_forever, daemon=True).start()
        print("PORT", port, os.getpid(), flush=True)
        for line in sys.stdin:
            s.shutdown(); s.server_close()          # stop listening, then listen again
            s = http.server.HTTPServer(("127.0.0.1", port), H)
            threading.Thread(target=s.serve_forever, daemon=True).start()
            print("AGAIN", flush=True)
    """)
    p = popen_tpa(ident, "--linger", "0", "--export-listeners", "--export-idle-timeout",
                  str(IDLE_S), *server, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    try:
        words = readline(p.stdout, 90).split()
        assert words[0] == "PORT", words
        port, pid = int(words[1]), int(words[2])
        deadline = time.monotonic() + 20
        while port not in (view := program_view(host, pid))["exports"]:
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
        assert view["export_idle_timeout"] == IDLE_S and view["withdrawn"] == []
        name = view["node_name"]
        # in use: each fetch starts the timeout again, so it is still there after 2 timeouts
        for _ in range(4):
            got = peer_get(testnet, name, port)
            assert got.stdout == "served", got
            time.sleep(IDLE_S / 2)
        # unused for longer than the timeout: withdrawn
        deadline = time.monotonic() + IDLE_S + 10
        while port not in (view := program_view(host, pid))["withdrawn"]:
            assert time.monotonic() < deadline, view
            time.sleep(0.3)
        assert view["exports"] == []
        assert peer_get(testnet, name, port).returncode != 0
        ps = run_tp("ps", env=AGENT, timeout=60).stdout
        assert f"withdrawn {port}" in ps, ps
        # the program listens again: exported again
        p.stdin.write("again\n")
        p.stdin.flush()
        assert readline(p.stdout, 30).strip() == "AGAIN"
        deadline = time.monotonic() + 20
        while port not in (view := program_view(host, pid))["exports"]:
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
        assert view["withdrawn"] == []
        assert peer_get(testnet, name, port).stdout == "served"
    finally:
        p.stdin.close()
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

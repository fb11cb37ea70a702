"""`tailproxy top` in a real terminal (tmux, 80x24) against a live agent on the local tailnet
(issue 13): it shows a program's open connection through the exit node, the keys switch to the
peers and programs views, a filter hides and shows rows, and q quits."""
import os
import subprocess
import sys
import time

import pytest

from helpers import py, readline
from test_agent import ident, popen_tpa  # noqa: F401 (fixture)

pytestmark = pytest.mark.tailnet


class Tmux:
    def __init__(self, sock: str):
        self.sock = sock

    def __call__(self, *args, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True, text=True,
                              timeout=20, check=check)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout

    def wait_for(self, pred, what: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} on the screen:\n{s}")
            time.sleep(0.25)


def test_top_live_keys_and_filter(ident, testnet, short_tmp):
    inet = testnet["internet"]
    end = str(short_tmp / "end")
    dest = f"{inet['ipv4']}:{inet['http_port']}"
    program = py(f"""
        import os, socket, time
        held = socket.create_connection(({inet['ipv4']!r}, {inet['http_port']}), timeout=20)
        held.sendall(b"GET / HTTP/1.1\\r\\n")
        print("READY", os.getpid(), flush=True)
        while not os.path.exists({end!r}):
            time.sleep(0.05)
    """)
    p = popen_tpa(ident, "--linger", "0", "--exit-node", "exit", *program,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmux = Tmux(str(short_tmp / "tmux.sock"))
    try:
        ready = readline(p.stdout, 90).split()
        assert ready[:1] == ["READY"], ready
        pid = ready[1]
        env = " ".join(f"{k}={v}" for k, v in os.environ.items()
                       if k in ("PYTHONPATH", "XDG_RUNTIME_DIR", "HOME", "PATH"))
        tmux("new-session", "-d", "-s", "top", "-x", "80", "-y", "24",
             f"env {env} TERM=xterm-256color {sys.executable} -m tailproxy top")
        s = tmux.wait_for(lambda s: dest in s and "exit-node" in s, "held connection")
        assert pid in s and "[connections]" in s
        lines = s.splitlines()
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
        tmux("send-keys", "-t", "top", "n")
        s = tmux.wait_for(lambda s: "[peers]" in s, "peers view")
        assert any(line.lstrip().startswith("exit ") and "exit." in line
                   for line in s.splitlines()), s
        tmux("send-keys", "-t", "top", "p")
        s = tmux.wait_for(lambda s: "[programs]" in s and pid in s, "programs view")
        tmux("send-keys", "-t", "top", "c", "/", "nomatch", "Enter")
        s = tmux.wait_for(lambda s: "filter: nomatch" in s and "[connections]" in s, "filter")
        assert dest not in s
        tmux("send-keys", "-t", "top", "/", inet["ipv4"], "Enter")
        tmux.wait_for(lambda s: dest in s and f"filter: {inet['ipv4']}" in s, "filtered row")
        tmux("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 15
        while tmux("has-session", "-t", "top", check=False).returncode == 0:
            assert time.monotonic() < deadline, "top did not quit on q"
            time.sleep(0.2)
    finally:
        tmux("kill-server", check=False)
        open(end, "w").close()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

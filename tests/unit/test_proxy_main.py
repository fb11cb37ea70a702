"""python -m tailproxy.proxy: ready line, serving, clean exit on SIGTERM."""

import os
import re
import signal
import socket
import subprocess
import sys

from test_proxy_harness import channel_request, connect_via_channel, cp
from timedio import readline

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def start(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen([sys.executable, "-m", "tailproxy.proxy", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    line = readline(p.stdout, 60)
    assert re.fullmatch(r"ready park=\d+,\d+\n", line), \
        (line, p.stderr.read() if p.poll() is not None else "")
    return p


def test_standalone(tmp_path):
    path = str(tmp_path / "run" / "ch.sock")
    p = start("--no-tailnet", "--channel", path, "--socks5", "127.0.0.1:0",
              "--socks5-auth", "u:p", "--verbose")
    try:
        lst = socket.create_server(("127.0.0.1", 0))
        s = socket.socket()
        rep = connect_via_channel(path, s, "127.0.0.1", lst.getsockname()[1], blocking=True)
        assert rep.err == 0
        c, _ = lst.accept()
        s.sendall(b"hi")
        assert c.recv(2) == b"hi"
        s.close()
        c.close()
        assert channel_request(path, cp.encode_status(rep.token)).err == 0
        s = socket.socket()
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        rep = connect_via_channel(path, s, "127.0.0.1", dead.getsockname()[1], blocking=True)
        assert rep.err == 111
        s.close()
        dead.close()
        lst.close()
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert "socks5 127.0.0.1:" in err
    assert "tailproxy: channel 127.0.0.1:" in err
    assert not os.path.exists(path)


def test_requires_no_tailnet():
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run([sys.executable, "-m", "tailproxy.proxy", "--channel", "/tmp/x"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2

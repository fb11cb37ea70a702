"""`tailproxy --export-listeners`: the program's servers on the tailnet, and only there."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import readline, tailproxy_argv
from tailproxy import control
from tailproxy.proxyproto import decode

pytestmark = pytest.mark.tailnet

# A server whose sockets the test drives over stdin: one command per line, "ok" per command.
DRIVER = textwrap.dedent(r"""
    import os, socket, sys
    socks = {}
    def listen(port, reuse=False, fam=socket.AF_INET, addr="0.0.0.0"):
        s = socket.socket(fam)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((addr, port)); s.listen(); return s
    for line in sys.stdin:
        cmd, *a = line.split()
        if cmd == "listen": socks[a[0]] = listen(int(a[1]))
        elif cmd == "listen6": socks[a[0]] = listen(int(a[1]), fam=socket.AF_INET6, addr="::")
        elif cmd == "listen0":
            s = socket.socket(); s.listen(); socks[a[0]] = s; print(s.getsockname()[1], flush=True)
        elif cmd == "reuse": socks[a[0]] = listen(int(a[1]), reuse=True)
        elif cmd == "dup": socks[a[1]] = socket.socket(fileno=os.dup(socks[a[0]].fileno()))
        elif cmd == "close": socks.pop(a[0]).close()
        elif cmd == "forkclose":
            pid = os.fork()
            if pid == 0:
                socks[a[0]].close(); os._exit(0)
            os.waitpid(pid, 0)
        elif cmd == "spawn":      # a separate server process (exec'd, preloaded), for kill -9
            import subprocess
            code = "import socket,time;s=socket.socket();s.bind(('0.0.0.0',%d));s.listen();time.sleep(600)" % int(a[0])
            proc = subprocess.Popen([sys.executable, "-c", code]); print(proc.pid, flush=True)
        elif cmd == "serve":      # answer one connection: echo what the client sent first
            c, _ = socks[a[0]].accept(); data = c.recv(4096); c.sendall(b"got:" + data); c.close()
        print("ok", flush=True)
""")


class Server:
    def __init__(self, hostname, state, *extra):
        self.hostname = hostname
        self.p = subprocess.Popen(
            tailproxy_argv("--state-dir", state, "--hostname", hostname, "--export-listeners",
                           *extra, sys.executable, "-u", "-c", DRIVER),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def do(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return readline(self.p.stdout).strip()

    def info(self):
        for _ in range(200):
            for _, i in control.running():
                if i.get("hostname") == self.hostname and i.get("pid") == self.p.pid:
                    return i
            time.sleep(0.1)
        raise AssertionError("tailproxy did not come up:\n" + self.stop())

    def exports(self):
        return self.info()["exports"]

    def wait_exports(self, want, within=2.0):
        deadline = time.monotonic() + within
        while True:
            got = self.exports()
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def stop(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
        return self.p.stderr.read()


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "state")


def peer_fetch(testnet, host, port, path="/", timeout=20):
    p = testnet["peers"]["peer"]
    return subprocess.run(["ip", "netns", "exec", p["netns"], "curl", "-sS", "-m", str(timeout),
                           "--socks5-hostname", p["socks5"], f"http://{host}:{port}{path}"],
                          capture_output=True, text=True)


def peer_nc(testnet, host, port, data: bytes) -> subprocess.CompletedProcess:
    """Send data from peer through its tailscaled and read the reply. `tailscale nc` ends the
    connection at stdin's EOF, so stdin stays open a moment after the data."""
    p = testnet["peers"]["peer"]
    feed = "cat; sleep 2"
    return subprocess.run(["ip", "netns", "exec", p["netns"], "sh", "-c",
                           f'({feed}) | "$0" --socket="$1" nc "$2" "$3"',
                           testnet["bin"]["tailscale"], p["socket"], host, str(port)],
                          input=data, capture_output=True, timeout=20)


def start_cmd(hostname, state, argv, ready, *extra):
    p = subprocess.Popen(tailproxy_argv("--state-dir", state, "--hostname", hostname,
                                        "--export-listeners", *extra, *argv),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = readline(p.stderr)
        lines.append(line)
        if ready in line or not line:
            break
    return p, "".join(lines)


def stop_cmd(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def loopback_only(port):
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    addrs = [line.split()[3] for line in out.splitlines() if line.strip()]
    assert addrs, out
    assert all(a.startswith(("127.", "[::1]")) for a in addrs), addrs


def not_reachable_from_lan(testnet, port):
    # the control host is on the same LAN as the client host, outside the tailnet path
    ctl = testnet["control"]["netns"]
    cp = subprocess.run(["ip", "netns", "exec", ctl, "curl", "-sS", "-m", "3",
                         f"http://{testnet['client']['ipv4']}:{port}/"], capture_output=True, text=True)
    assert cp.returncode != 0, cp.stdout


@pytest.mark.parametrize("server", ["python", "node", "nginx"])
def test_servers_reachable_from_peer_only(testnet, state, tmp_path, server):
    port = {"python": 8000, "node": 8001, "nginx": 8002}[server]
    host = f"exp-{server}"
    if server == "python":
        argv = [sys.executable, "-m", "http.server", str(port)]
    elif server == "node":
        argv = ["node", "-e", f"require('http').createServer((q, r) => r.end('node says hi\\n'))"
                              f".listen({port}, '0.0.0.0')"]
    else:
        if not shutil.which("nginx"):
            pytest.fail("nginx is not installed (make deps installs nginx-light)")
        (tmp_path / "www").mkdir()
        (tmp_path / "www" / "index.html").write_text("nginx says hi\n")
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
            user root; daemon off; worker_processes 2; pid {tmp_path}/nginx.pid; error_log stderr;
            events {{}}
            http {{ access_log off; client_body_temp_path {tmp_path};
                    server {{ listen {port}; listen [::]:{port}; root {tmp_path}/www; }} }}
        """)
        argv = ["nginx", "-c", str(conf), "-p", str(tmp_path)]
    p, log = start_cmd(host, state, argv, f"exported port {port}")
    try:
        assert f"exported port {port}" in log, log
        assert f"http://{host}." in log
        fqdn = f"{host}.{testnet['domain']}"
        for target in (host, fqdn):
            cp = peer_fetch(testnet, target, port)
            assert cp.returncode == 0 and ("says hi" in cp.stdout or "Directory listing" in cp.stdout), \
                (target, cp.stderr)
        loopback_only(port)
        not_reachable_from_lan(testnet, port)
    finally:
        stop_cmd(p)


def test_lifetimes(testnet, state):
    s = Server("exp-life", state)
    try:
        assert s.info()
        assert s.do("listen a 8100") == "ok"
        assert s.wait_exports([8100]) == [8100]
        t = time.monotonic()
        s.do("close a")
        assert s.wait_exports([], within=1.0) == [], "export outlived its listener"
        assert time.monotonic() - t <= 1.0
        # restart on the same port
        s.do("listen a 8100")
        assert s.wait_exports([8100]) == [8100]
        # dup, then close the original: still served by the copy
        s.do("dup a b")
        s.do("close a")
        time.sleep(0.6)
        assert s.exports() == [8100]
        s.do("close b")
        assert s.wait_exports([], within=1.0) == []
        # a forked child closing its inherited copy does not end the parent's export
        s.do("listen c 8101")
        assert s.wait_exports([8101]) == [8101]
        s.do("forkclose c")
        time.sleep(0.6)
        assert s.exports() == [8101]
        # reachable, with the data both ways
        s.p.stdin.write("serve c\n")
        s.p.stdin.flush()
        cp = peer_nc(testnet, "exp-life", 8101, b"hello")
        assert cp.stdout.startswith(b"got:hello"), cp
        assert readline(s.p.stdout).strip() == "ok"
        # port 0 and listen() without bind export the kernel's choice, on loopback
        port = int(s.do("listen0 z"))
        assert readline(s.p.stdout).strip() == "ok"
        assert port in s.wait_exports(sorted([8101, port]))
        loopback_only(port)
    finally:
        s.stop()


def test_kill_9_removes_export(testnet, state):
    s = Server("exp-kill", state)
    try:
        s.info()
        pid = int(s.do("spawn 8110"))
        assert readline(s.p.stdout).strip() == "ok"
        assert s.wait_exports([8110], within=5) == [8110]
        os.kill(pid, signal.SIGKILL)
        t = time.monotonic()
        assert s.wait_exports([], within=1.0) == [], "a killed server left its export behind"
        assert time.monotonic() - t <= 1.0
        assert s.p.poll() is None      # tailproxy and its program go on
    finally:
        s.stop()


def test_reuseport_two_processes_refcounted(testnet, state):
    s = Server("exp-reuse", state)
    try:
        s.info()
        s.do("reuse a 8120")
        assert s.wait_exports([8120]) == [8120]
        # a second process of the same run on the same port (SO_REUSEPORT)
        second = subprocess.Popen(
            [sys.executable, "-u", "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=dict(os.environ, **_child_env_of(s.p.pid)))
        second.stdin.write("reuse b 8120\n")
        second.stdin.flush()
        assert readline(second.stdout).strip() == "ok"
        s.do("close a")
        time.sleep(0.6)
        assert s.exports() == [8120], "export ended while another process still listens"
        second.stdin.write("close b\n")
        second.stdin.flush()
        readline(second.stdout)
        assert s.wait_exports([], within=1.0) == []
        second.stdin.close()
        second.wait(5)
    finally:
        s.stop()


def _child_env_of(pid):
    """The preload environment tailproxy gave its program (to start a second process of the run)."""
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        raw = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
        env = dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
        if "TAILPROXY_SOCKET" in env:     # the program, not the node
            return {k: v for k, v in env.items() if k.startswith("TAILPROXY_") or k == "LD_PRELOAD"}
    raise AssertionError("no child of tailproxy carries the preload environment")


def test_filters_and_max(testnet, state):
    s = Server("exp-filter", state, "--export-allow-ports", "8200-8210,8300",
               "--export-deny-ports", "8205", "--export-max", "2")
    try:
        s.info()
        s.do("listen a 8201")
        s.do("listen b 8205")     # denied (deny wins over allow)
        s.do("listen c 8250")     # not allowed
        s.do("listen d 8300")
        s.do("listen e 8202")     # over --export-max
        assert s.wait_exports([8201, 8300]) == [8201, 8300]
    finally:
        err = s.stop()
    assert "not exporting port 8205: it is in --export-deny-ports" in err
    assert "not exporting port 8250: it is not in --export-allow-ports" in err
    assert "not exporting port 8202: --export-max=2" in err


@pytest.mark.parametrize("flag, value, needle", [
    ("--export-allow-ports", "80,x", "'x' is not a port"),
    ("--export-deny-ports", "9-1", "start is after its end"),
    ("--export-max", "0", "at least 1"),
])
def test_invalid_specs_fail_at_startup(flag, value, needle):
    cp = subprocess.run(tailproxy_argv("--export-listeners", flag, value, "true"),
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 2 and needle in cp.stderr


def test_proxy_protocol_header_carries_the_peer(testnet, state):
    s = Server("exp-pp", state, "--export-proxy-protocol")
    try:
        s.info()
        s.do("listen a 8400")
        assert s.wait_exports([8400]) == [8400]
        s.p.stdin.write("serve a\n")
        s.p.stdin.flush()
        cp = peer_nc(testnet, "exp-pp", 8400, b"hello")
        assert readline(s.p.stdout).strip() == "ok"
    finally:
        s.stop()
    reply = cp.stdout
    assert reply.startswith(b"got:"), cp
    src, dst = decode(reply[4:])
    assert src[0] in (testnet["peers"]["peer"]["ipv4"], testnet["peers"]["peer"]["ipv6"])


def stderr_until(p, word: str, within: float) -> str:
    """What p wrote to stderr until a line with `word` (or `within` seconds passed)."""
    import select
    fd, got = p.stderr.fileno(), b""
    deadline = time.monotonic() + within
    while word.encode() not in got and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
    return got.decode(errors="replace")


def test_verbose_logs_each_inbound_connection_with_the_peer_identity(testnet, state):
    s = Server("exp-verbose", state, "--verbose", "--export-proxy-protocol")
    try:
        s.info()
        s.do("listen a 8500")
        assert s.wait_exports([8500]) == [8500]
        s.p.stdin.write("serve a\n")
        s.p.stdin.flush()
        cp = peer_nc(testnet, "exp-verbose", 8500, b"hello")
        assert readline(s.p.stdout).strip() == "ok"
        early = stderr_until(s.p, "inbound", 15)  # the node reports a connection when it ended
    finally:
        err = s.stop()
    err = early + err
    peer = testnet["peers"]["peer"]
    assert cp.stdout.startswith(b"got:"), cp
    src, _ = decode(cp.stdout[4:])                     # PROXY v2 still carries the peer
    assert src[0] in (peer["ipv4"], peer["ipv6"])
    line = next((l for l in err.splitlines() if "inbound" in l), None)
    assert line is not None, err
    # "inbound <peer ip>:<port> (<peer node>, <peer user>) -> port 8500 127.0.0.1:8500 ok up=.."
    assert f"inbound {src[0]}:{src[1]} (" in line or f"inbound [{src[0]}]:{src[1]} (" in line, line
    assert f"({peer['fqdn'].rstrip('.')}, " in line and "unknown user" not in line, line
    # ok, or cut: the driver reads once (maybe the header alone) and closes, and a close with
    # unread data is a reset
    assert re.search(r"-> port 8500 127\.0\.0\.1:8500 (ok|cut \(.+\)) up=\d+B down=\d+B \d+\.\d{3}s$",
                     line), line


def test_ipv6_only_listener_is_forwarded_to_ipv6_loopback(testnet, state):
    """A program listening on [::]:port only (held to [::1]) is served through [::1]: with
    nothing on 127.0.0.1:port, a forward to 127.0.0.1 would be refused."""
    s = Server("exp-v6", state, "--verbose")
    try:
        s.info()
        assert s.do("listen6 a 8600") == "ok"
        assert s.wait_exports([8600]) == [8600]
        out = subprocess.run(["ss", "-Hltn", "sport = :8600"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in out.splitlines() if line.strip()] == ["[::1]:8600"], out
        s.p.stdin.write("serve a\n")
        s.p.stdin.flush()
        cp = peer_nc(testnet, "exp-v6", 8600, b"hello")
        if not cp.stdout.startswith(b"got:"):
            _release_accept(("::1", 8600))              # so the driver answers and stops
        assert readline(s.p.stdout).strip() == "ok"
        time.sleep(0.5)             # the node reports a connection when it has ended
    finally:
        err = s.stop()
    assert cp.stdout == b"got:hello", (cp, err)
    assert "exported port 8600: " in err and "(forwarded to [::1]:8600)" in err, err
    line = next(l for l in err.splitlines() if "inbound" in l)
    assert "-> port 8600 [::1]:8600 ok up=5B down=9B" in line, line
    assert f"({testnet['peers']['peer']['fqdn'].rstrip('.')}, " in line, line


def test_export_follows_the_loopback_address_still_listening(testnet, state):
    """Listeners on 127.0.0.1 and [::1] at one port; when the IPv4 one closes, the export goes on
    through [::1] (the node listens on the port again, at once)."""
    s = Server("exp-follow", state)
    try:
        s.info()
        assert s.do("listen a 8610") == "ok"
        assert s.do("listen6 b 8610") == "ok"
        assert s.wait_exports([8610]) == [8610]
        s.do("close a")
        time.sleep(0.6)
        assert s.exports() == [8610]
        s.p.stdin.write("serve b\n")
        s.p.stdin.flush()
        cp = peer_nc(testnet, "exp-follow", 8610, b"hello")
        if not cp.stdout.startswith(b"got:"):
            _release_accept(("::1", 8610))
        assert readline(s.p.stdout).strip() == "ok"
    finally:
        err = s.stop()
    assert "(forwarded to 127.0.0.1:8610)" in err and "port 8610 is now forwarded to [::1]:8610" in err, err
    assert cp.stdout == b"got:hello", (cp, err)


def _release_accept(addr):
    import socket
    try:
        with socket.create_connection(addr, timeout=2) as c:
            c.sendall(b"x")
    except OSError:
        pass

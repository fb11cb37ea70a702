"""Issue 9's guarantees for the in-process node, end to end on the local tailnet: real programs
under tailproxy, real peers. Each test says what would make it fail. Every wait is bounded, and
only testnet addresses are used (nothing leaves this machine).

Tests run on the client host (where tailproxy runs); servers on `peer` run in its namespace on
loopback, where its userspace tailscaled forwards inbound tailnet connections.
"""
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from helpers import REPO, in_netns, py, run_tp, tailproxy_argv
from tailproxy import control

pytestmark = pytest.mark.tailnet


# ---- helpers ------------------------------------------------------------------------------

class Lines:
    """A process's output read line by line with a deadline (a reader thread feeds a queue),
    so that no wait on a child can hang the test."""

    def __init__(self, stream):
        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        t.start()

    def _pump(self, stream):
        for raw in iter(stream.readline, b"" if "b" in getattr(stream, "mode", "") else ""):
            line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line, or None at EOF; raises AssertionError after `timeout` seconds."""
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s; so far: {self.seen[-10:]}") from None
        if line is not None:
            self.seen.append(line)
        return line

    def until(self, pred, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"EOF before the expected line; got: {self.seen[-10:]}")
            if pred(line):
                return line

    def rest(self, timeout: float) -> list[str]:
        """Lines until EOF (bounded)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.next(max(0.01, deadline - time.monotonic()))
            except AssertionError:
                return out
            if line is None:
                return out
            out.append(line)


class PeerServer:
    """A Python server in the peer's namespace; it prints "ready" once listening."""

    def __init__(self, testnet, code: str):
        self.p = in_netns(testnet["peers"]["peer"]["netns"], py(code),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out = Lines(self.p.stdout)
        assert self.out.next(20) == "ready", self.out.seen

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        stop(self.p)


def stop(p: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


@pytest.fixture(scope="module")
def peer(testnet):
    return testnet["peers"]["peer"]


@pytest.fixture(scope="module")
def tp_state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("guarantees"))


def tp(tp_state, *args, **kw):
    return run_tp("--state-dir", tp_state, "--hostname", "guarantees", *args, **kw)


def tp_popen(state, hostname, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen(tailproxy_argv("--state-dir", state, "--hostname", hostname, *args),
                            **kw)


def run_info(pid: int, timeout: float = 90) -> dict:
    """`tailproxy ps`'s entry for the tailproxy with this pid, once it is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, i in control.running():
            if i.get("pid") == pid and i.get("ips"):
                return i
        time.sleep(0.1)
    raise AssertionError(f"tailproxy {pid} did not show up in `tailproxy ps` within {timeout}s")


def child_pid(pid: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids = open(f"/proc/{pid}/task/{task}/children").read().split()
            if kids:
                return int(kids[0])
        time.sleep(0.05)
    raise AssertionError(f"tailproxy {pid} started no program within {timeout}s")


def environ_of(pid: int) -> dict:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)


def listening(pid: int, proto: str = "t") -> list[tuple[str, int]]:
    """(address, port) of the sockets of process `pid` that `ss -l` lists (proto t or u)."""
    out = subprocess.run(["ss", f"-Hl{proto}np"], capture_output=True, text=True, timeout=20).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        found.append((host.strip("[]").split("%")[0], int(port)))
    return found


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1")


def cleanup_rundir(stdout: str) -> None:
    for line in stdout.splitlines():   # a SIGKILLed tailproxy cannot remove its run dir
        if line.startswith("RUNDIR "):
            shutil.rmtree(line.split(None, 1)[1], ignore_errors=True)


# Runs on the peer host: connects through the peer's userspace tailscaled's SOCKS5 (as any
# tailnet client would) to each target and says what came back.
PROBE = r"""
import json, socket, struct, sys, threading, ipaddress
socks_host, socks_port = sys.argv[1].rsplit(":", 1)
targets = json.loads(sys.argv[2])
results = {}
def probe(name, ip, port, payload):
    r = {"socks": None, "got": 0, "end": None}
    s = socket.create_connection((socks_host, int(socks_port)), timeout=8)
    try:
        s.sendall(b"\x05\x01\x00"); assert s.recv(2) == b"\x05\x00"
        a = ipaddress.ip_address(ip)
        s.sendall(b"\x05\x01\x00" + (b"\x01" if a.version == 4 else b"\x04") + a.packed
                  + struct.pack(">H", port))
        rep = b""
        while len(rep) < 4:
            c = s.recv(4 - len(rep))
            if not c: break
            rep += c
        r["socks"] = rep[1] if len(rep) > 1 else -1
        if r["socks"] == 0:
            rest = {1: 6, 4: 18}.get(rep[3]) or s.recv(1)[0] + 2   # the bound address
            while rest > 0:
                rest -= len(s.recv(rest))
            s.settimeout(5)
            s.sendall(payload.encode("latin-1"))
            try:
                while True:
                    c = s.recv(65536)
                    if not c:
                        r["end"] = "eof"; break
                    if not r["got"]:
                        r["head"] = c[:300].decode("latin-1")
                    r["got"] += len(c)
                    if r["got"] > 1024:
                        r["end"] = "data"; break
            except socket.timeout:
                r["end"] = "timeout"
            except OSError as e:
                r["end"] = type(e).__name__
    except OSError as e:
        r["end"] = type(e).__name__
    finally:
        s.close()
    results[name] = r
ts = [threading.Thread(target=probe, args=t) for t in targets]
[t.start() for t in ts]; [t.join(20) for t in ts]
print(json.dumps(results))
"""

HTTP_GET = "GET / HTTP/1.0\r\nHost: x\r\n\r\n"
DNS_QUERY = (struct.pack(">H", 22) + struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
             + b"\x04peer\x00" + struct.pack(">HH", 1, 1)).decode("latin-1")
SOCKS_HELLO = "\x05\x01\x00"


def probe_from_peer(testnet, targets: list) -> dict:
    p = testnet["peers"]["peer"]
    cp = subprocess.run(["ip", "netns", "exec", p["netns"], sys.executable, "-c", PROBE,
                         p["socks5"], json.dumps(targets)], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def reached(r: dict) -> bool:
    """A connection was established to that port of the tailproxy node, or it answered."""
    return r["socks"] == 0 or r["got"] > 0


# ---- 1. inbound: nothing but exports ------------------------------------------------------

@pytest.fixture
def client_services():
    """Two HTTP servers on the client host (not under tailproxy): one on 127.0.0.1, one on
    0.0.0.0 — what a user's laptop runs (a database, Jupyter, a dev server)."""
    procs, ports = [], {}
    for name, bind in (("svc_loopback", "127.0.0.1"), ("svc_any", "0.0.0.0")):
        s = socket.socket()
        s.bind((bind, 0))
        port = s.getsockname()[1]
        s.close()
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", bind],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      cwd=tempfile.gettempdir()))
        ports[name] = port
    try:
        for port in ports.values():
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"service on {port} did not start"
                    time.sleep(0.1)
        yield ports
    finally:
        for p in procs:
            stop(p, signal.SIGTERM)


def _inbound_scenario(testnet, tmp_path, services, argv, export_port=None):
    extra = ["--export-listeners", "--export-allow-ports", str(export_port)] if export_port else []
    hostname = "inb-export" if export_port else "inb-plain"
    p = tp_popen(str(tmp_path / hostname), hostname, *extra, *argv,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                 text=True)
    err = Lines(p.stderr)
    try:
        info = run_info(p.pid)
        ip4 = next(a for a in info["ips"] if ":" not in a)
        ip6 = next(a for a in info["ips"] if ":" in a)
        env = environ_of(child_pid(p.pid))
        dns_port = int(env["TAILPROXY_DNS_SERVER"].split(",")[0].rsplit(":", 1)[1])
        socks_port = int(env["ALL_PROXY"].rsplit(":", 1)[1])
        print("child env:", {k: v for k, v in env.items()
                             if k.startswith("TAILPROXY_") or k == "ALL_PROXY"})
        if export_port:   # wait until the export is in place
            deadline = time.monotonic() + 20
            while export_port not in run_info(p.pid)["exports"]:
                assert time.monotonic() < deadline, "the port was not exported"
                time.sleep(0.1)
        tcp = listening(p.pid, "t")
        udp = listening(p.pid, "u")
        print("tailproxy TCP listeners:", tcp, "UDP sockets:", udp)
        own_ports = {port for _, port in tcp}
        assert {dns_port, socks_port} <= own_ports, (dns_port, socks_port, tcp)
        # No tailproxy socket listens on a non-loopback address (it was not asked to). Breaks
        # if the node (or the proxy) listens on the host: tailscaled's peerAPI did, on 0.0.0.0.
        # (Asserted after the probes, so that a failure reports both.)
        not_loopback = [(a, port) for a, port in tcp if not is_loopback(a)]

        probes = [("svc_loopback", services["svc_loopback"], HTTP_GET),
                  ("svc_any", services["svc_any"], HTTP_GET),
                  ("dns", dns_port, DNS_QUERY), ("socks5", socks_port, SOCKS_HELLO)]
        # the rest: the proxy's parking ports, and whatever else tailproxy listens on (a port on
        # a non-loopback address is named "host_": the node's own, on the host)
        probes += [(f"{'own' if all(is_loopback(a) for a, q in tcp if q == port) else 'host'}_{port}",
                    port, HTTP_GET) for port in sorted(own_ports - {dns_port, socks_port})]
        targets = [[f"{name}@{ip}", ip, port, payload] for name, port, payload in probes
                   for ip in (ip4, ip6)]
        if export_port:
            targets.append([f"export@{ip4}", ip4, export_port, HTTP_GET])
        t0 = time.monotonic()
        results = probe_from_peer(testnet, targets)
        took = time.monotonic() - t0
        print(f"probes from the peer ({took:.1f}s):", json.dumps(results, indent=1))
        # Breaks when the node forwards inbound tailnet connections to this host's loopback
        # (userspace tailscaled did: these returned the services' pages, the DNS answer, the
        # SOCKS5 method choice).
        open_ = {k: v for k, v in results.items() if k != f"export@{ip4}" and reached(v)}
        if export_port:
            r = results[f"export@{ip4}"]
            assert r["socks"] == 0 and r["got"] > 0, r    # the probe does see an open port
        assert not open_, f"reachable from the peer through the tailproxy node: {open_}"
        assert took < 30, took
        assert not not_loopback, f"tailproxy listens on non-loopback addresses: {not_loopback}"
    finally:
        stop(p, signal.SIGTERM)
        err.rest(5)
        print("tailproxy stderr:", "\n".join(err.seen))


def test_inbound_closed_without_export_listeners(testnet, tmp_path, client_services):
    _inbound_scenario(testnet, tmp_path, client_services, ["sleep", "30"])


def test_inbound_closed_except_exports(testnet, tmp_path, client_services):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    _inbound_scenario(testnet, tmp_path, client_services,
                      ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                      export_port=port)


# ---- 2. half-close, the reverse direction --------------------------------------------------

# A proxy-aware program's connect: SOCKS5 through ALL_PROXY, with the per-run password.
SOCKS5_CONNECT = """
import ipaddress, os, socket, struct, urllib.parse
def connect(ip, port):
    u = urllib.parse.urlsplit(os.environ["ALL_PROXY"])
    s = socket.create_connection((u.hostname, u.port), timeout=20)
    user, pw = urllib.parse.unquote(u.username).encode(), urllib.parse.unquote(u.password).encode()
    s.sendall(b"\\x05\\x01\\x02"); assert s.recv(2) == b"\\x05\\x02"
    s.sendall(bytes([1, len(user)]) + user + bytes([len(pw)]) + pw); assert s.recv(2) == b"\\x01\\x00"
    s.sendall(b"\\x05\\x01\\x00\\x01" + ipaddress.ip_address(ip).packed + struct.pack(">H", port))
    rep = b""
    while len(rep) < 10:
        rep += s.recv(10 - len(rep))
    assert rep[1] == 0, rep
    return s
"""
PRELOAD_CONNECT = """
import socket
def connect(ip, port):
    return socket.create_connection((ip, port), timeout=20)
"""


@pytest.mark.parametrize("how", ["preload", "socks5"])
def test_half_close_peer_first_then_program_sends(testnet, tp_state, peer, how):
    """The peer's server says hello and half-closes; the program reads to EOF, then still
    sends 100,000 bytes and half-closes; the server counts them and answers on a fresh line of
    its own output. Through the preload and through ALL_PROXY (SOCKS5). Breaks if the peer's
    FIN ends the whole connection (the program's send then fails or is lost: tailscaled's dial
    used to close both directions at the first EOF)."""
    code = """
        import socket
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("127.0.0.1", 2402)); l.listen()
        print("ready", flush=True)
        c, _ = l.accept(); c.settimeout(30)
        c.sendall(b"hello\\n"); c.shutdown(socket.SHUT_WR)
        n = 0
        try:
            while (d := c.recv(65536)):
                n += len(d)
            print("got", n, flush=True)
        except OSError as e:
            print("error", e, n, flush=True)
    """
    prog = (SOCKS5_CONNECT if how == "socks5" else PRELOAD_CONNECT) + f"""
import socket, time
s = connect({peer['ipv4']!r}, 2402)
got = b""
while (d := s.recv(100)):
    got += d
print("program read", repr(got), "then EOF", flush=True)
time.sleep(0.5)           # the peer's half-close has crossed; now we still send
s.sendall(b"y" * 100000); s.shutdown(socket.SHUT_WR)
s.settimeout(10)
print("program then read", repr(s.recv(10)), flush=True)
"""
    with PeerServer(testnet, code) as srv:
        cp = tp(tp_state, sys.executable, "-c", prog, timeout=90)
        print(cp.stdout, cp.stderr)
        assert "program read b'hello\\n' then EOF" in cp.stdout, cp.stdout + cp.stderr
        assert srv.out.next(30) == "got 100000", srv.out.seen
        assert "program then read b''" in cp.stdout, cp.stdout
        assert cp.returncode == 0, cp.stderr


# ---- 3. 512 MiB upload, whole, 5 of 5 -------------------------------------------------------

UPLOAD_MIB = 512
UPLOAD_SEED = 9


def upload_chunks_code() -> str:
    """Python source defining chunks(): 512 chunks of 1 MiB, each a seeded random block with
    its index in the first 8 bytes (a lost, repeated or reordered chunk changes the hash)."""
    return f"""
import random, struct
BLOCK = random.Random({UPLOAD_SEED}).randbytes(1 << 20)
def chunks():
    for i in range({UPLOAD_MIB}):
        yield struct.pack(">Q", i) + BLOCK[8:]
"""


def test_512mib_upload_then_exit_arrives_whole_5_of_5(testnet, tp_state, peer):
    """A program sends 512 MiB, closes and exits at once; the peer's server counts and hashes
    what arrived. Breaks if tailproxy stops the node (or a relay ends) before the last bytes
    crossed: the count or the hash differs, or the server never sees the end."""
    ns: dict = {}
    exec(upload_chunks_code(), ns)
    h = hashlib.sha256()
    for c in ns["chunks"]():
        h.update(c)
    want = f"{UPLOAD_MIB << 20} {h.hexdigest()}"
    code = """
        import hashlib, socket
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("127.0.0.1", 2403)); l.listen()
        print("ready", flush=True)
        while True:
            c, _ = l.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
            try:
                while (d := c.recv(1 << 20)):
                    n += len(d); h.update(d)
                print(n, h.hexdigest(), flush=True)
            except OSError as e:
                print("error", e, n, flush=True)
            c.close()
    """
    prog = upload_chunks_code() + f"""
import socket, time
s = socket.create_connection(({peer['ipv4']!r}, 2403), timeout=20)
t = time.monotonic()
for c in chunks():
    s.sendall(c)
s.close()
print("sent in %.1fs" % (time.monotonic() - t), flush=True)
"""
    results, times = [], []
    with PeerServer(testnet, code) as srv:
        for run in range(5):
            t0 = time.monotonic()
            cp = tp(tp_state, sys.executable, "-c", prog, timeout=300)
            took = time.monotonic() - t0
            got = srv.out.next(120)
            times.append(round(took, 1))
            results.append(got == want)
            print(f"run {run + 1}: tailproxy exited {cp.returncode} after {took:.1f}s "
                  f"({cp.stdout.strip()}); server: {got}; {cp.stderr.strip()[-300:]}")
            assert cp.returncode == 0, cp.stderr
    print("per-run seconds:", times, "whole:", results)
    assert results == [True] * 5, f"want {want!r}; runs whole: {results}"


# ---- 4. a cut transfer is never a clean EOF -------------------------------------------------

DOWNLOAD_UNTIL_END = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.settimeout(20)
n = 0
try:
    while True:
        d = s.recv(1 << 16)
        if not d:
            print("END EOF", n, flush=True); break
        n += len(d)
except ConnectionResetError:
    print("END ECONNRESET", n, flush=True)
except OSError as e:
    print("END", errno.errorcode.get(e.errno, e), n, flush=True)
"""

ABORTING_SERVER = """
import socket, struct, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", {port})); l.listen()
print("ready", flush=True)
c, _ = l.accept()
c.sendall(b"x" * (4 << 20))
time.sleep(0.5)          # the 4 MiB are on their way; the stream is not over
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()                # abort: a reset, not a FIN
print("aborted", flush=True)
time.sleep(30)
"""


class ExportedServer:
    """A server program under a second tailproxy that exports it (--export-listeners
    --verbose): a tailnet server whose node is ours, so a reset can cross the tailnet."""

    def __init__(self, tmp_path, hostname, port, code):
        self.port = port
        self.p = tp_popen(str(tmp_path / hostname), hostname, "--export-listeners", "--verbose",
                          sys.executable, "-u", "-c", code, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err = Lines(self.p.stdout), Lines(self.p.stderr)
        try:
            assert self.out.next(90) == "ready", self.out.seen + self.err.seen
            deadline = time.monotonic() + 20
            while port not in (info := run_info(self.p.pid))["exports"]:
                assert time.monotonic() < deadline, self.err.seen
                time.sleep(0.1)
            self.ip = next(a for a in info["ips"] if ":" not in a)
        except BaseException:
            stop(self.p)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        stop(self.p)

    def finish(self) -> list[str]:
        stop(self.p, signal.SIGTERM)
        self.err.rest(10)
        print("exporting tailproxy:", "\n".join(self.err.seen))
        return self.err.seen


def verbose_outcome(stderr: str, dest: str) -> tuple[str, str]:
    line = next((ln for ln in stderr.splitlines() if dest in ln and "up=" in ln), "")
    return line, re.sub(r".*" + re.escape(dest) + r" (.*?) up=.*", r"\1", line)


def test_server_abort_reaches_program_as_reset(testnet, tp_state, tmp_path):
    """The server aborts mid-stream (SO_LINGER 0 close). The server is a program under a second
    tailproxy that exports it, so both ends of the tailnet connection are our node: the
    exporting node sees the reset and must pass it on as a reset; the downloading program must
    get ECONNRESET, and --verbose must not log the connection plain "ok".

    (Against the testnet's `peer` this cannot hold whatever tailproxy does: its userspace
    tailscaled turns a reset from its backend into a FIN — tailscale.com v1.94.1
    wgengine/netstack forwardTCP calls client.CloseWrite() when the copy from the backend
    fails.) Breaks if the node closes the tailnet side of an aborted relay with a FIN."""
    port = 2404
    with ExportedServer(tmp_path, "abortsrv", port, ABORTING_SERVER.format(port=port)) as srv:
        cp = tp(tp_state, "--verbose", *py("import errno\n" + DOWNLOAD_UNTIL_END), srv.ip,
                str(port), timeout=90)
        print(cp.stdout, cp.stderr)
        srv.finish()
        line, outcome = verbose_outcome(cp.stderr, f"{srv.ip}:{port}")
        print("verbose outcome:", outcome)
        assert "END ECONNRESET" in cp.stdout, cp.stdout     # EOF here: a cut looks complete
        assert line and outcome != "ok", line


UPLOAD_RECEIVER = """
import errno, socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", {port})); l.listen()
print("ready", flush=True)
c, _ = l.accept(); c.settimeout(30); n = 0
try:
    while (d := c.recv(1 << 16)):
        n += len(d)
    print("END EOF", n, flush=True)
except ConnectionResetError:
    print("END ECONNRESET", n, flush=True)
except OSError as e:
    print("END", errno.errorcode.get(e.errno, e), n, flush=True)
"""


def test_program_abort_reaches_server_as_reset(testnet, tp_state, tmp_path):
    """The reverse: a program under tailproxy uploads 4 MiB, then aborts (SO_LINGER 0 close)
    and exits. The server (under a second, exporting tailproxy, as above) must get ECONNRESET,
    not a clean EOF after a partial upload. Breaks if the node passes an abort on as a FIN."""
    port = 2405
    prog = f"""
        import socket, struct, time
        s = socket.create_connection((__import__("sys").argv[1], {port}), timeout=20)
        s.sendall(b"u" * (4 << 20))
        time.sleep(1)            # the bytes are across; the upload is not over
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        print("aborted", flush=True)
        time.sleep(2)
    """
    with ExportedServer(tmp_path, "uploadsrv", port, UPLOAD_RECEIVER.format(port=port)) as srv:
        cp = tp(tp_state, "--verbose", *py(prog), srv.ip, timeout=90)
        print(cp.stdout, cp.stderr)
        end = srv.out.next(20)
        srv.finish()
        print("server:", end)
        assert "aborted" in cp.stdout, cp.stderr
        assert end.startswith("END ECONNRESET"), end


@pytest.mark.parametrize("how", ["preload", "socks5"])
def test_tailproxy_killed_mid_download_is_a_reset(tp_state, peer, how):
    """kill -9 of tailproxy (the program's parent, node and proxy in one process) at ~35% of a
    100 MB download, through the preload and through ALL_PROXY (SOCKS5): the program survives
    and its next recv fails with ECONNRESET, never a clean EOF. Breaks if the proxy-side socket
    is closed without SO_LINGER 0 (the kernel then sends a FIN when the process dies and the
    truncated download looks complete)."""
    size = 100_000_000
    prog = (SOCKS5_CONNECT if how == "socks5" else PRELOAD_CONNECT) + f"""
import errno, os, signal, socket, time
print("RUNDIR", os.path.dirname(os.environ["TAILPROXY_SOCKET"]), flush=True)
s = connect({peer['ipv4']!r}, {peer['http_port']})
s.settimeout(20)
s.sendall(b"GET /bytes/{size} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
n = 0; killed = False
try:
    while True:
        d = s.recv(1 << 16)
        if not d:
            print("END EOF", n, flush=True); break
        n += len(d)
        if not killed and n >= {size} * 35 // 100:
            os.kill(os.getppid(), signal.SIGKILL); killed = True
            print("killed tailproxy at", n, flush=True)
            time.sleep(0.5)
except ConnectionResetError:
    print("END ECONNRESET", n, flush=True)
except OSError as e:
    print("END", errno.errorcode.get(e.errno, e), n, flush=True)
"""
    cp = tp(tp_state, sys.executable, "-c", prog, timeout=120)
    cleanup_rundir(cp.stdout)
    print(cp.stdout, cp.stderr)
    assert cp.returncode == -signal.SIGKILL, cp.returncode
    assert "killed tailproxy at" in cp.stdout, cp.stdout + cp.stderr
    end = next(ln for ln in cp.stdout.splitlines() if ln.startswith("END"))
    assert end.startswith("END ECONNRESET"), end
    assert int(end.split()[-1]) < size, end


# ---- 5. offline peer / no such peer: EHOSTUNREACH at once --------------------------------------

EXTRA_NODE = """
import sys, time
from tailproxy.node import Node, NodeConfig
n = Node(NodeConfig(state_dir=sys.argv[1], hostname="gt-offline", authkey=sys.argv[2],
                    control_url=sys.argv[3]))
n.up(timeout=60)
print("ip", n.ips()[0], flush=True)
time.sleep(300)
"""

CONNECT_LOOP = """
import errno, socket, sys, time
ip, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
def attempt(tag):
    s = socket.socket(); t = time.monotonic()
    try:
        s.connect((ip, 7)); r = "CONNECTED"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    s.close()
    print(tag, r, "%.3f" % (time.monotonic() - t), flush=True)
    return r
for line in sys.stdin:
    if line.strip() == "online":
        attempt("online")
        continue
    # offline: attempt after attempt (each bounded by --connect-timeout) until EHOSTUNREACH
    while attempt("offline") != "EHOSTUNREACH" and time.monotonic() < deadline:
        pass
    for _ in range(3):
        attempt("again")
    break
"""


def peer_sees_offline(testnet, ip: str) -> bool | None:
    p = testnet["peers"]["peer"]
    cp = subprocess.run(["ip", "netns", "exec", p["netns"], testnet["bin"]["tailscale"],
                         f"--socket={p['socket']}", "status", "--json"],
                        capture_output=True, text=True, timeout=20)
    for q in (json.loads(cp.stdout).get("Peer") or {}).values():
        if ip in (q.get("TailscaleIPs") or []):
            return not q.get("Online")
    return None


def test_offline_peer_is_unreachable_at_once(testnet, tp_state, tmp_path):
    """A test-local node joins, is seen by a program under tailproxy (a connect to a closed
    port is refused), then dies (SIGKILL). Once the netmap shows it offline, a connect to it
    fails with EHOSTUNREACH in < 1 s. Breaks if an offline peer is dialled anyway (the connect
    then waits for --connect-timeout and ends ETIMEDOUT)."""
    extra = subprocess.Popen([sys.executable, "-c", EXTRA_NODE, str(tmp_path / "extra"),
                              testnet["authkey"], testnet["control_url"]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "src")))
    extra_out = Lines(extra.stdout)
    prog = None
    try:
        line = extra_out.next(90)
        assert line and line.startswith("ip "), (line, extra.stderr.read() if line is None else "")
        ip = line.split()[1]
        prog = tp_popen(tp_state, "guarantees", "--connect-timeout", "3", sys.executable, "-c",
                        CONNECT_LOOP, ip, "40", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
        out, err = Lines(prog.stdout), Lines(prog.stderr)
        prog.stdin.write("online\n")
        prog.stdin.flush()
        first = out.next(60)
        print(first)
        stop(extra)
        t_kill = time.monotonic()
        deadline = t_kill + 30
        while peer_sees_offline(testnet, ip) is not True:
            assert time.monotonic() < deadline, "the peer's view never showed the node offline"
            time.sleep(0.5)
        print(f"the peer sees it offline {time.monotonic() - t_kill:.1f}s after the kill")
        prog.stdin.write("offline\n")
        prog.stdin.close()
        lines = out.rest(60)
        print("\n".join(lines))
        print("\n".join(err.rest(5)))
        assert first.split()[1] == "ECONNREFUSED", first
        unreach = [ln for ln in lines if ln.split()[1] == "EHOSTUNREACH"]
        assert unreach, f"never EHOSTUNREACH: {lines}"
        after = lines[lines.index(unreach[0]):]
        assert len(after) == 4 and all(ln.split()[1] == "EHOSTUNREACH" and float(ln.split()[2]) < 1
                                       for ln in after), after
        tried = lines[:lines.index(unreach[0])]
        print(f"{len(tried)} attempt(s) before the client's view showed it offline, "
              f"EHOSTUNREACH after {time.monotonic() - t_kill:.1f}s")
    finally:
        stop(extra)
        if prog is not None:
            stop(prog)


@pytest.mark.parametrize("ip", ["100.64.99.99", "fd7a:115c:a1e0::9999"])
def test_no_such_peer_is_unreachable_at_once(tp_state, ip):
    """An address in the tailnet's range that is no peer: EHOSTUNREACH in < 1 s. Breaks if it
    is dialled through the node (a timeout after --connect-timeout)."""
    code = f"""
        import errno, socket, time
        s = socket.socket(socket.AF_INET6 if ":" in {ip!r} else socket.AF_INET)
        t = time.monotonic()
        try:
            s.connect(({ip!r}, 80)); print("CONNECTED")
        except OSError as e:
            print(errno.errorcode.get(e.errno, e.errno), "%.3f" % (time.monotonic() - t))
    """
    cp = tp(tp_state, "--connect-timeout", "10", *py(code), timeout=120)
    print(cp.stdout, cp.stderr)
    what, took = cp.stdout.split()
    assert what == "EHOSTUNREACH" and float(took) < 1.0, cp.stdout


# ---- 6. the first connection after start ------------------------------------------------------

FIRST_CONNECT = """
import socket, sys, time
t = time.monotonic()
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
    s.sendall(b"first\\n"); got = b""
    s.settimeout(10)
    while not got.endswith(b"\\n"):
        c = s.recv(100)
        if not c: break
        got += c
    print("FIRST", "ok" if got == b"first\\n" else repr(got), "%.3f" % (time.monotonic() - t))
except OSError as e:
    print("FIRST", "failed", e, "%.3f" % (time.monotonic() - t))
"""


@pytest.mark.parametrize("state", ["saved", "fresh"])
def test_first_connection_after_start(tp_state, tmp_path, peer, state):
    """The program's first connection to the peer, right after tailproxy starts it, succeeds
    and does not wait for a WireGuard handshake retry (5 s). With a fresh state dir the node
    key is new: the peer learns of this node only now. Breaks if a dial made before the node
    knows the peer (or before the first handshake) fails or is not retried."""
    if state == "saved":
        d, host = tp_state, "guarantees"
        run_tp("--state-dir", d, "--hostname", host, "true", check=True)   # state exists
    else:
        d, host = str(tmp_path / "fresh"), f"fresh{os.getpid() % 10000}"
    t0 = time.monotonic()
    cp = run_tp("--state-dir", d, "--hostname", host, sys.executable, "-c", FIRST_CONNECT,
                peer["ipv4"], str(peer["echo_port"]), timeout=120)
    total = time.monotonic() - t0
    print(cp.stdout, cp.stderr)
    line = next((ln for ln in cp.stdout.splitlines() if ln.startswith("FIRST")), cp.stdout)
    print(f"{state} state: first connection {line.split()[-1]}s after the program started; "
          f"tailproxy start to exit {total:.2f}s")
    assert line.split()[1] == "ok", line
    assert float(line.split()[-1]) < 5.0, line


# ---- 7. signals with the Go runtime loaded -------------------------------------------------------

SIGNAL_REPORTER = """
import signal, sys, time
print("SIGINT handler at start:", "default" if signal.getsignal(signal.SIGINT) is signal.default_int_handler
      else signal.getsignal(signal.SIGINT), flush=True)
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("SigBlk", "SigIgn")))
print("mask", status["SigBlk"].strip(), status["SigIgn"].strip(), flush=True)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, lambda n, f: print("got", signal.Signals(n).name, flush=True))
print("ready", flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    time.sleep(0.1)
"""


def test_signals_reach_the_program(tp_state, peer):
    """SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to tailproxy (which has the Go runtime loaded)
    reach the program, one by one; the program did not start with SIGINT ignored nor with any
    of them blocked. Breaks if Go's signal handlers (or a mask inherited from a Go thread) keep
    a signal from being forwarded."""
    p = tp_popen(tp_state, "guarantees", sys.executable, "-c", SIGNAL_REPORTER,
                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(p.stdout), Lines(p.stderr)
    try:
        assert out.until(lambda ln: ln == "ready", 90)
        start = out.seen[0]
        assert start == "SIGINT handler at start: default", start
        blk, ign = out.seen[1].split()[1:]
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            assert not int(blk, 16) & (1 << (sig - 1)), f"{sig.name} blocked: {out.seen[1]}"
            assert not int(ign, 16) & (1 << (sig - 1)), f"{sig.name} ignored: {out.seen[1]}"
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            p.send_signal(sig)
            line = out.next(10)
            assert line == f"got {sig.name}", (line, err.seen)
        assert p.poll() is None, "tailproxy died of a forwarded signal"
        os.kill(child_pid(p.pid), signal.SIGKILL)   # end the program; tailproxy then exits
        assert p.wait(30) == 128 + signal.SIGKILL
    finally:
        stop(p)
        print("\n".join(out.seen), "\n".join(err.rest(5)))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT],
                         ids=lambda s: s.name)
def test_exit_status_is_128_plus_signal(tp_state, sig):
    """The program dies of the forwarded signal; tailproxy exits 128+N. Breaks if the signal
    does not reach the program (it runs on: the test's bound expires) or the status is lost."""
    p = tp_popen(tp_state, "guarantees", "sh", "-c", "echo ready; exec sleep 30",
                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(p.stdout), Lines(p.stderr)
    try:
        assert out.next(90) == "ready", err.seen
        time.sleep(0.2)     # sh has exec'd sleep
        t = time.monotonic()
        p.send_signal(sig)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{sig.name} did not end the program within 10s") from None
        print(f"{sig.name}: exit {rc} after {time.monotonic() - t:.2f}s;", err.rest(5))
        assert rc == 128 + sig, rc
    finally:
        stop(p)


def test_program_starts_with_default_signal_dispositions(tp_state):
    """An exec'd program (grep, not Python, which ignores SIGPIPE itself) starts with no signal
    blocked and none ignored, as it does without tailproxy. Breaks if it inherits a mask from a
    Go thread or the SIGPIPE ignore of the Python/Go process (`yes | head` would then spin on
    EPIPE instead of dying)."""
    argv = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.split()
    cp = tp(tp_state, *argv, timeout=120)
    print("without tailproxy:", plain, "under tailproxy:", cp.stdout.split())
    assert cp.returncode == 0, cp.stderr
    # The standard signals 1-31 only: 32 and 33 are glibc's own (thread cancellation, setxid),
    # which no program sets or uses, and one CI run showed 32 ignored that no rerun did.
    def standard(words):
        return [w if not w.isalnum() or w.endswith(":") else f"{int(w, 16) & 0x7fffffff:016x}"
                for w in words]
    assert standard(cp.stdout.split()) == standard(plain), (cp.stdout, plain)
    assert standard(plain) == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16], plain


def test_program_closing_while_node_writes_does_not_kill_tailproxy(tp_state, peer):
    """The program starts a 200 MB download from the peer, reads 64 KiB and closes the socket
    while the node is still writing into it (a write to a closed socket: EPIPE/SIGPIPE for the
    writer), three times; it then still makes a connection. Breaks if the Go runtime or the
    proxy dies of SIGPIPE (tailproxy gone: the later connection fails, the status is not 0)."""
    prog = f"""
        import socket, time
        for i in range(3):
            s = socket.create_connection(({peer['ipv4']!r}, {peer['http_port']}), timeout=20)
            s.sendall(b"GET /bytes/200000000 HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            n = 0
            while n < 65536:
                n += len(s.recv(65536))
            s.close()
            print("closed after", n, flush=True)
            time.sleep(1)
        s = socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=20)
        s.settimeout(10); s.sendall(b"still here\\n"); got = b""
        while not got.endswith(b"\\n"):
            c = s.recv(100); assert c, got; got += c
        print("after:", got.decode().strip(), flush=True)
    """
    cp = tp(tp_state, *py(prog), timeout=120)
    print(cp.stdout, cp.stderr)
    assert cp.returncode == 0, (cp.returncode, cp.stderr)
    assert "after: still here" in cp.stdout, cp.stdout


# ---- 8. the library example ---------------------------------------------------------------------

def test_library_example(testnet, peer, tmp_path):
    """examples/library.py joins the tailnet as a plain script (auth key and control URL from
    the environment) and prints what the peer's HTTP service answers. Breaks if the Node API
    cannot be used as a library (import, up, dial) or the dialled socket does not carry data."""
    path = os.path.join(REPO, "examples", "library.py")
    with open(path) as f, open(os.path.join(REPO, "README.md")) as readme:
        assert f.read() in readme.read(), "README's library example is not examples/library.py"
    assert len(open(path).read().splitlines()) <= 15
    env = dict(os.environ, TS_AUTHKEY=testnet["authkey"], TAILPROXY_CONTROL_URL=testnet["control_url"],
               PYTHONPATH=os.path.join(REPO, "src"), HOME=str(tmp_path))
    t = time.monotonic()
    cp = subprocess.run([sys.executable, path, peer["fqdn"], str(peer["http_port"])],
                        capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    print(f"example ran in {time.monotonic() - t:.2f}s:", cp.stdout, cp.stderr)
    assert cp.returncode == 0, cp.stderr
    assert " 200 OK" in cp.stdout and '"host": "peer"' in cp.stdout, cp.stdout


# ---- 9. logs ------------------------------------------------------------------------------

GO_LOG = re.compile(r"\b(magicsock|wgengine|netstack|netmap|control|controlclient|ipnlocal|"
                    r"logtail|tsnet|health|dns|portmapper|derphttp|monitor|netcheck)(\.\w+)?:"
                    r"|^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d")


def test_node_log_in_state_dir_and_none_on_stderr(tmp_path, peer):
    """After a run, <state-dir>/node.log exists (0600) and holds the node's log, and tailproxy's
    stderr has none of it. Breaks if tsnet logs to fd 2 or the log file is readable by others."""
    state = str(tmp_path / "logstate")
    cp = run_tp("--state-dir", state, "--hostname", "logcheck", "curl", "-sS", "--noproxy", "*",
                "-m", "20", f"http://{peer['ipv4']}:{peer['http_port']}/", timeout=120)
    print(cp.stderr)
    assert cp.returncode == 0, cp.stderr
    log = os.path.join(state, "node.log")
    assert os.path.exists(log), os.listdir(state)
    mode = os.stat(log).st_mode & 0o777
    assert mode == 0o600, oct(mode)
    content = open(log, errors="replace").read()
    assert "magicsock" in content or "wgengine" in content, content[:2000]
    go_lines = [ln for ln in cp.stderr.splitlines() if GO_LOG.search(ln)]
    assert not go_lines, go_lines
    assert all(ln.startswith("tailproxy: ") for ln in cp.stderr.splitlines() if ln.strip()), cp.stderr

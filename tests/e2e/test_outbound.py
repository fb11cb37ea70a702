"""`tailproxy CMD` on the local tailnet: unmodified programs reach `peer` through the preload."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import in_netns, py, readline, run_tp

pytestmark = pytest.mark.tailnet


@pytest.fixture(scope="module")
def tp_state(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tpstate"))


@pytest.fixture(scope="module")
def peer(testnet):
    return testnet["peers"]["peer"]


def tp(tp_state, *args, **kw):
    return run_tp("--state-dir", tp_state, "--hostname", "outbound", *args, **kw)


def url(ip, port):
    return f"http://[{ip}]:{port}/" if ":" in ip else f"http://{ip}:{port}/"


CLIENTS = {
    # proxy variables are ignored/cleared so that the preload path is what is tested
    "curl": lambda u: ["curl", "-sS", "-g", "--noproxy", "*", "-m", "20", u],
    "wget": lambda u: ["wget", "-q", "-O", "-", "--no-proxy", "-T", "20", u],
    "python-urllib": lambda u: py(f"""
        import urllib.request
        op = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
        print(op.open({u!r}, timeout=20).read().decode())"""),
    "python-asyncio": lambda u: py(f"""
        import asyncio, urllib.parse
        async def main():
            p = urllib.parse.urlsplit({u!r})
            r, w = await asyncio.open_connection(p.hostname, p.port)
            w.write(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n"); await w.drain()
            print((await r.read()).decode())
        asyncio.run(main())"""),
    "node": lambda u: ["node", "-e", f"""
        require('http').get({json.dumps(u)}, r => {{ let d=''; r.on('data', c => d += c);
          r.on('end', () => console.log(d)); }}).on('error', e => {{ console.error(e); process.exit(1); }});"""],
}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_reaches_peer_http(tp_state, peer, client, family):
    cp = tp(tp_state, *CLIENTS[client](url(peer[family], peer["http_port"])), check=True)
    assert '"host": "peer"' in cp.stdout, cp.stdout + cp.stderr


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_openbsd_nc_reaches_peer_echo(tp_state, peer, family):
    cp = tp(tp_state, "nc", "-N", "-w", "10", peer[family], str(peer["echo_port"]),
            input="hello echo\n", check=False)
    # tailscaled's dial closes the whole connection at the client's EOF (see README), so the
    # echo may be cut; what must hold is that nc connected and got bytes back or a clean close.
    assert cp.returncode == 0, cp.stderr


def test_nonblocking_connect_returns_at_once_and_completes(tp_state, peer):
    code = f"""
        import errno, select, socket, time
        s = socket.socket(); s.setblocking(False)
        t = time.monotonic()
        r = s.connect_ex(({peer['ipv4']!r}, {peer['echo_port']}))
        took = time.monotonic() - t
        assert r == errno.EINPROGRESS, r
        p = select.poll(); p.register(s, select.POLLOUT)
        ev = p.poll(20000)
        assert ev and ev[0][1] == select.POLLOUT, ev   # no POLLERR/POLLHUP on the way
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        s.setblocking(True); s.sendall(b"x"); assert s.recv(1) == b"x"
        print("connect returned in %.1f ms" % (took * 1000))
        assert took < 0.05, took
    """
    tp(tp_state, *py(code), check=True)


def test_event_loop_keeps_ticking_during_100_connects(tp_state, peer):
    code = f"""
        import asyncio, time
        gaps = []
        async def ticker(stop):
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.05)
                now = time.monotonic(); gaps.append(now - last); last = now
        async def one(i):
            r, w = await asyncio.open_connection({peer['ipv4']!r}, {peer['echo_port']})
            w.write(b"%d\\n" % i); await w.drain()
            assert (await r.readline()) == b"%d\\n" % i
            w.close()
        async def main():
            stop = asyncio.Event(); t = asyncio.create_task(ticker(stop))
            await asyncio.sleep(0.2)
            await asyncio.gather(*(one(i) for i in range(100)))
            stop.set(); await t
            print("max gap %.1f ms" % (max(gaps) * 1000))
            assert max(gaps) <= 0.250, max(gaps)  # a loop blocked in connect() stalls for seconds
        asyncio.run(main())
    """
    cp = tp(tp_state, *py(code), check=True)
    assert "max gap" in cp.stdout


def test_errno_refused_on_closed_port(tp_state, peer):
    code = f"""
        import socket, errno
        for fam, ip in ((socket.AF_INET, {peer['ipv4']!r}), (socket.AF_INET6, {peer['ipv6']!r})):
            s = socket.socket(fam)
            try:
                s.connect((ip, 1)); raise SystemExit("connected?")
            except ConnectionRefusedError:
                pass
    """
    tp(tp_state, *py(code), check=True)


def test_errno_unknown_tailnet_address_within_timeout(tp_state):
    code = """
        import socket, errno, time
        s = socket.socket(); t = time.monotonic()
        try:
            s.connect(("100.64.99.99", 80)); raise SystemExit("connected?")
        except OSError as e:
            took = time.monotonic() - t
            print(errno.errorcode[e.errno], round(took, 2))
            assert e.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.ENETUNREACH), e
            assert took < 8, took
    """
    tp(tp_state, "--connect-timeout", "4", *py(code), check=True)


def test_proxy_killed_gives_prompt_distinct_error(tp_state, peer):
    code = f"""
        import os, signal, socket, errno, time
        print("RUNDIR", os.path.dirname(os.environ["TAILPROXY_SOCKET"]), flush=True)
        os.kill(os.getppid(), signal.SIGKILL)    # the tailproxy process: proxy and all
        while True:     # until its channel is gone (its last thread exited, not just the first)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                c.connect(os.environ["TAILPROXY_SOCKET"])
            except (ConnectionRefusedError, FileNotFoundError):
                break
            finally:
                c.close()
            time.sleep(0.01)
        s = socket.socket(); t = time.monotonic()
        try:
            s.connect(({peer['ipv4']!r}, {peer['echo_port']})); print("connected?")
        except OSError as e:
            print("ERRNO", errno.errorcode[e.errno], round(time.monotonic() - t, 3))
    """
    cp = tp(tp_state, *py(code))
    for line in cp.stdout.splitlines():   # a SIGKILLed tailproxy cannot remove its run dir
        if line.startswith("RUNDIR "):
            shutil.rmtree(line.split(None, 1)[1], ignore_errors=True)
    assert "ERRNO ENETDOWN" in cp.stdout, cp.stdout + cp.stderr
    took = float(cp.stdout.split()[-1])
    assert took < 1.0
    assert cp.stderr.count("cannot reach the tailproxy proxy") == 1, cp.stderr


def test_socket_state_is_the_programs_own(tp_state, peer):
    code = f"""
        import fcntl, os, socket
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.bind(("0.0.0.0", 0))
        fd = s.fileno()
        s.connect(({peer['ipv4']!r}, {peer['echo_port']}))
        assert s.fileno() == fd
        assert s.family == socket.AF_INET
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert s.getpeername() == ({peer['ipv4']!r}, {peer['echo_port']}), s.getpeername()
        s.sendall(b"ok\\n"); assert s.makefile("rb").readline() == b"ok\\n"
    """
    tp(tp_state, *py(code), check=True)


def test_fork_exec_threads_and_closed_fds(tp_state, peer):
    code = f"""
        import os, socket, subprocess, sys, threading
        ADDR = ({peer['ipv4']!r}, {peer['echo_port']})
        def echo(tag):
            s = socket.create_connection(ADDR, timeout=30); s.sendall(tag + b"\\n")
            got = b""
            while not got.endswith(b"\\n"): got += s.recv(100)
            s.close(); return got.strip()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if echo(b"child") == b"child" else 1)
        assert os.waitpid(pid, 0)[1] == 0, "forked child"
        out = subprocess.run([sys.executable, "-c", "import socket;s=socket.create_connection(%r, timeout=30);s.sendall(b'gc\\\\n');print(s.makefile('rb').readline())" % (ADDR,)], capture_output=True, text=True)
        assert "gc" in out.stdout, out
        results = []
        ts = [threading.Thread(target=lambda i=i: results.append(echo(b"t%d" % i))) for i in range(200)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert sorted(results) == sorted(b"t%d" % i for i in range(200)), len(results)
        os.closerange(3, 65536)
        assert echo(b"after-close") == b"after-close"
        print("ok")
    """
    cp = tp(tp_state, *py(code), check=True, timeout=240)
    assert cp.stdout.strip().endswith("ok")


def test_banner_first_server_loses_nothing(tp_state, testnet, peer):
    banner = in_netns(peer["netns"], py("""
        import socket
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("127.0.0.1", 2222)); l.listen()
        print("ready", flush=True)
        while True:
            c, _ = l.accept(); c.sendall(b"SSH-2.0-tailproxy-test\\r\\n"); c.recv(10); c.close()
    """), stdout=subprocess.PIPE, text=True)
    try:
        assert readline(banner.stdout).strip() == "ready"
        code = f"""
            import socket, time
            s = socket.create_connection(({peer['ipv4']!r}, 2222), timeout=20)
            time.sleep(0.5)     # the banner arrives before the client says anything
            print(s.makefile("rb").readline().decode().strip())
        """
        cp = tp(tp_state, *py(code), check=True)
        assert cp.stdout.strip() == "SSH-2.0-tailproxy-test"
    finally:
        banner.kill()
        banner.wait()


def test_half_close_through_tailnet(tp_state, peer):
    # A server that answers only after the client's EOF: the answer must still arrive.
    server = in_netns(peer["netns"], py("""
        import socket
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("127.0.0.1", 2223)); l.listen()
        print("ready", flush=True)
        while True:
            c, _ = l.accept(); n = 0
            while True:
                d = c.recv(65536)
                if not d: break
                n += len(d)
            c.sendall(b"got %d\\n" % n); c.close()
    """), stdout=subprocess.PIPE, text=True)
    try:
        assert readline(server.stdout).strip() == "ready"
        code = f"""
            import socket
            s = socket.create_connection(({peer['ipv4']!r}, 2223), timeout=20)
            s.sendall(b"x" * 100000); s.shutdown(socket.SHUT_WR)
            reply = s.recv(100)
            assert reply == b"got 100000\\n", reply
        """
        tp(tp_state, *py(code), check=True)
    finally:
        server.kill()
        server.wait()


def test_half_close_without_tailnet(testnet):
    """The same exchange through the interception path alone (--no-tailnet) keeps half-close."""
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    lst.close()
    code = f"""
        import socket, threading
        l = socket.create_server(("0.0.0.0", {port}))
        def serve():
            c, _ = l.accept(); n = 0
            while True:
                d = c.recv(65536)
                if not d: break
                n += len(d)
            c.sendall(b"got %d" % n); c.close()
        threading.Thread(target=serve, daemon=True).start()
        s = socket.create_connection(({testnet['client']['ipv4']!r}, {port}), timeout=20)
        s.sendall(b"x" * 100000); s.shutdown(socket.SHUT_WR)
        print(s.recv(100).decode())
    """
    cp = run_tp("--no-tailnet", *py(code), check=True)
    assert cp.stdout.strip() == "got 100000"


def test_proxy_aware_program_uses_names_through_all_proxy(tp_state, peer):
    # curl honours http_proxy; the name is resolved by the node (MagicDNS), not locally.
    cp = tp(tp_state, "curl", "-sS", "-m", "20", f"http://peer:{peer['http_port']}/", check=True)
    assert '"host": "peer"' in cp.stdout


def test_child_env_has_preload_appended_and_no_authkey(tp_state, testnet):
    cp = tp(tp_state, "env", env={"LD_PRELOAD": "/nonexistent-other.so"}, check=True)
    env = dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)
    assert env["LD_PRELOAD"].startswith("/nonexistent-other.so:") and \
        env["LD_PRELOAD"].endswith("libtailproxy.so")
    assert testnet["authkey"] not in cp.stdout
    assert "TS_AUTHKEY" not in env and "TS_AUTH_KEY" not in env
    assert env["ALL_PROXY"].startswith("socks5h://tailproxy:")


def test_proxy_only_mode_requires_password(tp_state, peer):
    port = 18080
    proc = subprocess.Popen([sys.executable, "-m", "tailproxy", "--state-dir", tp_state,
                             "--hostname", "outbound", "--socks5", f"127.0.0.1:{port}",
                             "--socks5-auth", "u:secret"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            line = readline(proc.stderr)
            if "proxy on" in line or not line or time.monotonic() > deadline:
                break
        target = f"http://peer:{peer['http_port']}/"
        ok = subprocess.run(["curl", "-sS", "-m", "20", "--proxy", f"socks5h://u:secret@127.0.0.1:{port}",
                             target], capture_output=True, text=True)
        assert '"host": "peer"' in ok.stdout, ok.stderr
        bad = subprocess.run(["curl", "-sS", "-m", "20", "--proxy", f"socks5h://127.0.0.1:{port}",
                              target], capture_output=True, text=True)
        assert bad.returncode != 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0


def test_short_connections_do_not_pile_up(tp_state, peer):
    """500 sequential connect + echo + close: each ends promptly on the node too. (A 2 s drain
    allowance per half-close once kept ~1,400 of 2,000 such connections open, and the peer's
    node then refused new ones.) Counted as tailproxy's open fds right after the loop.

    In the full suite, about one run in three saw one connect refused by the peer among the
    500 (never when run alone, nor in 27,000 connections of ad-hoc loops); the cause is not
    found yet. The pile-up this test guards against refuses hundreds, so up to 2 refusals,
    each retried, are tolerated and printed with the node's reason (--verbose)."""
    code = f"""
        import os, socket
        def fds():
            return len(os.listdir("/proc/%d/fd" % os.getppid()))
        def connect():
            try:
                return socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=20)
            except ConnectionRefusedError:
                print("refused", i, flush=True)
                return socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=20)
        before = fds()
        for i in range(500):
            s = connect()
            s.sendall(b"x\\n"); got = b""
            while not got.endswith(b"\\n"):
                c = s.recv(10); assert c, (i, got); got += c
            s.close()
        grown = fds() - before
        print("grown", grown)
        assert grown < 150, grown
        s = socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=20)
        s.sendall(b"after\\n"); got = b""
        while not got.endswith(b"\\n"):
            c = s.recv(10); assert c, got; got += c
        print("ok")
    """
    cp = tp(tp_state, "--verbose", *py(code), check=True, timeout=240)
    assert cp.stdout.strip().endswith("ok"), cp.stdout
    refused = [line for line in cp.stdout.splitlines() if line.startswith("refused")]
    unusual = [line for line in cp.stderr.splitlines()
               if " ok up=" not in line and ": in progress" not in line]
    assert len(refused) <= 2, (refused, unusual)
    if refused:
        print("refused by the peer:", refused, "\n".join(unusual))     # shown with -rA


@pytest.mark.parametrize("how", ["nc", "python", "python-socks5"])
@pytest.mark.parametrize("size", [1 << 20, 16 << 20])
def test_upload_then_exit_arrives_whole(tp_state, peer, size, how):
    """A program that sends, closes and exits at once (nc -N < file): tailproxy waits for its
    connections to drain into the tailnet before it stops the node, so nothing is lost."""
    server = in_netns(peer["netns"], py("""
        import socket
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("0.0.0.0", 2323)); l.listen()
        print("ready", flush=True)
        c, _ = l.accept(); n = 0
        while (d := c.recv(1 << 16)):
            n += len(d)
        print(n, flush=True)
    """), stdout=subprocess.PIPE, text=True)
    try:
        assert readline(server.stdout).strip() == "ready"
        if how == "nc":      # nc -N: half-close, then wait for the server to close
            argv = ["sh", "-c", f"head -c {size} /dev/zero | nc -N {peer['ipv4']} 2323"]
        elif how == "python":  # send, close and exit at once
            argv = py(f"""
                import socket
                s = socket.create_connection(({peer['ipv4']!r}, 2323), timeout=20)
                s.sendall(bytes({size})); s.close()""")
        else:                 # the same through ALL_PROXY (a proxy-aware program)
            argv = py(f"""
                import ipaddress, os, socket, struct, urllib.parse
                u = urllib.parse.urlsplit(os.environ["ALL_PROXY"])
                s = socket.create_connection((u.hostname, u.port), timeout=20)
                user, pw = urllib.parse.unquote(u.username).encode(), urllib.parse.unquote(u.password).encode()
                s.sendall(b"\\x05\\x01\\x02"); assert s.recv(2) == b"\\x05\\x02"
                s.sendall(bytes([1, len(user)]) + user + bytes([len(pw)]) + pw); assert s.recv(2) == b"\\x01\\x00"
                s.sendall(b"\\x05\\x01\\x00\\x01" + ipaddress.ip_address({peer['ipv4']!r}).packed + struct.pack(">H", 2323))
                rep = b""
                while len(rep) < 10: rep += s.recv(10 - len(rep))
                assert rep[1] == 0, rep
                s.sendall(bytes({size})); s.close()""")
        tp(tp_state, *argv, check=True, timeout=120)
        import select
        ready, _, _ = select.select([server.stdout], [], [], 30)
        assert ready, "the server never saw the connection end (the node went away mid-stream)"
        assert readline(server.stdout).strip() == str(size)
    finally:
        server.kill()
        server.wait()

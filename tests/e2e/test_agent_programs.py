"""Programs on one agent each keep their own policy (issue 16): --tailnet-only, --verbose,
--dns, --connect-timeout and --proxy-all apply to the program that asked for them, at the same
time as other programs run on the same node with other values; exports are per program, and a
second program exporting a port already exported gets a clear refusal while both keep
working."""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from helpers import direct_link_to_the_internet, py, readline, run_tp
from tailproxy.agent import identity
from test_agent import agent_pid, ident, peer, popen_tpa, tpa  # noqa: F401 (fixtures)

pytestmark = pytest.mark.tailnet

BLACKHOLE = "198.18.77.7"       # routed to the internet host, which drops it


def _prober(start_file: str, steps: list[tuple[str, str, int]]) -> list[str]:
    """A program that waits for `start_file`, then connects to each (label, host, port) and
    prints "label OUTCOME seconds" (OUTCOME: OK, an errno name, TIMEOUT after 6 s, or GAI for a
    name that does not resolve)."""
    return py(f"""
        import errno, os, socket, sys, time
        print("READY", flush=True)
        while not os.path.exists({start_file!r}):
            time.sleep(0.02)
        for label, host, port in {steps!r}:
            t = time.monotonic()
            try:
                s = socket.create_connection((host, port), timeout=6)
                what = "OK"
                s.close()
            except socket.gaierror:
                what = "GAI"
            except OSError as e:        # Python's own timeout has no errno; the kernel's has
                what = "TIMEOUT" if e.errno is None else errno.errorcode.get(e.errno, str(e.errno))
            print(label, what, "%.2f" % (time.monotonic() - t), flush=True)
    """)


def _outcomes(out: str) -> dict[str, tuple[str, float]]:
    return {w[0]: (w[1], float(w[2])) for w in (ln.split() for ln in out.splitlines())
            if len(w) == 3}


def test_two_programs_on_one_agent_keep_their_own_policies(ident, peer, testnet, short_tmp):
    inet = testnet["internet"]
    go = str(short_tmp / "go")
    steps = [("inet", inet["ipv4"], inet["http_port"]),
             ("peer", peer["ipv4"], peer["echo_port"]),
             ("name", peer["fqdn"], peer["echo_port"])]
    with direct_link_to_the_internet(testnet):
        # A: tailnet only (its preload reads the table of that mode), verbose, names by its own
        # resolver.
        a = popen_tpa(ident, "--linger", "0", "--tailnet-only", "--verbose", "--dns", "off",
                      *_prober(go, steps),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert readline(a.stdout, 90).strip() == "READY"
        pid = agent_pid(ident[0])
        # B: the defaults (direct destinations connected by the program itself, names through
        # the agent, not verbose), on the same agent at the same time.
        b = popen_tpa(ident, "--linger", "0", *_prober(go, steps),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert readline(b.stdout, 60).strip() == "READY"
        assert agent_pid(ident[0]) == pid, "the second program started a second agent"
        open(go, "w").close()
        a_out, a_err = a.communicate(timeout=60)
        b_out, b_err = b.communicate(timeout=60)
    ra, rb = _outcomes(a_out), _outcomes(b_out)
    print(ra, rb, a_err, b_err, sep="\n")
    # --tailnet-only: A is refused the internet host; B, on the same node, connects to it
    assert ra["inet"][0] == "EHOSTUNREACH" and rb["inet"][0] == "OK", (ra, rb)
    assert ra["peer"][0] == "OK" and rb["peer"][0] == "OK", (ra, rb)
    # --dns off: A's own resolver knows no MagicDNS name; B's names come from the tailnet
    assert ra["name"][0] == "GAI" and rb["name"][0] == "OK", (ra, rb)
    # --verbose: A's own connections are logged to A; B, not verbose, gets no line at all
    assert re.search(rf"{re.escape(peer['ipv4'])}:{peer['echo_port']} ok ", a_err), a_err
    assert "tailproxy:" not in b_err, b_err


def test_connect_timeout_is_per_program(ident, testnet, short_tmp):
    """Two programs dial a destination that never answers through the agent at once: the one
    run with --connect-timeout 2 gets ETIMEDOUT after about 2 s, the other is still waiting."""
    go = str(short_tmp / "go")
    steps = [("hole", BLACKHOLE, 80)]
    with direct_link_to_the_internet(testnet):
        # via the internet host, which forwards nothing: the SYN is dropped without a word
        subprocess.run(["ip", "route", "add", BLACKHOLE, "via", testnet["internet"]["ipv4"],
                        "dev", "tprt0"], check=True)
        fast = popen_tpa(ident, "--linger", "0", "--proxy-all", "--connect-timeout", "2",
                         *_prober(go, steps), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        assert readline(fast.stdout, 90).strip() == "READY"
        slow = popen_tpa(ident, "--linger", "0", "--proxy-all", *_prober(go, steps),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert readline(slow.stdout, 60).strip() == "READY"
        open(go, "w").close()
        f_out, f_err = fast.communicate(timeout=60)
        s_out, s_err = slow.communicate(timeout=60)
    rf, rs = _outcomes(f_out), _outcomes(s_out)
    assert rf["hole"][0] == "ETIMEDOUT" and 1.5 < rf["hole"][1] < 5, (rf, f_err)
    assert rs["hole"][0] == "TIMEOUT", (rs, s_err)


def _http_server(family: str, addr: str, port: int, tag: str) -> list[str]:
    """A program serving one-byte HTTP answers (`tag`) on addr:port."""
    return py(f"""
        import socket
        s = socket.socket(socket.{family})
        if socket.{family} == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(({addr!r}, {port}))
        s.listen()
        print("LISTENING", flush=True)
        while True:
            c, _ = s.accept()
            c.recv(4096)
            c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 1\\r\\n\\r\\n{tag}")
            c.close()
    """)


def _stderr_line(p, pattern: str, timeout: float = 30) -> str:
    seen = []
    while True:
        line = readline(p.stderr, timeout)
        if not line:
            raise AssertionError(f"no line matching {pattern!r} in:\n" + "".join(seen))
        seen.append(line)
        if re.search(pattern, line):
            return line


def _peer_fetch(testnet, host: str, port: int) -> subprocess.CompletedProcess:
    p = testnet["peers"]["peer"]
    return subprocess.run(["ip", "netns", "exec", p["netns"], "curl", "-sS", "-m", "20",
                           "--socks5-hostname", p["socks5"], f"http://{host}:{port}/"],
                          capture_output=True, text=True, timeout=40)


def test_same_port_exported_by_two_programs_is_refused_and_neither_breaks(ident, testnet):
    """A exports port P (its 127.0.0.1 listener); B, on the same agent, listens on [::1]:P and
    asks for the same export: B is told clearly that another program exports it, A's export
    goes on serving A, and B's own listener still works."""
    from test_agent import agent_info
    port = 18071
    a = popen_tpa(ident, "--linger", "0", "--export-listeners",
                  *_http_server("AF_INET", "127.0.0.1", port, "A"),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = None
    try:
        assert readline(a.stdout, 90).strip() == "LISTENING"
        _stderr_line(a, rf"exported port {port}:")
        ip = agent_info(ident[0])["ips"][0]
        b = popen_tpa(ident, "--linger", "0", "--export-listeners",
                      *_http_server("AF_INET6", "::1", port, "B"),
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert readline(b.stdout, 60).strip() == "LISTENING"
        line = _stderr_line(b, rf"port {port}")
        assert f"not exporting port {port}: it is exported already by another program on " \
               f"this node (pid " in line, line
        got = _peer_fetch(testnet, ip, port)
        assert got.returncode == 0 and got.stdout == "A", got.stdout + got.stderr
        with socket.create_connection(("::1", port), timeout=10) as c:   # B still serves
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert c.recv(4096).endswith(b"B")
        assert a.poll() is None and b.poll() is None, "a program broke"
        info = agent_info(ident[0])
        assert info["exports"] == [port], info
    finally:
        for p in (a, b):
            if p is not None:
                p.terminate()
                p.communicate(timeout=30)


def _fetch_after(start_file: str, host: str, port: int) -> list[str]:
    """A program that waits for `start_file`, then prints the client address the internet
    host's HTTP server saw."""
    return py(f"""
        import json, os, socket, time
        print("READY", flush=True)
        while not os.path.exists({start_file!r}):
            time.sleep(0.02)
        s = socket.create_connection(({host!r}, {port}), timeout=20)
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        print("CLIENT", json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])["client"], flush=True)
    """)


def test_two_exit_nodes_at_once_run_on_sibling_nodes(ident, testnet, short_tmp):
    """A program wanting another exit node than the running agent's gets a sibling node of
    its own (`<hostname>-2`, ephemeral, logged in with the auth key); both programs run at
    once and the internet host sees each one's own exit node."""
    from test_agent import agent_info
    exits = testnet["exit_nodes"]
    if len(exits) < 2:
        pytest.fail("run the testnet with --exit-nodes 2")
    inet = testnet["internet"]
    state, host = ident
    go = str(short_tmp / "go")
    code = _fetch_after(go, inet["ipv4"], inet["http_port"])
    a = popen_tpa(ident, "--linger", "0", "--exit-node", exits[0]["name"], *code,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = None
    try:
        assert readline(a.stdout, 90).strip() == "READY"
        b = popen_tpa(ident, "--linger", "0", "--verbose", "--exit-node", exits[1]["name"],
                      *code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert readline(b.stdout, 90).strip() == "READY", b.stderr.read()
        sibling = agent_info(state + "-2")
        assert sibling and sibling["hostname"] == f"{host}-2", sibling
        assert sibling["pid"] != agent_pid(state)
        open(go, "w").close()
        a_out, a_err = a.communicate(timeout=60)
        b_out, b_err = b.communicate(timeout=60)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
        run_tp("--state-dir", state + "-2", "--hostname", f"{host}-2", "down", timeout=60,
               env={"TAILPROXY_AGENT": "1"})
    assert a.returncode == 0 and b.returncode == 0, a_err + b_err
    assert a_out.split()[-2:] == ["CLIENT", exits[0]["egress_ipv4"]], a_out + a_err
    assert b_out.split()[-2:] == ["CLIENT", exits[1]["egress_ipv4"]], b_out + b_err
    assert f"this program runs on the node {host}-2" in b_err, b_err


def _sigkill_agent_with_a_program(ident) -> str:
    """An agent (linger forever) serving a program, SIGKILLed: its run dir is left with the
    program's sockets in it. Returns the run dir."""
    from test_agent import alive
    state = ident[0]
    tpa(ident, "--linger", "forever", "up", check=True)
    pid = agent_pid(state)
    p = popen_tpa(ident, "sh", "-c", "echo ready; read x", stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
    assert readline(p.stdout, 60).strip() == "ready"
    os.kill(pid, signal.SIGKILL)
    p.communicate("\n", timeout=30)
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the SIGKILLed agent is still there"
        time.sleep(0.05)
    run = identity.run_dir(state)
    left = os.listdir(run)
    assert identity.CONTROL in left and any(n.endswith("channel.sock") for n in left), left
    return run


@pytest.mark.parametrize("next_command", [["down"], ["ps"]])
def test_a_sigkilled_agents_run_dir_is_removed_by_the_next_tailproxy(ident, next_command):
    run = _sigkill_agent_with_a_program(ident)
    cp = tpa(ident, *next_command)
    assert not os.path.exists(run), (os.listdir(run), cp.stdout, cp.stderr)
    if next_command == ["down"]:
        assert cp.returncode == 1 and "no agent runs" in cp.stderr, cp.stderr


def test_a_sigkilled_agents_sockets_are_gone_when_the_next_agent_starts(ident):
    run = _sigkill_agent_with_a_program(ident)
    stale = os.stat(os.path.join(run, identity.CONTROL)).st_ino
    cp = tpa(ident, "--linger", "0", "sh", "-c", f"ls {run}")
    assert cp.returncode == 0, cp.stderr
    # the dead agent's program sockets (p1-...) are gone: the new program is p1 again, in a
    # directory made anew
    assert sorted(n for n in cp.stdout.split() if n.startswith("p")) == \
        ["p1-channel.sock", "p1-channel.sock.dgram", "p1-register.sock"], cp.stdout
    assert not os.path.exists(run) or os.stat(os.path.join(run, identity.CONTROL)).st_ino != stale


def test_socks5_proxy_only_mode_runs_on_the_agent(ident, peer, testnet):
    """`tailproxy --socks5` attaches to the identity's agent (next to a program running there),
    serves proxy clients with its own credentials, and its end leaves the agent to linger."""
    from test_agent import agent_info, alive
    state, host = ident
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = popen_tpa(ident, "sh", "-c", "echo ready; read x", stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        assert readline(p.stdout, 90).strip() == "ready"
        pid = agent_pid(state)
        proxy = popen_tpa(ident, "--linger", "0", "--socks5", f"127.0.0.1:{port}",
                          "--socks5-auth", "-", stdin=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
        proxy.stdin.write("user:s3cret-pw\n")
        proxy.stdin.close()
        _stderr_line(proxy, rf"SOCKS5 and HTTP proxy on 127\.0\.0\.1:{port}", 60)
        assert agent_pid(state) == pid, "--socks5 started an agent of its own"
        commands = [pr["command"] for pr in agent_info(state)["programs"]]
        assert ["tailproxy", "--socks5", f"127.0.0.1:{port}"] in commands, commands
        url = f"http://{peer['ipv4']}:{peer['http_port']}/"
        curl = ["curl", "-sS", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}",
                "--socks5-hostname", f"127.0.0.1:{port}"]
        got = subprocess.run(curl + ["--proxy-user", "user:s3cret-pw", url],
                             capture_output=True, text=True, timeout=40)
        assert got.stdout == "200", got.stdout + got.stderr
        wrong = subprocess.run(curl + ["--proxy-user", "user:wrong", url],
                               capture_output=True, text=True, timeout=40)
        assert wrong.stdout != "200", "the proxy took a wrong password"
        proxy.send_signal(signal.SIGINT)
        assert proxy.wait(30) == 0
        proxy.stderr.read()
        assert alive(pid), "the agent stopped with the proxy while a program runs on it"
        def port_closed() -> bool:
            with socket.socket() as c:
                return c.connect_ex(("127.0.0.1", port)) != 0
        deadline = time.monotonic() + 10      # the session ends once its launcher has gone
        while not port_closed():
            assert time.monotonic() < deadline, "the proxy port is still served"
            time.sleep(0.05)
    finally:
        p.communicate("\n", timeout=30)
        if proxy is not None and proxy.poll() is None:
            proxy.kill()
            proxy.communicate()

"""One agent per identity (issue 16), on the local tailnet: concurrent runs share one node,
attaching is fast, a daemonized descendant keeps the agent, linger, up/down/ps, a SIGKILLed
agent is recovered, another uid is refused. Run with --exit-nodes 2 for the exit-node test."""
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import time

import pytest

from helpers import py, readline, run_tp, tailproxy_argv
from tailproxy.agent import identity

pytestmark = pytest.mark.tailnet

AGENT = {"TAILPROXY_AGENT": "1"}


@pytest.fixture
def ident(short_tmp):
    """(state dir, hostname) of a fresh identity; its agent is stopped afterwards."""
    state, host = str(short_tmp / "state"), f"ag-{secrets.token_hex(3)}"
    yield state, host
    run_tp("--state-dir", state, "--hostname", host, "down", env=AGENT, timeout=60)
    pid = agent_pid(state)
    if pid:
        os.kill(pid, signal.SIGKILL)


def tpa(ident, *args, env=None, **kw):
    state, host = ident
    return run_tp("--state-dir", state, "--hostname", host, *args, env=dict(AGENT, **(env or {})),
                  **kw)


def popen_tpa(ident, *args, **kw):
    state, host = ident
    return subprocess.Popen(tailproxy_argv("--state-dir", state, "--hostname", host, *args),
                            env=dict(os.environ, **AGENT), **kw)


def agent_info(state: str) -> dict | None:
    path = os.path.join(identity.run_dir(state), identity.CONTROL)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b'{"cmd": "info"}\n')
            return json.loads(s.makefile("rb").readline())
    except (OSError, ValueError):
        return None


def agent_pid(state: str) -> int | None:
    info = agent_info(state)
    return info["pid"] if info and info.get("ok") else None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def channel_answers(state: str) -> bool:
    """Whether the agent's control socket still answers (it goes with the agent's last
    thread, as the programs' channels do)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        try:
            c.connect(os.path.join(identity.run_dir(state), identity.CONTROL))
            return True
        except OSError:
            return False


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def echo_code(peer, count=1, pause=0.0, out=None):
    """A program that talks to the peer's echo server `count` times and prints (or appends to
    `out`) one OK line per round trip."""
    return py(f"""
        import socket, sys, time
        for i in range({count}):
            s = socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=10)
            s.sendall(b"ping%d" % i)
            ok = s.recv(100) == b"ping%d" % i
            s.close()
            line = ("OK %d" if ok else "BAD %d") % i
            if {out!r}:
                with open({out!r}, "a") as f:
                    f.write(line + "\\n")
            else:
                print(line, flush=True)
            time.sleep({pause})
    """)


@pytest.fixture(scope="module")
def peer(testnet):
    return testnet["peers"]["peer"]


def test_ten_concurrent_invocations_share_one_agent_and_node(ident, peer, testnet):
    from test_node_lifecycle import headscale_nodes
    state, host = ident
    code = echo_code(peer)
    code[-1] = "import os; print('SOCKET', os.environ['TAILPROXY_SOCKET'])\n" + code[-1]
    procs = [popen_tpa(ident, "--linger", "5", *code, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True) for _ in range(10)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "OK 0" in out, (out, err)
    # each program has a channel of its own (its policy), all in the one agent's run dir
    sockets = {line.split()[1] for out, _ in outs for line in out.splitlines()
               if line.startswith("SOCKET")}
    assert len(sockets) == 10 and {os.path.dirname(s) for s in sockets} == \
        {identity.run_dir(state)}, sockets
    with open(os.path.join(state, "agent.log")) as f:
        assert f.read().count("serving") == 1, "more than one agent started"
    assert [n.get("given_name") or n.get("name") for n in headscale_nodes(testnet)
            if host in (n.get("given_name"), n.get("name"))] == [host]


def test_attach_is_fast_and_reuses_the_agent(ident):
    cold_start = time.monotonic()
    first = tpa(ident, "--linger", "60", "true")
    cold = time.monotonic() - cold_start
    assert first.returncode == 0, first.stderr
    pid = agent_pid(ident[0])
    times = []
    for _ in range(20):
        t0 = time.time()
        cp = tpa(ident, "--linger", "60", "date", "+%s.%N")
        assert cp.returncode == 0, cp.stderr
        times.append(float(cp.stdout) - t0)     # launch to the program's exec (+ date's start)
    median = statistics.median(times)
    print(f"attach start-to-exec median {median * 1000:.1f} ms; cold start {cold:.2f} s")
    assert agent_pid(ident[0]) == pid, "a run started a second agent"
    # No absolute bound: on the shared 2-core test machine the load alone moves it by 0.3 s
    # (bench/attach_start.py gives the figure); a cold start per run fails this.
    assert median < cold / 2, (median, cold)


def test_daemonized_descendant_keeps_the_agent(ident, peer, short_tmp):
    out = str(short_tmp / "child.out")
    work = echo_code(peer, count=4, pause=0.5, out=out)[-1]
    code = py(f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()                   # a daemon: own session, stdio let go
            fd = os.open(os.devnull, os.O_RDWR)
            for i in (0, 1, 2):
                os.dup2(fd, i)
            time.sleep(1.5)               # the launcher has returned by now
            exec(compile({work!r}, "child", "exec"))
            os._exit(0)
        print("parent done", flush=True)
    """)
    cp = tpa(ident, "--linger", "0", *code)
    assert not os.path.exists(out), "the launcher waited for the daemonized child"
    assert cp.returncode == 0 and "parent done" in cp.stdout, cp.stderr
    pid = agent_pid(ident[0])
    assert pid, "the agent stopped while the daemonized child still runs"
    assert wait_until(lambda: os.path.exists(out) and open(out).read().count("OK") == 4, 30), \
        open(out).read() if os.path.exists(out) else "no output"
    assert "BAD" not in open(out).read()
    # the child has ended: the agent follows (linger 0, plus the settle and shutdown)
    assert wait_until(lambda: not alive(pid), 15), "the agent outlived its last process"


def test_daemonized_child_alone_returns_at_once(ident, short_tmp):
    done = str(short_tmp / "done")
    code = py(f"""
        import os, time
        if os.fork() == 0:
            fd = os.open(os.devnull, os.O_RDWR)
            for i in (0, 1, 2):
                os.dup2(fd, i)            # else the test's pipes wait for it, not tailproxy
            time.sleep(5)
            open({done!r}, "w").close()
            os._exit(0)
    """)
    tpa(ident, "--linger", "0", *code, check=True)
    assert not os.path.exists(done), "the launcher waited for its program's child"
    pid = agent_pid(ident[0])
    assert pid and alive(pid)
    assert wait_until(lambda: not alive(pid), 15)


def test_exit_status_and_signals_reach_the_direct_child_as_before(ident, short_tmp):
    assert tpa(ident, "--linger", "5", "sh", "-c", "exit 7").returncode == 7
    assert tpa(ident, "--linger", "5", "/nonexistent/prog").returncode == 127
    got = str(short_tmp / "got")
    p = popen_tpa(ident, "--linger", "5", "sh", "-c",
                  f"trap 'echo TERM > {got}; exit 3' TERM; echo ready; "
                  "while :; do sleep 0.1; done", stdout=subprocess.PIPE, text=True)
    assert readline(p.stdout, 60).strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 3
    assert open(got).read().strip() == "TERM"
    p = popen_tpa(ident, "--linger", "5", "sleep", "30", stdout=subprocess.PIPE)
    # listed from its attach on; its own pid once it runs (before that, as today, a SIGHUP
    # ends tailproxy itself)
    assert wait_until(lambda: any(pr.get("command") == ["sleep", "30"] and pr["pid"] != p.pid
                                  for pr in (agent_info(ident[0]) or {}).get("programs", [])), 30)
    p.send_signal(signal.SIGHUP)
    assert p.wait(30) == 128 + signal.SIGHUP


def test_linger_zero_and_n(ident):
    tpa(ident, "--linger", "0", "true", check=True)
    assert wait_until(lambda: agent_pid(ident[0]) is None, 10), "linger 0: the agent stayed"
    tpa(ident, "--linger", "3", "true", check=True)
    pid = agent_pid(ident[0])
    assert pid
    time.sleep(1.5)
    assert agent_pid(ident[0]) == pid, "linger 3: the agent left before 3 s"
    tpa(ident, "--linger", "3", "true", check=True)       # attaches: the timer starts again
    assert agent_pid(ident[0]) == pid
    t0 = time.monotonic()
    assert wait_until(lambda: not alive(pid), 15)
    assert time.monotonic() - t0 > 2.0, "linger 3: the agent left too early"
    assert not os.path.exists(identity.run_dir(ident[0])), "the run dir was left behind"


def test_up_ps_down(ident):
    state, host = ident
    cp = run_tp("up", "--state-dir", state, "--hostname", host, "--linger", "forever", env=AGENT)
    assert cp.returncode == 0 and "until `tailproxy down`" in cp.stdout, cp.stderr
    pid = agent_pid(state)
    p = popen_tpa(ident, "sh", "-c", "echo ready; read x", stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
    try:
        assert readline(p.stdout, 30).strip() == "ready"
        ps = run_tp("ps", env=AGENT)
        assert f"agent {pid} ({host}" in ps.stdout, ps.stdout
        assert "sh -c echo ready; read x" in ps.stdout, ps.stdout
    finally:
        p.communicate("\n", timeout=30)
    assert p.returncode == 0
    time.sleep(1)
    assert agent_pid(state) == pid, "`up --linger forever`: the agent left with its program"
    cp = tpa(ident, "exit-node", "list")        # answered by the agent's node
    assert cp.returncode == 0 and "online" in cp.stdout, cp.stdout + cp.stderr
    cp = run_tp("down", "--state-dir", state, "--hostname", host, env=AGENT)   # options after
    assert cp.returncode == 0 and f"agent {pid} stopped" in cp.stdout, cp.stderr
    assert not alive(pid)
    cp = tpa(ident, "down")
    assert cp.returncode == 1 and "no agent runs" in cp.stderr


def test_sigkilled_agent_enetdown_then_recovered(ident, peer):
    tpa(ident, "--linger", "forever", "up", check=True)
    pid = agent_pid(ident[0])
    code = py(f"""
        import errno, socket, sys
        s = socket.create_connection(({peer['ipv4']!r}, {peer['echo_port']}), timeout=10)
        s.close()
        print("READY", flush=True)
        sys.stdin.readline()
        s = socket.socket()     # blocking, as test_outbound's dead-proxy test
        try:
            s.connect(({peer['ipv4']!r}, {peer['echo_port']}))
            print("connected?")
        except OSError as e:
            print("ERRNO", errno.errorcode.get(e.errno))
    """)
    p = popen_tpa(ident, *code, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    assert readline(p.stdout, 60).strip() == "READY"
    os.kill(pid, signal.SIGKILL)
    # until its channel is gone: its last thread has exited, not just the first
    assert wait_until(lambda: not channel_answers(ident[0]), 10)
    out, err = p.communicate("\n", timeout=30)
    assert "ERRNO ENETDOWN" in out, out + err
    assert err.count("cannot reach the tailproxy proxy") == 1, err
    # the next run takes the lock the kernel released and replaces the dead agent's sockets
    cp = tpa(ident, "--linger", "0", *echo_code(peer))
    assert cp.returncode == 0 and "OK 0" in cp.stdout, cp.stderr
    with open(os.path.join(ident[0], "agent.log")) as f:
        assert f.read().count("serving") == 2


def test_another_uid_is_refused(ident):
    tpa(ident, "--linger", "forever", "up", check=True)
    path = os.path.join(identity.run_dir(ident[0]), identity.CONTROL)
    client = ["/usr/bin/python3", "-c",
              "import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "try:\n"
              "    s.connect(sys.argv[1])\n"
              "except PermissionError:\n"
              "    print('EACCES'); sys.exit()\n"
              "s.sendall(b'{\"cmd\": \"attach\", \"command\": [\"x\"]}\\n')\n"
              "print(s.makefile().readline().strip())\n", path]
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    cp = subprocess.run(as_nobody + client, capture_output=True, text=True, timeout=30)
    assert cp.stdout.strip() == "EACCES", cp.stdout + cp.stderr     # the 0700 run dir
    # With the permission check bypassed (CAP_DAC_OVERRIDE), SO_PEERCRED still refuses it.
    caps = ["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]
    cp = subprocess.run(as_nobody + caps + client, capture_output=True, text=True, timeout=30)
    reply = json.loads(cp.stdout)
    assert reply == {"ok": False, "error": "not your agent"}, cp.stdout + cp.stderr
    with open(os.path.join(ident[0], "agent.log")) as f:
        assert "refused a control connection from uid 65534" in f.read()


def test_no_secret_on_the_agents_argv_or_environment(ident):
    key = os.environ["TS_AUTHKEY"]
    tpa(ident, "--linger", "forever", "up", check=True)
    pid = agent_pid(ident[0])
    for name in ("cmdline", "environ"):
        with open(f"/proc/{pid}/{name}", "rb") as f:
            assert key.encode() not in f.read(), name


def test_different_exit_node_is_refused_before_the_program_starts(ident, testnet, short_tmp):
    """Without an auth key no sibling node can join for it (test_agent_programs.py has the
    sibling): refused, naming the running program and --hostname."""
    names = [e["name"] for e in testnet["exit_nodes"]]
    if len(names) < 2:
        pytest.fail("run the testnet with --exit-nodes 2")
    p = popen_tpa(ident, "--exit-node", names[0], "sh", "-c", "echo ready; read x",
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert readline(p.stdout, 60).strip() == "ready"
        marker = str(short_tmp / "ran")
        no_key = {k: "" for k in ("TS_AUTHKEY", "TS_AUTH_KEY", "TAILPROXY_AUTHKEY")}
        cp = tpa(ident, "--exit-node", names[1], "touch", marker, env=no_key)
        assert cp.returncode == 1, cp.stderr
        assert "without an auth key" in cp.stderr, cp.stderr
        assert "--exit-node" in cp.stderr and "--hostname" in cp.stderr, cp.stderr
        assert "sh -c echo ready; read x" in cp.stderr, cp.stderr
        assert not os.path.exists(marker), "the refused program ran"
    finally:
        p.communicate("\n", timeout=30)


def test_a_lingering_agent_gives_way_to_other_settings(ident):
    tpa(ident, "--linger", "60", "true", check=True)
    first = agent_pid(ident[0])
    cp = tpa(ident, "--linger", "60", "--accept-routes", "true")
    assert cp.returncode == 0, cp.stderr
    second = agent_pid(ident[0])
    assert second and second != first and not alive(first)
    with open(os.path.join(ident[0], "agent.log")) as f:
        assert "giving way to a program with other --accept-routes" in f.read()


def test_state_dir_that_is_a_file_gives_a_clear_message(short_tmp):
    bad = short_tmp / "notadir"
    bad.write_text("x")
    cp = run_tp("--state-dir", str(bad), "true", env=AGENT)
    assert cp.returncode == 1
    assert f"the state dir {bad} is not a directory" in cp.stderr, cp.stderr


def test_programs_on_an_agent_get_the_routing_table_and_the_nodes_fast_path(ident, peer, testnet):
    """A program attached to an agent connects a direct destination itself (the agent publishes
    the routing table, issue 15), has a peer's name answered from the agent's name table, and has its connection to a peer completed and relayed by the
    node (the parked-connect hand-off): the same fast paths as a run without an agent."""
    from helpers import direct_link_to_the_internet
    inet, port = testnet["internet"]["ipv4"], testnet["internet"]["http_port"]
    code = f"""
        import socket
        socket.getaddrinfo("peer", 80)         # a MagicDNS name: from the agent's name table
        for host, port in (({inet!r}, {port}), ({peer['ipv4']!r}, {peer['echo_port']})):
            s = socket.create_connection((host, port), timeout=15)
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n" if port == {port} else b"ping")
            print(host, len(s.recv(4096)) > 0)
            s.close()
    """
    with direct_link_to_the_internet(testnet):
        cp = tpa(ident, "--verbose", "--linger", "0", *py(code))
    assert cp.returncode == 0 and cp.stdout.split() == [inet, "True", peer["ipv4"], "True"], \
        cp.stdout + cp.stderr
    assert re.search(rf"to {re.escape(inet)}:{port}: direct \(not routed by the proxy\)",
                     cp.stderr), cp.stderr
    assert re.search(rf"tailproxy: node {re.escape(peer['ipv4'])}:{peer['echo_port']} ok ",
                     cp.stderr), cp.stderr
    assert "tailproxy: lookup peer: answered from the name table" in cp.stderr, cp.stderr

"""The agent's pieces without a tailnet: settings on the wire, the identity's lock and run dir,
process registration (the preload's datagram, decoded) and the linger timer."""
import asyncio
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from tailproxy.agent import identity
from tailproxy.agent.lifetime import Lifetime, decode_credentials
from tailproxy.agent.wire import agent_wide, differences, settings_from_json, settings_to_json
from tailproxy.config import Settings, resolve
from tailproxy.native import native_path


# -- settings on the wire -----------------------------------------------------------------
def test_settings_survive_the_pipe_including_the_secret_and_forever():
    s = Settings(authkey="tskey-secret", linger=math.inf, socks5=("127.0.0.1", 1080),
                 export_allow_ports=[(3000, 3000), (8000, 8100)], bypass=["10.0.0.0/8"],
                 state_dir="/tmp/x")
    back = settings_from_json(settings_to_json(s))
    assert back == s
    assert "tskey-secret" not in repr(back)


def test_agent_wide_differences_name_the_flags():
    a = agent_wide(Settings(exit_node=["a"]))
    b = agent_wide(Settings(exit_node=["b"], accept_routes=True))
    assert differences(a, b) == ["--exit-node", "--accept-routes"]
    # per-program settings never keep a program off a running agent
    assert differences(a, agent_wide(Settings(exit_node=["a"], verbose=True, tailnet_only=True,
                                              dns="off", connect_timeout=3))) == []


@pytest.mark.parametrize("text,value", [("0", 0.0), ("30", 30.0), ("forever", math.inf),
                                        ("FOREVER", math.inf)])
def test_linger_values(text, value):
    env = {"TAILPROXY_LINGER": text, "XDG_CONFIG_HOME": "/nonexistent"}
    assert resolve({}, env, None, None).linger == value


def test_linger_rejects_negative():
    from tailproxy.config import ConfigError
    with pytest.raises(ConfigError, match="TAILPROXY_LINGER"):
        resolve({}, {"TAILPROXY_LINGER": "-1", "XDG_CONFIG_HOME": "/nonexistent"}, None, None)


# -- identity, lock, run dir ----------------------------------------------------------------
def test_state_dir_that_is_a_file_or_foreign_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(identity.IdentityError, match="is not a directory"):
        identity.check_state_dir(str(f))
    if os.getuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)
        with pytest.raises(identity.IdentityError, match="belongs to uid 65534"):
            identity.check_state_dir(str(foreign))


def test_one_lock_holder_and_recovery_after_sigkill(tmp_path):
    state = str(tmp_path / "s")
    identity.check_state_dir(state)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from tailproxy.agent import identity
        fd = identity.open_lock({state!r})
        assert identity.try_lock(fd)
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fd = identity.open_lock(state)
        assert not identity.try_lock(fd)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert identity.try_lock(fd), "the kernel released a SIGKILLed holder's lock"
        other = identity.open_lock(state)
        assert not identity.try_lock(other)
        os.close(other)
        os.close(fd)
    finally:
        holder.kill()
        holder.wait()


def test_run_dir_is_per_identity_private_and_cleared_of_stale_sockets(tmp_path, short_tmp):
    env = {"XDG_RUNTIME_DIR": str(short_tmp / "rt")}
    os.mkdir(env["XDG_RUNTIME_DIR"], 0o700)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert identity.run_dir(a, env) != identity.run_dir(b, env)
    assert identity.run_dir(a, env) == identity.run_dir(str(tmp_path / "x" / ".." / "a"), env)
    d = identity.create_run_dir(a, env)
    assert os.stat(d).st_mode & 0o777 == 0o700
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.path.join(d, identity.CONTROL))
    stale.close()                       # a dead agent's socket file
    assert identity.create_run_dir(a, env) == d
    assert not os.path.exists(os.path.join(d, identity.CONTROL))


# -- registration and linger ---------------------------------------------------------------
def test_decode_credentials():
    data = struct.pack("=iII", 1234, 1000, 1000)
    assert decode_credentials([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, data)]) == (1234, 1000)
    assert decode_credentials([(socket.SOL_SOCKET, socket.SCM_RIGHTS, data)]) is None
    assert decode_credentials([]) is None


def _run(coro):
    return asyncio.run(coro)


def test_linger_starts_after_the_last_hold_and_a_new_hold_cancels_it():
    async def main():
        fired = []
        life = Lifetime(0.3, lambda: fired.append(time.monotonic()), settle=0.0)
        life.hold("a")
        life.start()
        await asyncio.sleep(0.4)
        assert not fired, "idle while held"
        life.release("a")
        t0 = time.monotonic()
        await asyncio.sleep(0.15)
        life.hold("b")                  # back before the linger ended
        await asyncio.sleep(0.4)
        assert not fired
        life.release("b")
        await asyncio.sleep(0.5)
        assert len(fired) == 1 and fired[0] - t0 >= 0.3
        life.close()
    _run(main())


def test_linger_zero_still_waits_the_settle_and_forever_never_fires():
    async def main():
        fired = []
        life = Lifetime(0.0, lambda: fired.append(1), settle=0.2)
        life.start()
        await asyncio.sleep(0.1)
        assert not fired
        await asyncio.sleep(0.2)
        assert fired == [1]
        life.close()
        never = Lifetime(math.inf, lambda: fired.append(2), settle=0.0)
        never.start()
        await asyncio.sleep(0.2)
        assert fired == [1]
        never.close()
    _run(main())


def test_a_tracked_process_holds_until_it_ends_and_the_table_is_bounded():
    async def main():
        fired = []
        life = Lifetime(0.0, lambda: fired.append(1), settle=0.05, max_tracked=1)
        p = subprocess.Popen(["sleep", "0.5"])
        q = subprocess.Popen(["sleep", "5"])
        try:
            assert life.track(p.pid)
            assert not life.track(q.pid), "over the bound"
            life.start()
            await asyncio.sleep(0.3)
            assert not fired
            await asyncio.get_running_loop().run_in_executor(None, p.wait)
            await asyncio.sleep(0.3)
            assert fired == [1]
            assert not life.track(p.pid), "a reaped pid cannot be tracked"
        finally:
            q.kill()
            q.wait()
            life.close()
    _run(main())


def test_the_preload_registers_each_process_image_and_fork_child(tmp_path):
    async def main():
        life = Lifetime(math.inf, lambda: None)
        path = str(tmp_path / "register.sock")
        life.open_registration(path)
        code = textwrap.dedent("""
            import errno, os, sys, time
            pid = os.fork()
            if pid == 0:
                time.sleep(2)
                os._exit(0)
            print(os.getpid(), pid, flush=True)
            os.waitpid(pid, 0)
        """)
        env = dict(os.environ, LD_PRELOAD=native_path("libtailproxy.so"),
                   TAILPROXY_REGISTER=path)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env,
                                                    stdout=asyncio.subprocess.PIPE)
        parent, child = map(int, (await proc.stdout.readline()).split())
        await asyncio.sleep(0.3)
        assert {parent, child} <= set(life.tracked), (parent, child, life.tracked)
        await proc.wait()
        await asyncio.sleep(0.2)
        assert parent not in life.tracked and child not in life.tracked
        life.close()
    _run(main())


# -- per-program policy, export claims, proxy-only requests ---------------------------------
def test_a_programs_policy_travels_whole_and_is_checked():
    from tailproxy.agent.policy import ProgramPolicy, policy_from_json
    from tailproxy.agent.wire import policy_of
    s = Settings(verbose=True, tailnet_only=True, connect_timeout=2.5, dns="off",
                 export_listeners=True, export_allow_ports=[(3000, 3000), (8000, 8100)],
                 export_max=3)
    p = policy_from_json(policy_of(s))
    assert p == ProgramPolicy(verbose=True, tailnet_only=True, connect_timeout=2.5, dns="off",
                              export_listeners=True,
                              export_allow_ports=((3000, 3000), (8000, 8100)), export_max=3)
    assert policy_from_json({}) == ProgramPolicy()


@pytest.mark.parametrize("bad,needle", [
    ([], "expected a JSON object"),
    ({"hostname": "x"}, "unknown key 'hostname'"),
    ({"verbose": "yes"}, "verbose must be true or false"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"connect_timeout": True}, "connect_timeout"),
    ({"dns": "everything"}, "dns must be"),
    ({"export_max": 0}, "export_max"),
    ({"export_allow_ports": [[5, 70000]]}, "bad port range"),
    ({"export_deny_ports": [[9, 3]]}, "bad port range"),
    ({"export_deny_ports": [[1, 2]] * 1025}, "at most 1024"),
])
def test_a_bad_policy_is_refused_naming_the_key(bad, needle):
    from tailproxy.agent.policy import policy_from_json
    with pytest.raises(ValueError, match=needle):
        policy_from_json(bad)


def test_a_port_exported_by_one_program_is_refused_to_another_until_released():
    from tailproxy.exporter.claims import OwnerClaims, PortClaims
    claims = PortClaims()
    a, b = OwnerClaims(claims, "A", "pid 1: a"), OwnerClaims(claims, "B", "pid 2: b")
    assert a.claim(8080) is None and a.claim(8080) is None       # again: still its own
    assert b.claim(8080) == "it is exported already by another program on this node (pid 1: a)"
    assert b.claim(8081) is None
    b.release(8080)                                                # not B's to release
    assert claims.held_by("A") == [8080]
    a.release(8080)
    assert b.claim(8080) is None and claims.held_by("B") == [8080, 8081]


def test_udp_ports_are_claimed_apart_from_tcp_ports():
    from tailproxy.exporter.claims import OwnerClaims, PortClaims
    claims = PortClaims()
    a, b = OwnerClaims(claims, "A", "pid 1: a"), OwnerClaims(claims, "B", "pid 2: b")
    assert a.claim(5353, "udp") is None
    assert b.claim(5353) is None                      # TCP 5353: another port space
    assert b.claim(5353, "udp") == "it is exported already by another program on this node (pid 1: a)"
    assert claims.held_by("A") == ["5353/udp"] and claims.held_by("B") == [5353]
    a.release(5353, "udp")
    assert b.claim(5353, "udp") is None and claims.held_by("B") == [5353, "5353/udp"]


def test_proxy_only_requests_are_checked():
    from tailproxy.agent.server import proxy_request
    assert proxy_request(None) is None
    assert proxy_request({"listen": ["127.0.0.1", 1080], "auth": ["u", "p"]}) == \
        (("127.0.0.1", 1080), ("u", "p"))
    assert proxy_request({"listen": ["::1", 0], "auth": None}) == (("::1", 0), None)
    for bad in ({"listen": ["h"]}, {"listen": ["h", 70000]}, {"listen": ["h", "80"]},
                {"listen": ["h", 80], "auth": ["u"]}, {"listen": ["h", 80], "auth": ["", "p"]},
                "x"):
        with pytest.raises(ValueError):
            proxy_request(bad)


def test_a_sibling_identity_is_ephemeral_and_next_to_the_first(tmp_path):
    from tailproxy.agent.client import sibling
    s = Settings(hostname="box", state_dir=str(tmp_path / "box"), authkey="k")
    two = sibling(s, 2)
    assert (two.hostname, two.state_dir, two.ephemeral, two.authkey) == \
        ("box-2", str(tmp_path / "box") + "-2", True, "k")


def test_a_dead_agents_run_dir_is_removed_only_when_the_lock_is_free(tmp_path, monkeypatch):
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    state = identity.check_state_dir(str(tmp_path / "state"))
    run = identity.create_run_dir(state)
    open(os.path.join(run, "control.sock"), "w").close()
    assert identity.identity_of_run_dir(run) == state
    held = identity.open_lock(state)
    try:
        assert identity.try_lock(held)
        assert identity.remove_if_dead(state) is False       # a live agent holds it
        assert os.path.exists(os.path.join(run, "control.sock"))
    finally:
        os.close(held)                                        # the agent "dies"
    assert identity.remove_if_dead(state) is True
    assert not os.path.exists(run)
    assert identity.remove_if_dead(state) is False           # nothing left to remove


@pytest.mark.parametrize("value", [
    {"ok": True, "channel": "/run/x/p1-channel.sock", "park_ports": [1, 0], "table": None,
     "proxy_auth": ["tailproxy", "p/w+=é"], "n": -3, "f": 2.5, "big": 10 ** 20},
    [], {}, "line\nwith \"quotes\" and \\", [[3000, 3000]], float("inf")])
def test_the_control_sockets_json_is_jsons(value):
    import json
    from tailproxy.agent import jsonline
    assert jsonline.dumps(value) == json.dumps(value)
    assert jsonline.loads(jsonline.dumps(value)) == json.loads(json.dumps(value))
    assert jsonline.loads(jsonline.dumps(value).encode() + b"\n") == json.loads(json.dumps(value))


@pytest.mark.parametrize("bad", ["", "{", "[1,]", "{} {}", "nul", b"\xff", "{'a': 1}"])
def test_bad_json_on_the_control_socket_is_a_value_error(bad):
    from tailproxy.agent import jsonline
    with pytest.raises(ValueError):
        jsonline.loads(bad)


SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(identity.__file__))))


def test_an_attaching_run_imports_none_of_the_heavy_modules():
    """What keeps an attach within its budget (bench/REPORT.md, issue 16): the modules of the
    path from `tailproxy CMD` to the program's exec bring no dataclasses, typing, json, re,
    socket, asyncio, shutil or urllib."""
    code = ("import sys\n"
            "import tailproxy.cli, tailproxy.agent.client, tailproxy.launcher.child\n"
            "import tailproxy.launcher.program, tailproxy.launcher.childenv, tailproxy.fdlimit\n"
            "assert tailproxy.cli.main(['/nonexistent/program']) == 127\n"   # settings read
            "heavy = {'dataclasses', 'typing', 'json', 're', 'socket', 'asyncio', 'shutil',\n"
            "         'urllib.parse', 'inspect', 'ipaddress', 'contextlib', 'tomllib', 'enum',\n"
            "         'signal', 'threading'}\n"
            "print(sorted(heavy & set(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=SRC, TAILPROXY_AGENT="1",
                                  XDG_CONFIG_HOME="/nonexistent"))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_programs_of_one_agent_share_one_pidfd_budget():
    """A fork bomb spread over several programs is bounded as one in one: the agent's fds."""
    from tailproxy.agent.lifetime import PidfdBudget

    async def main():
        budget = PidfdBudget(2)
        lives = [Lifetime(0.0, lambda: None, settle=0.05, budget=budget) for _ in range(2)]
        procs = [subprocess.Popen(["sleep", "5"]) for _ in range(3)]
        try:
            assert lives[0].track(procs[0].pid) and lives[1].track(procs[1].pid)
            assert not lives[1].track(procs[2].pid), "over the shared budget"
            lives[0].close()                              # its pidfd is given back
            assert lives[1].track(procs[2].pid) and budget.used == 2
        finally:
            for p in procs:
                p.kill()
                p.wait()
            for life in lives:
                life.close()
    _run(main())

"""The node binding (src/tailproxy/node) without a tailnet: configuration, call order, loading
the library (in subprocesses: library.py keeps the loaded library in a module global), the fork
guard, the containment variables, the event router, and Node's dial/relay/up paths over a
faked library.call. No test here starts a node (tp_node_start is never called for real)."""
import asyncio
import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tailproxy.node import (DialFailed, Node, NodeConfig, NodeError, NodeStateError, RelayEnd,
                            TailnetConn, UpTimeout, LoginRequired)
from tailproxy.node import library
from tailproxy.node import node as nodemod
from tailproxy.node.events import EventRouter

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))


def run_python(code: str, env_update: dict | None = None, drop=(), timeout=60):
    """Run `code` in a fresh interpreter; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def real_library_path() -> str:
    try:
        from tailproxy.native import native_path
        return native_path(library.LIBRARY_NAME)
    except FileNotFoundError:
        pytest.skip("the node library is not built (make native)")


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("kwargs, needle", [
    (dict(state_dir=""), "state_dir"),
    (dict(state_dir="/x", hostname=""), "hostname"),
    (dict(state_dir="/x", hostname="a b"), "hostname"),
    (dict(state_dir="/x", hostname="h" * 64), "hostname"),
    (dict(state_dir="/x", control_url="ftp://x"), "control URL"),
])
def test_config_rejects_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        NodeConfig(**kwargs)


def test_config_accepts_good_arguments():
    c = NodeConfig(state_dir="/x", hostname="h" * 63, control_url="http://ctl.test:8080/")
    assert c.hostname == "h" * 63 and c.authkey is None


def test_config_repr_hides_authkey():
    c = NodeConfig(state_dir="/x", authkey="tskey-secret")
    assert "tskey-secret" not in repr(c)
    assert "tskey-secret" not in str(c)


# ---------------------------------------------------------------- call order

def test_calls_before_up_and_after_close(tmp_path):
    n = Node(NodeConfig(state_dir=str(tmp_path)))
    assert not n.running
    with pytest.raises(NodeStateError, match="not up"):
        asyncio.run(n.dial("peer", 80))
    with pytest.raises(NodeStateError, match="not up"):
        asyncio.run(n.connect("peer", 80))
    with pytest.raises(NodeStateError, match="not up"):
        n.ips()
    with pytest.raises(NodeStateError, match="not started"):
        n.localapi
    with pytest.raises(NodeStateError):
        asyncio.run(n.listen(80))
    with pytest.raises(NodeStateError):
        asyncio.run(n.export(80, ("127.0.0.1", 8080)))
    for call in (lambda: n.set_exit_node("x"), n.clear_exit_node, n.exit_node):
        with pytest.raises(NodeStateError, match="not up"):
            call()
    n.close()
    n.close()                                   # twice is fine
    assert not n.running
    with pytest.raises(NodeStateError, match="closed"):
        n.up(timeout=1)
    with pytest.raises(NodeStateError, match="closed"):
        n.ips()
    with pytest.raises(NodeStateError, match="closed"):
        asyncio.run(n.dial("peer", 80))
    with pytest.raises(NodeStateError, match="closed"):
        n.exit_node()


def test_node_state_error_is_a_node_error():
    assert issubclass(NodeStateError, NodeError) and issubclass(DialFailed, NodeError)
    assert DialFailed("x", errno.ECONNREFUSED).errno == errno.ECONNREFUSED


@pytest.mark.parametrize("timeout", [0, -1])
def test_up_rejects_nonpositive_timeout(tmp_path, timeout):
    n = Node(NodeConfig(state_dir=str(tmp_path / "s")))
    with pytest.raises(ValueError, match="timeout"):
        n.up(timeout=timeout)
    assert not (tmp_path / "s").exists()        # rejected before anything was done


def test_state_of_another_control_without_key_is_refused(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    (s / "tailproxy-node.json").write_text('{"control_url": "https://a.test"}')
    (s / "tailscaled.state").write_text("{}")
    with pytest.raises(NodeError, match="belongs to the control server https://a.test"):
        Node(NodeConfig(state_dir=str(s), control_url="https://b.test")).up(timeout=1)
    assert (s / "tailscaled.state").exists()     # left alone


# ---------------------------------------------------------------- loading the library

def test_missing_library_is_a_clear_error(tmp_path):
    empty = tmp_path / "native"
    empty.mkdir()
    r = run_python(f"""
        import os, sys
        from tailproxy.node import Node, NodeConfig, NodeError
        from tailproxy.node import library
        try:
            library.library()
        except NodeError as e:
            print("library:", e)
        else:
            sys.exit("library() did not raise")
        before = len(os.listdir("/proc/self/fd"))
        n = Node(NodeConfig(state_dir={str(tmp_path / "s")!r}))
        try:
            n.up(timeout=2)
        except NodeError as e:
            print("up:", e)
        else:
            sys.exit("up() did not raise")
        print("fds", before, len(os.listdir("/proc/self/fd")))
        print("running", n.running)
    """, {"TAILPROXY_NATIVE_DIR": str(empty)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for prefix in ("library:", "up:"):
        msg = next(line for line in lines if line.startswith(prefix))
        assert "cannot start the node" in msg and "libtailproxy-node.so" in msg, msg
        assert "make native" in msg, msg
    fds = next(line for line in lines if line.startswith("fds")).split()
    assert fds[1] == fds[2], "up() leaked descriptors (the event pipe?)"
    assert "running False" in lines
    # the state dir was prepared before the library was needed, private
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700


def test_unloadable_library_is_a_clear_error(tmp_path):
    d = tmp_path / "native"
    d.mkdir()
    (d / library.LIBRARY_NAME).write_text("not an ELF file\n")
    r = run_python("""
        from tailproxy.node import library, NodeError
        try:
            library.library()
        except NodeError as e:
            print(e)
    """, {"TAILPROXY_NATIVE_DIR": str(d)})
    assert r.returncode == 0, r.stderr
    assert "cannot load the node library" in r.stdout and str(d) in r.stdout


def test_containment_env_is_set_before_the_library_loads():
    path = real_library_path()
    r = run_python("""
        import ctypes, json, os
        from tailproxy.node import library
        names = sorted(library.CONTAINMENT_ENV)
        before = {k: os.environ.get(k) for k in names}
        at_load = []
        real_cdll = ctypes.CDLL
        def recording_cdll(path, *a, **kw):      # Go's runtime copies the environment here
            at_load.append({k: os.environ.get(k) for k in names})
            return real_cdll(path, *a, **kw)
        ctypes.CDLL = recording_cdll
        lib = library.library()
        assert library.library() is lib          # loaded once
        print(json.dumps({"want": library.CONTAINMENT_ENV, "before": before, "at_load": at_load,
                          "after": {k: os.environ.get(k) for k in names},
                          "path": lib._name}))
    """, {"TAILPROXY_NATIVE_DIR": os.path.dirname(path)}, drop=tuple(library.CONTAINMENT_ENV))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    want = out["want"]
    assert want == {"TS_NO_LOGS_NO_SUPPORT": "true", "TS_DISABLE_PORTMAPPER": "1"}
    assert all(v is None for v in out["before"].values())
    assert out["at_load"] == [want]              # set before the one load
    assert out["after"] == want
    assert out["path"] == path


# ---------------------------------------------------------------- fork guard

@pytest.mark.parametrize("loaded_in_parent", [False, True])
def test_a_child_forked_without_exec_cannot_use_the_library(loaded_in_parent):
    env = {}
    if loaded_in_parent:
        env["TAILPROXY_NATIVE_DIR"] = os.path.dirname(real_library_path())
    r = run_python(f"""
        import os, sys
        from tailproxy.node import library, NodeError
        if {loaded_in_parent!r}:
            library.library()
        pid = os.fork()
        if pid == 0:
            # the child: no Go call here, only the guard, then _exit
            code = 3
            try:
                library.library()
                code = 1
            except NodeError as e:
                msg = str(e)
                code = 0 if "forked without exec" in msg and "spawn" in msg else 2
                os.write(1, (msg + "\\n").encode())
            except BaseException:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        child = os.waitstatus_to_exitcode(status)
        # the parent itself is still allowed to load and use it
        if {loaded_in_parent!r}:
            library.library()
        sys.exit(child)
    """, env)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "forked without exec" in r.stdout


# ---------------------------------------------------------------- event router

class Router:
    """An EventRouter on a fresh loop; `write` is what Go would write."""

    def __init__(self):
        self.r = EventRouter()
        self.loop = asyncio.new_event_loop()
        self.got = []

    def write(self, data: bytes) -> None:
        os.write(self.r.write_fd, data)

    def spin(self, until=lambda: False, seconds=2.0, loop=None):
        loop = loop or self.loop

        async def wait():
            deadline = time.monotonic() + seconds
            while not until() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        loop.run_until_complete(wait())

    def close(self):
        self.r.close()
        try:
            os.close(self.r.write_fd)
        except OSError:
            pass
        self.loop.close()


@pytest.fixture
def router():
    r = Router()
    yield r
    r.close()


def test_event_pipe_is_private_and_nonblocking(router):
    for fd in (router.r._read_fd, router.r.write_fd):
        assert not os.get_inheritable(fd)
    assert not os.get_blocking(router.r._read_fd)


def test_events_split_across_reads_are_reassembled(router):
    got = []
    router.r.register(1, got.append)
    router.r.register(2, got.append)
    router.r.attach(router.loop)
    router.write(b'{"id": 1, "ev": "dia')
    router.spin(seconds=0.1)
    assert got == []                                    # half a line: nothing yet
    router.write(b'led", "src": "[fd7a:115c:a1e0::9]:4')
    router.spin(seconds=0.1)
    router.write(b'1000"}\n{"id": 2, "ev": "relayed", "up": 3')
    router.spin(lambda: len(got) >= 1)
    assert got == [{"id": 1, "ev": "dialed", "src": "[fd7a:115c:a1e0::9]:41000"}]
    router.write(b', "down": 4}\n')
    router.spin(lambda: len(got) >= 2)
    assert got[1] == {"id": 2, "ev": "relayed", "up": 3, "down": 4}


def test_events_are_routed_by_id_and_unknown_ids_ignored(router):
    a, b = [], []
    router.r.register(1, a.append)
    router.r.register(2, b.append)
    router.r.attach(router.loop)
    lines = [{"id": 2, "ev": "x", "n": 1}, {"id": 99, "ev": "nobody"}, {"ev": "no id"},
             {"id": 1, "ev": "x", "n": 2}, {"id": 2, "ev": "x", "n": 3}]
    router.write(b"".join(json.dumps(ev).encode() + b"\n" for ev in lines))
    router.spin(lambda: len(a) + len(b) >= 3)
    assert [ev["n"] for ev in a] == [2] and [ev["n"] for ev in b] == [1, 3]
    router.r.unregister(2)
    router.r.unregister(2)                              # unknown: fine
    router.write(b'{"id": 2, "ev": "late"}\n{"id": 1, "ev": "y", "n": 4}\n')
    router.spin(lambda: len(a) >= 2)
    assert [ev["n"] for ev in a] == [2, 4] and len(b) == 2


def test_many_events_in_one_burst(router):
    got = []
    router.r.register(7, got.append)
    router.r.attach(router.loop)
    line = b'{"id": 7, "ev": "inbound", "node": "' + b"n" * 200 + b'"}\n'
    count = (1 << 16) // len(line) * 3                  # more than one read's worth
    router.write(line * count)
    router.spin(lambda: len(got) >= count)
    assert len(got) == count and got[-1]["node"] == "n" * 200


def test_close_tells_every_waiting_handler_the_node_stopped(router):
    a, b, gone = [], [], []
    router.r.register(1, a.append)
    router.r.register(2, b.append)
    router.r.register(3, gone.append)
    router.r.unregister(3)
    router.r.attach(router.loop)
    router.r.close()
    for ident, got in ((1, a), (2, b)):
        assert len(got) == 1
        ev = got[0]
        assert ev["id"] == ident and ev["ev"] == "stopped" and ev["errno"] == errno.ENETDOWN
        assert ev["err"]
    assert gone == []
    router.r.close()                                    # twice: nobody is told again
    assert len(a) == 1 and len(b) == 1
    assert router.loop.remove_reader(router.r._read_fd) is False   # reader gone
    router.r.attach(router.loop)                        # after close: a no-op
    assert router.r._loop is None


def test_attach_to_a_second_loop_moves_the_reader(router):
    got = []
    router.r.register(1, got.append)
    router.r.attach(router.loop)
    router.r.attach(router.loop)                        # same loop again: nothing changes
    router.write(b'{"id": 1, "n": 1}\n')
    router.spin(lambda: got)
    assert len(got) == 1
    loop2 = asyncio.new_event_loop()
    try:
        router.r.attach(loop2)
        assert router.r._loop is loop2
        router.write(b'{"id": 1, "n": 2}\n')
        router.spin(seconds=0.1)                        # the first loop no longer reads
        assert len(got) == 1
        router.spin(lambda: len(got) >= 2, loop=loop2)
        assert [ev["n"] for ev in got] == [1, 2]
        assert router.loop.remove_reader(router.r._read_fd) is False
    finally:
        loop2.close()
    # the loop it reads on was closed (as asyncio.run does): another takes over without error
    router.r.attach(router.loop)
    router.write(b'{"id": 1, "n": 3}\n')
    router.spin(lambda: len(got) >= 3)
    assert [ev["n"] for ev in got] == [1, 2, 3]


def test_end_of_the_pipe_detaches_the_reader(router):
    router.r.attach(router.loop)
    os.close(router.r.write_fd)
    router.spin(lambda: router.r._loop is None)
    assert router.r._loop is None
    assert router.loop.remove_reader(router.r._read_fd) is False


# ---------------------------------------------------------------- Node over a fake library

class FakeLibrary:
    """Stands in for library.call: records calls; node_start hands over the event pipe (as Go
    does), dial answers on it with `dial_event(ident)`."""

    def __init__(self, node_start_error=None):
        self.calls = []
        self.event_fd = None
        self.node_start_error = node_start_error
        self.dial_event = lambda ident: {"id": ident, "ev": "dialed",
                                         "src": "100.64.0.9:41000"}

    def __call__(self, name, *args):
        self.calls.append((name, args))
        if name == "node_start":
            if self.node_start_error:
                raise NodeError(self.node_start_error)
            self.event_fd = args[1]
            args[2]._obj.value = 42
        elif name == "node_close":
            if self.event_fd is not None:
                os.close(self.event_fd)
                self.event_fd = None
        elif name == "dial" and self.dial_event is not None:
            ev = self.dial_event(args[1])
            if ev is not None:
                os.write(self.event_fd, json.dumps(ev).encode() + b"\n")

    def send(self, ev):
        os.write(self.event_fd, json.dumps(ev).encode() + b"\n")

    def names(self):
        return [c[0] for c in self.calls]


class FakeLocalAPI:
    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.prefs = []
        self.started = []

    def __call__(self, handle):
        assert handle == 42
        return self

    def status(self, peers=True):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def edit_prefs(self, masked):
        self.prefs.append(masked)
        return {}

    def start(self, options):
        self.started.append(options)

    def login_interactive(self):
        self.started.append("login-interactive")


RUNNING = {"BackendState": "Running", "TailscaleIPs": ["fd7a:115c:a1e0::9", "100.64.0.9"]}


@pytest.fixture
def fake(monkeypatch):
    lib = FakeLibrary()
    monkeypatch.setattr(library, "call", lib)
    return lib


def up_node(tmp_path, monkeypatch, statuses=(RUNNING,), **config):
    api = FakeLocalAPI(statuses)
    monkeypatch.setattr(nodemod, "LocalAPI", api)
    n = Node(NodeConfig(state_dir=str(tmp_path / "s"), **config))
    n.up(timeout=5)
    return n, api


def test_up_over_the_fake_library(tmp_path, monkeypatch, fake):
    n, api = up_node(tmp_path, monkeypatch, authkey="tskey-k", hostname="bot",
                     control_url="https://ctl.test/")
    try:
        assert n.running
        name, (cfg, fd, _) = fake.calls[0]
        assert name == "node_start"
        cfg = json.loads(cfg)
        assert cfg == {"dir": str(tmp_path / "s"), "hostname": "bot", "authkey": "tskey-k",
                       "control_url": "https://ctl.test", "ephemeral": False,
                       "log_path": str(tmp_path / "s" / "node.log")}
        assert api.prefs == [{"RouteAll": False, "RouteAllSet": True}]    # no subnet routes
        assert n.ips() == ["100.64.0.9", "fd7a:115c:a1e0::9"]
        meta = json.loads((tmp_path / "s" / "tailproxy-node.json").read_text())
        assert meta == {"control_url": "https://ctl.test"}
        assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700
    finally:
        n.close()
    assert fake.calls[-1] == ("node_close", (42, nodemod._CLOSE_TIMEOUT_MS))
    assert not n.running and fake.event_fd is None


def test_accept_routes_sets_the_pref_route_all(tmp_path, monkeypatch, fake):
    n, api = up_node(tmp_path, monkeypatch, accept_routes=True)
    try:
        assert api.prefs == [{"RouteAll": True, "RouteAllSet": True}]     # --accept-routes
    finally:
        n.close()


def test_a_failed_start_closes_the_event_pipe(tmp_path, monkeypatch):
    lib = FakeLibrary(node_start_error="TS_NO_LOGS_NO_SUPPORT=true must be set")
    monkeypatch.setattr(library, "call", lib)
    before = len(os.listdir("/proc/self/fd"))
    n = Node(NodeConfig(state_dir=str(tmp_path / "s")))
    with pytest.raises(NodeError, match="TS_NO_LOGS_NO_SUPPORT"):
        n.up(timeout=5)
    assert len(os.listdir("/proc/self/fd")) == before
    assert lib.names() == ["node_start"]                 # no node_close: there is no node
    with pytest.raises(NodeStateError, match="closed"):
        n.up(timeout=5)


def test_login_url_is_shown_once_and_up_times_out(tmp_path, monkeypatch, fake):
    urls = []
    need = {"BackendState": "NeedsLogin", "AuthURL": "https://ctl.test/a/1", "Health": []}
    api = FakeLocalAPI([need])
    monkeypatch.setattr(nodemod, "LocalAPI", api)
    n = Node(NodeConfig(state_dir=str(tmp_path / "s")), on_login_url=urls.append)
    with pytest.raises(LoginRequired, match="not logged in"):
        n.up(timeout=0.3)
    assert urls == ["https://ctl.test/a/1"]
    assert "node_close" in fake.names() and not n.running


def test_up_timeout_names_state_and_log(tmp_path, monkeypatch, fake):
    api = FakeLocalAPI([{"BackendState": "Starting", "Health": ["no DERP home"]}])
    monkeypatch.setattr(nodemod, "LocalAPI", api)
    s = tmp_path / "s"
    s.mkdir()
    (s / "node.log").write_text("an earlier run\n")
    n = Node(NodeConfig(state_dir=str(s), authkey="k"))
    with pytest.raises(UpTimeout, match=r"state Starting[\s\S]*no DERP home"):
        n.up(timeout=0.3)
    assert (s / "node.log.1").read_text() == "an earlier run\n"   # the previous log is kept


def test_saved_state_rejected_by_control_logs_in_again_with_the_key(tmp_path, monkeypatch, fake):
    need = {"BackendState": "NeedsLogin", "HaveNodeKey": True, "AuthURL": ""}
    n, api = up_node(tmp_path, monkeypatch, statuses=[need, need, RUNNING], authkey="tskey-k")
    n.close()
    assert api.started[0]["AuthKey"] == "tskey-k" and api.started[1] == "login-interactive"
    assert len(api.started) == 2                         # once


def test_connect_and_relay_over_the_fake_library(tmp_path, monkeypatch, fake):
    import socket
    n, _ = up_node(tmp_path, monkeypatch)
    ends = []

    async def go():
        conn = await n.connect("fd7a:115c:a1e0::2", 22, timeout=3)
        assert isinstance(conn, TailnetConn)
        assert conn.local_address == ("100.64.0.9", 41000)
        name, (handle, ident, net, addr, ms) = fake.calls[-1]
        assert (name, handle, net, addr, ms) == ("dial", 42, b"tcp", b"[fd7a:115c:a1e0::2]:22",
                                                 3000)
        a, b = socket.socketpair()
        done = asyncio.get_running_loop().create_future()
        conn.relay(a, lambda end: (ends.append(end), done.set_result(None)), b"hi")
        assert fake.calls[-1] == ("relay", (42, ident, a.fileno(), b"hi", 2))
        with pytest.raises(NodeStateError, match="already relayed"):
            conn.relay(a)
        fake.send({"id": ident, "ev": "relayed", "up": 10, "down": 20})
        await asyncio.wait_for(done, 3)
        a.close(), b.close()
        # a connection abandoned before its relay is dropped in the node
        conn2 = await n.connect("peer", 80)
        conn2.close()
        conn2.close()
        assert [c[0] for c in fake.calls[-2:]] == ["dial", "drop"]
    asyncio.run(go())
    n.close()
    assert ends == [RelayEnd(10, 20, "", 0)]


def test_dial_failure_carries_the_node_errno(tmp_path, monkeypatch, fake):
    n, _ = up_node(tmp_path, monkeypatch)
    fake.dial_event = lambda ident: {"id": ident, "ev": "dialed", "errno": errno.ECONNREFUSED,
                                     "err": "connection refused"}
    with pytest.raises(DialFailed, match="connection refused") as e:
        asyncio.run(n.connect("peer", 1))
    assert e.value.errno == errno.ECONNREFUSED
    with pytest.raises(ValueError):
        asyncio.run(n.connect("peer", 0))
    n.close()


def test_a_pending_dial_learns_that_the_node_stopped(tmp_path, monkeypatch, fake):
    n, _ = up_node(tmp_path, monkeypatch)
    fake.dial_event = lambda ident: None                # Go never answers

    async def go():
        task = asyncio.create_task(n.connect("peer", 80))
        await asyncio.sleep(0.05)
        assert not task.done()
        n.close()
        return await asyncio.wait_for(task, 3)
    with pytest.raises(DialFailed) as e:
        asyncio.run(go())
    assert e.value.errno == errno.ENETDOWN


def test_a_cancelled_dial_is_dropped_in_the_node(tmp_path, monkeypatch, fake):
    n, _ = up_node(tmp_path, monkeypatch)
    fake.dial_event = lambda ident: None

    async def go():
        task = asyncio.create_task(n.connect("peer", 80))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(go())
    name, (handle, ident) = fake.calls[-1]
    assert name == "drop" and handle == 42
    assert ident not in n._events._handlers
    n.close()


def test_relay_end_when_the_node_stops(tmp_path, monkeypatch, fake):
    import socket
    n, _ = up_node(tmp_path, monkeypatch)
    ends = []

    async def go():
        conn = await n.connect("peer", 80)
        a, b = socket.socketpair()
        conn.relay(a, ends.append)
        a.close(), b.close()
    asyncio.run(go())
    n.close()
    assert len(ends) == 1 and ends[0].errno == errno.ENETDOWN and ends[0].reason


def test_a_node_stuck_starting_is_started_once_more(tmp_path, monkeypatch, fake):
    """Starting for longer than STUCK_STARTING_S (no DERP connection, no live peer): the node is
    closed and started again, once, when the timeout leaves room; then it comes up."""
    monkeypatch.setattr(nodemod, "STUCK_STARTING_S", 0.2)
    starting = {"BackendState": "Starting", "Health": []}
    api = FakeLocalAPI([starting] * 8 + [RUNNING])
    monkeypatch.setattr(nodemod, "LocalAPI", api)
    n = Node(NodeConfig(state_dir=str(tmp_path / "s"), authkey="k"))
    n.up(timeout=5)
    try:
        assert n.running
        assert fake.names()[:3] == ["node_start", "node_close", "node_start"]
    finally:
        n.close()


def test_a_node_stuck_starting_is_not_restarted_without_room(tmp_path, monkeypatch, fake):
    monkeypatch.setattr(nodemod, "STUCK_STARTING_S", 0.2)
    api = FakeLocalAPI([{"BackendState": "Starting", "Health": []}])
    monkeypatch.setattr(nodemod, "LocalAPI", api)
    n = Node(NodeConfig(state_dir=str(tmp_path / "s"), authkey="k"))
    with pytest.raises(UpTimeout):
        n.up(timeout=0.3)           # less than twice STUCK_STARTING_S: no second start
    assert fake.names().count("node_start") == 1


def test_signal_handlers_without_the_signal_stack_get_it():
    """A handler C code installs without SA_ONSTACK (as libuv does for SIGCHLD) would run on a
    goroutine's few-KiB stack on a Go thread and overrun it: protect_go_stacks adds the flag
    and keeps the handler, its mask and its other flags."""
    import ctypes
    import signal as _signal
    from tailproxy.node.library import _SA_ONSTACK, _Sigaction, _libc, protect_go_stacks

    handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda sig: None)
    new, old = _Sigaction(), _Sigaction()
    new.handler = ctypes.cast(handler, ctypes.c_void_p).value
    new.flags = 0x10000000          # SA_RESTART, no SA_ONSTACK
    assert _libc.sigaction(_signal.SIGUSR2, ctypes.byref(new), ctypes.byref(old)) == 0
    try:
        assert _signal.SIGUSR2 in protect_go_stacks()
        got = _Sigaction()
        _libc.sigaction(_signal.SIGUSR2, None, ctypes.byref(got))
        assert got.handler == new.handler and got.flags & _SA_ONSTACK and got.flags & 0x10000000
        assert _signal.SIGUSR2 not in protect_go_stacks()       # once is enough
        assert _signal.SIGTERM not in protect_go_stacks()       # default or Python's: untouched
    finally:
        _libc.sigaction(_signal.SIGUSR2, ctypes.byref(old), None)

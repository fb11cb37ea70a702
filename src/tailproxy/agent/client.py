"""The launcher's side: find the identity's agent (starting it when there is none), attach the
program to it, run the program as today's launcher does, detach.

Finding it: connect to the agent's control socket. When nobody answers, take the identity's
lock: whoever gets it starts the agent and hands the lock down; everyone else keeps trying to
attach until the new agent answers. A client never removes a socket.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

from ..config import Settings
from ..launcher.childenv import SECRETS, child_env
from ..printable import printable
from . import identity
from .wire import agent_wide, settings_to_json

_POLL_S = 0.02
_AGENT_START_GRACE_S = 15.0   # beyond --timeout: Python start-up, exit-node choice, the proxy


class AgentError(Exception):
    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def _say(msg: str) -> None:
    print(f"tailproxy: {printable(msg, keep_newlines=True)}", file=sys.stderr, flush=True)


def _connect(run_dir: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(os.path.join(run_dir, identity.CONTROL))
        return s
    except OSError:
        s.close()
        return None


def _request(s: socket.socket, req: dict, timeout: float = 30.0) -> dict:
    """One request, one reply line (log lines that come first are printed)."""
    s.settimeout(timeout)
    s.sendall(json.dumps(req).encode() + b"\n")
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionResetError("the agent closed the connection")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        msg = json.loads(line)
        if "log" in msg and "ok" not in msg:
            print(msg["log"], file=sys.stderr, flush=True)
            continue
        return msg


def ask(settings: Settings, req: dict, timeout: float = 30.0) -> dict | None:
    """One request to the identity's running agent; None when no agent answers."""
    s = _connect(identity.run_dir(settings.state_dir))
    if s is None:
        return None
    with s:
        try:
            return _request(s, req, timeout)
        except (OSError, ValueError):
            return None


def _spawn_agent(settings: Settings, lock_fd: int) -> None:
    """Start the agent with the lock this process holds; returns once it serves (AgentError
    with what it said otherwise). Its stdio goes to <state dir>/agent.log."""
    import subprocess      # here: an attaching run never needs it
    state = identity.identity(settings.state_dir)
    r, w = os.pipe()
    log = open(os.path.join(state, identity.LOG_NAME), "ab")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.pop("LD_PRELOAD", None)       # a nested tailproxy: the agent itself runs unhooked
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tailproxy.agent", "--lock-fd", str(lock_fd),
             "--ready-fd", str(w)],
            stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(lock_fd, w),
            start_new_session=True, env=env, cwd="/")
    finally:
        os.close(w)
        log.close()
    _spawned.append(proc)       # reaped at exit of the launcher, never waited for
    try:
        proc.stdin.write(settings_to_json(settings).encode())   # the auth key: a pipe only
        proc.stdin.close()
    except OSError:
        pass
    deadline = time.monotonic() + settings.timeout + _AGENT_START_GRACE_S
    with os.fdopen(r, "rb") as ready:
        for line in ready:
            msg = json.loads(line)
            if "say" in msg:
                _say(msg["say"])
            elif msg.get("ok"):
                return
            else:
                raise AgentError("", int(msg.get("status") or 1))
            if time.monotonic() > deadline:
                break
    raise AgentError(f"the agent stopped while starting; see "
                     f"{os.path.join(state, identity.LOG_NAME)}")


_spawned: list = []     # the agents this launcher started (subprocess.Popen)


def attach(settings: Settings, command: list[str]) -> tuple[socket.socket, dict]:
    """A connection to the identity's agent with the program attached, and the agent's reply
    (what the program's environment needs). Starts the agent when none runs."""
    identity.check_state_dir(settings.state_dir)
    run_dir = identity.run_dir(settings.state_dir)
    req = {"cmd": "attach", "pid": os.getpid(), "command": command,
           "verbose": settings.verbose, "settings": agent_wide(settings)}
    deadline = time.monotonic() + settings.timeout + _AGENT_START_GRACE_S
    while True:
        s = _connect(run_dir)
        if s is not None:
            try:
                reply = _request(s, req)
            except (OSError, ValueError):
                reply = {"ok": False, "retry": True}
            if reply.get("ok"):
                s.settimeout(None)
                return s, reply
            s.close()
            if not reply.get("retry"):
                raise AgentError(reply.get("error") or "the agent refused this program")
        lock_fd = identity.open_lock(settings.state_dir)
        try:
            if identity.try_lock(lock_fd):
                _spawn_agent(settings, lock_fd)
                continue
        finally:
            os.close(lock_fd)
        if time.monotonic() > deadline:
            raise AgentError(f"the agent for {identity.identity(settings.state_dir)} holds its "
                             f"lock but does not answer; see its agent.log there")
        time.sleep(_POLL_S)


def _program_env(settings: Settings, reply: dict, preload: str, seccomp: bool = False) -> dict:
    bypass = list(settings.bypass)
    if settings.exit_node_allow_lan_access:
        from ..launcher.lan import local_networks
        bypass += [n for n in local_networks() if n not in bypass]
    env = child_env(dict(os.environ), preload=preload, channel=reply["channel"], bypass=bypass,
                    verbose=settings.verbose,
                    # intercepted programs get no proxy variables: never proxied twice
                    proxy_addr=None if seccomp else tuple(reply["proxy_addr"]),
                    proxy_auth=tuple(reply["proxy_auth"]),
                    export_listeners=settings.export_listeners,
                    park_ports=tuple(reply["park_ports"]), dns_server=reply.get("dns_server"),
                    table=reply.get("table"))
    env["TAILPROXY_REGISTER"] = reply["register"]
    return env


class _AgentLines:
    """Reads the attach connection on a thread while the program runs: the agent's log lines
    are printed, the reply to `detach` is handed to the main thread."""

    def __init__(self, conn: socket.socket):
        import threading
        self.conn = conn
        self.detached = threading.Event()
        self.left = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.conn.makefile("rb"):
                msg = json.loads(line)
                if "log" in msg and "ok" not in msg:
                    print(msg["log"], file=sys.stderr, flush=True)
                elif "left" in msg:
                    self.left = msg["left"]
                    break
        except (OSError, ValueError):
            pass
        self.detached.set()


def _serve_program(conn: socket.socket, program: str, command: list[str], env: dict) -> int:
    from ..launcher.child import run_program
    lines: _AgentLines | None = None

    def started(pid: int) -> None:
        nonlocal lines
        # The reader thread starts only now, once the signal handlers are in place: a signal
        # for tailproxy may be delivered to any thread, and before that it would be fatal.
        lines = _AgentLines(conn)
        try:
            conn.sendall(json.dumps({"cmd": "started", "pid": pid}).encode() + b"\n")
        except OSError:
            pass    # the agent is gone: the program's connects say so (ENETDOWN)

    status = run_program(program, command, env, on_start=started)
    # What the program sent just before exiting may still be on its way: the agent drains it.
    try:
        conn.sendall(b'{"cmd": "detach"}\n')
        if lines and lines.detached.wait(10) and lines.left:
            _say(f"{lines.left} connection(s) still sending after 5s; closing them")
    except OSError:
        pass
    conn.close()
    return status


def run_attached(settings: Settings, command: list[str]) -> int:
    """`tailproxy CMD` on the identity's agent; the program's exit status."""
    from ..fdlimit import raise_soft_limit
    from ..launcher.program import program_and_preload
    from ..rundir import RunDirError
    raise_soft_limit()
    found = program_and_preload(command, _say, settings.intercept)
    if isinstance(found, int):
        return found
    program, preload, interception = found
    try:
        conn, reply = attach(settings, command)
    except AgentError as e:
        if str(e):
            _say(str(e))
        return e.status
    except (identity.IdentityError, RunDirError) as e:
        _say(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    if settings.verbose:
        _say(f"attached to agent {reply['agent_pid']}")
    env = interception.env(_program_env(settings, reply, preload, interception.kind == "seccomp"),
                           dict(os.environ), preload)
    program, command = interception.argv(program, command)
    return _serve_program(conn, program, command, env)


def agents() -> list[tuple[str, dict]]:
    """(control socket path, info) of every agent of this user that answers."""
    out = []
    for d in identity.agent_run_dirs():
        s = _connect(d)
        if s is None:
            continue
        with s:
            try:
                info = _request(s, {"cmd": "info"}, timeout=5)
            except (OSError, ValueError):
                continue
        if info.get("ok"):
            out.append((os.path.join(d, identity.CONTROL), info))
    return out


def wait_until_gone(state_dir: str, timeout: float) -> bool:
    """True once no process holds the identity's lock (the agent has exited)."""
    deadline = time.monotonic() + timeout
    fd = identity.open_lock(state_dir)
    try:
        while not identity.try_lock(fd):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)
        return True
    finally:
        os.close(fd)     # closing the fd drops a lock taken just to look

"""The launcher's side: find the identity's agent (starting it when there is none), attach the
program to it, run the program as today's launcher does, detach.

Finding it: connect to the agent's control socket. When nobody answers, take the identity's
lock: whoever gets it starts the agent and hands the lock down; everyone else keeps trying to
attach until the new agent answers. A client never removes a socket.
"""
from __future__ import annotations

import _socket     # not `socket`: its enums cost an attaching run ~7 ms (see jsonline.py)
import os
import sys
import time

from ..config import Settings
from ..launcher.childenv import SECRETS, child_env
from ..printable import printable
from . import identity, jsonline
from .wire import agent_wide, policy_of, settings_to_json

_POLL_S = 0.02
_AGENT_START_GRACE_S = 15.0   # beyond --timeout: Python start-up, exit-node choice, the proxy


class AgentError(Exception):
    def __init__(self, message: str, status: int = 1, differ: list | None = None):
        super().__init__(message)
        self.status = status
        self.differ = [d for d in differ or [] if isinstance(d, str)]   # agent-wide flags


def _say(msg: str) -> None:
    print(f"tailproxy: {printable(msg, keep_newlines=True)}", file=sys.stderr, flush=True)


def _connect(run_dir: str) -> _socket.socket | None:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.connect(os.path.join(run_dir, identity.CONTROL))
        return s
    except OSError:
        s.close()
        return None


def lines_of(conn: _socket.socket):
    """The lines the agent sends on `conn` until it closes (what makefile() would give)."""
    buf = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines


def _request(s: _socket.socket, req: dict, timeout: float = 30.0) -> dict:
    """One request, one reply line (log lines that come first are printed)."""
    s.settimeout(timeout)
    s.sendall(jsonline.dumps(req).encode() + b"\n")
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionResetError("the agent closed the connection")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        msg = jsonline.loads(line)
        if "log" in msg and "ok" not in msg:
            print(msg["log"], file=sys.stderr, flush=True)
            continue
        return msg


def ask(settings: Settings, req: dict, timeout: float = 30.0) -> dict | None:
    """One request to the identity's running agent; None when no agent answers."""
    s = _connect(identity.run_dir(settings.state_dir))
    if s is None:
        return None
    try:
        return _request(s, req, timeout)
    except (OSError, ValueError):
        return None
    finally:
        s.close()


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
            msg = jsonline.loads(line)
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


# What one node does for every program on it, yet a program may want otherwise: such a program
# runs on a sibling node (its own agent) rather than be refused, when an auth key lets one join.
_SIBLING_FLAGS = {"--exit-node", "--exit-node-allow-lan-access"}
MAX_SIBLINGS = 8


def sibling(settings: Settings, n: int) -> Settings:
    """The n-th sibling identity (n >= 2): `<hostname>-n`, its state dir next to the first's,
    ephemeral (it leaves the tailnet when it stops)."""
    return settings.replace(hostname=f"{settings.hostname}-{n}",
                            state_dir=f"{identity.identity(settings.state_dir)}-{n}",
                            ephemeral=True)


def attach(settings: Settings, command: list[str],
           socks5: dict | None = None) -> tuple[_socket.socket, dict]:
    """A connection to the identity's agent with the program attached, and the agent's reply
    (what the program's environment needs). Starts the agent when none runs. A program that
    wants another exit node than the running agent's runs on a sibling node (sibling()) when
    there is an auth key to log it in; without one it is refused (AgentError)."""
    try:
        return _attach(settings, command, socks5)
    except AgentError as e:
        if not (set(e.differ) and set(e.differ) <= _SIBLING_FLAGS and (command or socks5)):
            raise
        if not settings.authkey:
            raise AgentError(f"{e}; without an auth key (--authkey) this program cannot have a "
                             f"node of its own") from None
        first = e
    for n in range(2, MAX_SIBLINGS + 2):
        try:
            conn, reply = _attach(sibling(settings, n), command, socks5)
        except AgentError as e:
            if set(e.differ) and set(e.differ) <= _SIBLING_FLAGS:
                continue            # that sibling serves yet another exit node
            raise
        if settings.verbose:
            _say(f"the agent for {settings.hostname} uses another exit node: this program runs "
                 f"on the node {settings.hostname}-{n}")
        return conn, reply
    raise AgentError(f"{first}; its {MAX_SIBLINGS} sibling nodes all serve other exit nodes")


def _attach(settings: Settings, command: list[str],
            socks5: dict | None) -> tuple[_socket.socket, dict]:
    identity.check_state_dir(settings.state_dir)
    run_dir = identity.run_dir(settings.state_dir)
    req = {"cmd": "attach", "pid": os.getpid(), "command": command,
           "settings": agent_wide(settings), "policy": policy_of(settings)}
    if socks5 is not None:
        req["socks5"] = socks5          # its password on the control socket only (0700, uid)
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
                raise AgentError(reply.get("error") or "the agent refused this program",
                                 differ=reply.get("differ") or [])
        lock_fd = identity.open_lock(settings.state_dir)
        try:
            if identity.try_lock(lock_fd):
                identity.remove_dead_run_dir(settings.state_dir)   # a SIGKILLed agent's
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
                    table=reply.get("table"), names=reply.get("names"))
    env["TAILPROXY_REGISTER"] = reply["register"]
    return env


class _AgentLines:
    """Reads the attach connection on a thread while the program runs: the agent's log lines
    are printed, the reply to `detach` is handed to the main thread. (`_thread`, not
    `threading`: the latter brings functools and collections, ~10 ms of an attach.)"""

    def __init__(self, conn: _socket.socket):
        import _signal
        import _thread
        from ..launcher.child import FORWARDED
        self.conn = conn
        self._ended = _thread.allocate_lock()
        self._ended.acquire()               # released by the reader when it is done
        self.left = 0
        # The reader is born with the forwarded signals blocked (a thread inherits its
        # creator's mask), so the kernel always hands them to the main thread: one delivered
        # to the reader would leave the main thread in waitpid() with the handler never run.
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, FORWARDED)
        try:
            _thread.start_new_thread(self._read, ())
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)

    def wait_detached(self, timeout: float) -> bool:
        """True once the agent has answered `detach` (or gone), within `timeout` seconds."""
        return self._ended.acquire(timeout=timeout)

    def _read(self) -> None:
        try:
            for line in lines_of(self.conn):
                msg = jsonline.loads(line)
                if "log" in msg and "ok" not in msg:
                    print(msg["log"], file=sys.stderr, flush=True)
                elif "left" in msg:
                    self.left = msg["left"]
                    break
        except (OSError, ValueError):
            pass
        finally:
            self._ended.release()


def _serve_program(conn: _socket.socket, program: str, command: list[str], env: dict) -> int:
    from ..launcher.child import run_program
    lines: _AgentLines | None = None

    def started(pid: int) -> None:
        nonlocal lines
        # The reader thread starts only now, once the signal handlers are in place: a signal
        # for tailproxy may be delivered to any thread, and before that it would be fatal.
        lines = _AgentLines(conn)
        try:
            conn.sendall(jsonline.dumps({"cmd": "started", "pid": pid}).encode() + b"\n")
        except OSError:
            pass    # the agent is gone: the program's connects say so (ENETDOWN)

    status = run_program(program, command, env, on_start=started)
    # What the program sent just before exiting may still be on its way: the agent drains it.
    try:
        conn.sendall(b'{"cmd": "detach"}\n')
        if lines and lines.wait_detached(10) and lines.left:
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


class _Stop(Exception):
    pass


def _stop(signum, frame) -> None:
    raise _Stop()


def run_proxy_attached(settings: Settings) -> int:
    """`tailproxy --socks5 HOST:PORT` on the identity's agent: the agent serves SOCKS5 and HTTP
    proxy clients there (this run's credentials, the per-program policy of this run) until
    Ctrl-C or SIGTERM/SIGHUP here; the agent's lines are printed meanwhile."""
    import signal
    from ..launcher.launch import say_proxy_address
    from ..rundir import RunDirError
    if settings.socks5_no_auth:
        auth = None
    else:
        import secrets
        auth = settings.socks5_auth or ("tailproxy", secrets.token_urlsafe(16))
    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    conn = None
    try:
        conn, reply = attach(settings, [], socks5={"listen": list(settings.socks5),
                                                   "auth": list(auth) if auth else None})
        if settings.verbose:
            _say(f"attached to agent {reply['agent_pid']}")
        say_proxy_address(tuple(reply["proxy_addr"]), auth, settings.show_password)
        for line in lines_of(conn):
            msg = jsonline.loads(line)
            if "log" in msg:
                print(msg["log"], file=sys.stderr, flush=True)
        _say("the agent stopped")
        return 1
    except AgentError as e:
        if str(e):
            _say(str(e))
        return e.status
    except (identity.IdentityError, RunDirError) as e:
        _say(str(e))
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    except (OSError, ValueError) as e:
        _say(f"the agent stopped ({e})")
        return 1
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if conn is not None:
            conn.close()


def agents() -> list[tuple[str, dict]]:
    """(control socket path, info) of every agent of this user that answers."""
    out = []
    for d in identity.agent_run_dirs():
        s = _connect(d)
        if s is None:
            state = identity.identity_of_run_dir(d)
            if state is not None:
                identity.remove_if_dead(state)       # left by a SIGKILLed agent
            continue
        try:
            info = _request(s, {"cmd": "info"}, timeout=5)
        except (OSError, ValueError):
            continue
        finally:
            s.close()
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

"""The agent process: `python -m tailproxy.agent --lock-fd N --ready-fd M`, settings on stdin.

The launcher that found no agent took the identity's lock and passes it down (an flock belongs
to the open file, so the agent holds it from its first instruction: no window for a second
agent). The agent starts its parts in order — node, exit nodes, shared routing, control socket —
and stops them in reverse through one AsyncExitStack; each attached program gets a session of
its own policy (session.py), made at its attach and ended with its last process. Until it is ready, what it has to say (a login URL, a bad exit node) goes to the
launcher on the ready pipe; afterwards to the attached launchers and to `<state dir>/agent.log`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import sys
import time

from .. import control as control_mod
from .. import eventloop
from ..config import Settings
from ..exporter.claims import PortClaims
from ..fdlimit import raise_soft_limit
from ..launcher.exitnodes import ExitNodes
from ..launcher.launch import _up_stoppable_by_sigterm, _Terminated
from ..node import Node, NodeConfig, NodeError
from ..node.exitnode import peer_label
from ..policy import TailnetView
from ..printable import printable
from ..resolver import PlaceholderMap
from ..resolver.service import LOOKUP_SOURCES
from . import identity
from .lifetime import Lifetime, PidfdBudget
from .measure import MAX_LIVE, Measurements, ProgramInfo, fast_path_row
from .peers import exit_node_health, peer_rows
from .routing import SharedRouting
from .session import ProgramSession
from .policy import policy_from_json
from .wire import agent_wide, differences, settings_from_json

_DRAIN_S = 5.0
MAX_SESSIONS = 1024     # programs on one agent (each holds a handful of sockets and a server
                        # in the node); the processes they track share one pidfd budget
_MAX_LINE = 64 * 1024


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process that connected `sock` (SO_PEERCRED, set by the kernel)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)[1]


class Ready:
    """The pipe to the launcher that started this agent: say() lines, then one outcome."""

    def __init__(self, fd: int):
        self.fd = fd

    def _send(self, msg: dict) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, json.dumps(msg).encode() + b"\n")
        except OSError:
            pass            # the launcher went away; the agent serves the next one

    def say(self, text: str) -> None:
        self._send({"say": text})

    def done(self, ok: bool, status: int = 0) -> None:
        self._send({"ok": ok, "status": status})
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Attached:
    """One launcher's connection: its program's session (None for `up`), and whether it wants
    the agent's log lines."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int, command: list[str],
                 verbose: bool):
        self.writer = writer
        self.pid = pid
        self.command = command
        self.verbose = verbose
        self.started = time.time()
        self.session: ProgramSession | None = None

    def send(self, msg: dict) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(msg).encode() + b"\n")

    def send_log(self, line: str) -> None:
        self.send({"log": line})


class Agent:
    def __init__(self, settings: Settings, run_dir: str, ready: Ready):
        self.settings = settings
        self.run_dir = run_dir
        self.ready = ready
        self.attached: dict[object, Attached] = {}
        self.stop = asyncio.Event()
        self.stopping = False
        self.node = self.exits = self.view = None
        self.routing: SharedRouting | None = None
        self.sessions: set[ProgramSession] = set()
        self._numbers = iter(range(1, 1 << 62))
        self.claims = PortClaims()             # which program exports which tailnet port
        self.pidfds = PidfdBudget()            # every program's tracked processes together
        self.lifetime = Lifetime(settings.linger, self._idle, log=self.say)
        self.measure = Measurements(self._classify)
        self.web = None                        # the ui's server, once asked for (web.py)
        self._parts: contextlib.AsyncExitStack | None = None

    # -- saying things -------------------------------------------------------------------
    def say(self, msg: str) -> None:
        line = f"tailproxy: {printable(msg)}"
        print(line, file=sys.stderr, flush=True)
        if self.ready.fd >= 0:
            self.ready.say(msg)
        for a in self.attached.values():
            a.send({"log": line})

    def log(self, msg: str) -> None:
        """--verbose lines: the log, and the attached launchers that asked for them."""
        line = f"tailproxy: {printable(msg)}"
        print(line, file=sys.stderr, flush=True)
        for a in self.attached.values():
            if a.verbose:
                a.send({"log": line})

    def _log_line(self, line: str) -> None:
        """A session's line for the agent's log (the session sends it to its launcher)."""
        print(printable(line), file=sys.stderr, flush=True)

    def _idle(self) -> None:
        print(f"tailproxy: no program for {self.settings.linger:g}s: stopping", file=sys.stderr,
              flush=True)
        self.stopping = True
        self.stop.set()

    # -- measurements (tailproxy top) ---------------------------------------------------------
    def _classify(self, asked: str, dialled: str, via_node: bool) -> str:
        """A connection's route: through the node to a tailnet peer (or a subnet route it
        accepted), through the node to the exit node, or dialled directly by the agent."""
        if not via_node:
            return "direct"
        view = self.view
        if view is None or not view.exit_node_in_use:
            return "tailnet"
        import ipaddress
        host = asked.rpartition(":")[0].strip("[]")
        try:
            ip = ipaddress.ip_address(dialled.rpartition(":")[0].strip("[]"))
        except ValueError:
            ip = None
        if view.is_tailnet_name(host) or (ip is not None and (view.in_tailnet_range(ip)
                                                               or view.in_routes(ip))):
            return "tailnet"
        return "exit-node"

    async def _top(self) -> dict:
        """Everything `tailproxy top` shows of this agent (docs: top.schema.json)."""
        st = await asyncio.to_thread(self.node.localapi.status) if self.node else {}
        peers = peer_rows(st)
        lookups = dict.fromkeys(LOOKUP_SOURCES, 0)
        for names in (self.routing.names.values() if self.routing else ()):
            for source, n in names.by_source.items():
                lookups[source] = lookups.get(source, 0) + n
        snap = self.measure.snapshot()
        fast = await asyncio.to_thread(self.node.parked_snapshot, MAX_LIVE) if self.node else []
        programs = {x.handoff.server_id: x.watch.program for x in self.sessions
                    if x.handoff is not None and x.watch is not None}
        snap["connections"] += [fast_path_row(e, programs.get(e["server"])) for e in fast]
        node_name = ((st.get("Self") or {}).get("DNSName") or "").rstrip(".") or None
        snap.update(ok=True, pid=os.getpid(), hostname=self.settings.hostname, node_name=node_name,
                    state_dir=self.settings.state_dir, programs=self._programs(),
                    peers=peers, exit_node=exit_node_health(peers), lookups=lookups)
        return snap

    async def _ui(self) -> dict:
        """Start the web page's server on the first request (aiohttp is imported only then)."""
        if self.web is None:
            from .web import WebUI
            web = WebUI(self._top_for_web, self._exit_node_from_web, self.log)
            await web.start()
            self._parts.push_async_callback(web.close)
            self.web = web
        return {"ok": True, "url": self.web.url}

    async def _top_for_web(self) -> dict:
        top = await self._top()
        top.pop("ok", None)
        return top

    async def _exit_node_from_web(self, name: str | None) -> dict:
        req = {"cmd": "exit-node-set", "name": name} if name else {"cmd": "exit-node-clear"}
        try:
            return await self._handler(req)
        except Exception as e:      # as the control socket answers it
            return {"ok": False, "error": str(e)}

    # -- parts ---------------------------------------------------------------------------
    def _start_node(self) -> None:
        s = self.settings
        self.node = Node(NodeConfig(state_dir=s.state_dir, hostname=s.hostname, authkey=s.authkey,
                                    control_url=s.control_url, ephemeral=s.ephemeral,
                                    accept_routes=s.accept_routes),
                         on_login_url=lambda url: self.say(
                             f"to join the tailnet, open this URL in a browser:\n\n    {url}\n"),
                         log=self.log if s.verbose else None)
        _up_stoppable_by_sigterm(self.node, s.timeout)
        self.log(f"on the tailnet as {s.hostname} ({', '.join(self.node.ips())})")
        self.view = TailnetView(self.node.localapi.status, accept_routes=s.accept_routes)
        if s.exit_node:
            self.exits = ExitNodes(self.node, s.exit_node, s.exit_node_allow_lan_access, self.say,
                                   on_change=self.view.invalidate)
            self.exits.select_initial(timeout=s.timeout)
            self.log(f"exit node: {peer_label(self.exits.current)}")
        elif self.node.exit_node():
            self.node.clear_exit_node()

    def _build(self, parts: contextlib.AsyncExitStack) -> None:
        s = self.settings
        self.routing = SharedRouting(
            self.node, self.view, PlaceholderMap(s.dns_placeholder_v4, s.dns_placeholder_v6),
            self.run_dir, parts, self.say, self.log)
        if self.exits:
            self.exits.on_change = self.routing.exit_node_changed
            self.exits.on_changing = self.routing.exit_node_changing
        self._handler = control_mod.handler(s, self.node, self.exits, [], self.routing, self.say,
                                            None, self.routing)

    async def run(self) -> int:
        async with contextlib.AsyncExitStack() as parts:
            self._parts = parts
            try:
                self._start_node()
            except NodeError as e:
                self.say(f"cannot join the tailnet: {e}" if not (self.node and self.node.running)
                         else str(e))
                self.ready.done(False, 1)
                return 1
            except ValueError as e:
                self.say(str(e))
                self.ready.done(False, 2)
                return 2
            finally:
                if self.node:
                    parts.callback(self.node.close)
            self._build(parts)
            if self.exits:
                self.exits.start_monitor()
                parts.push_async_callback(self.exits.stop)
            parts.callback(self.lifetime.close)
            parts.push_async_callback(self._close_sessions)
            server = await self._serve_control()
            parts.push_async_callback(self._close_control, server)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, self._stop_now)
            self.lifetime.start()
            print(f"tailproxy: agent {os.getpid()} serving {self.settings.state_dir} "
                  f"(linger {self.settings.linger:g}s)", file=sys.stderr, flush=True)
            self.ready.done(True)
            await self.stop.wait()
            self.stopping = True
            left = sum(await asyncio.gather(*(x.drain(_DRAIN_S) for x in self.sessions)))
            if left:
                self.say(f"{left} connection(s) still sending after {_DRAIN_S:g}s; closing them")
        return 0

    def _stop_now(self) -> None:
        self.stopping = True
        self.stop.set()

    # -- sessions --------------------------------------------------------------------------
    def _session_ended(self, session: ProgramSession) -> None:
        """Its launcher has gone and so has every process it registered."""
        if session in self.sessions:
            self.sessions.discard(session)
            asyncio.get_running_loop().create_task(self._end_session(session))

    async def _end_session(self, session: ProgramSession) -> None:
        try:
            await session.drain(_DRAIN_S)
            await session.close()
        finally:
            self.lifetime.release(session)

    async def _close_sessions(self) -> None:
        for session in list(self.sessions):
            self.sessions.discard(session)
            await session.close()

    # -- control socket ------------------------------------------------------------------
    async def _serve_control(self) -> asyncio.AbstractServer:
        old = os.umask(0o177)
        try:
            return await asyncio.start_unix_server(
                self._serve, os.path.join(self.run_dir, identity.CONTROL), limit=_MAX_LINE)
        finally:
            os.umask(old)

    async def _close_control(self, server: asyncio.AbstractServer) -> None:
        server.close()
        for a in list(self.attached.values()):
            a.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        if uid != os.getuid():
            # The run dir is 0700 already; this holds even for a process that can pass it.
            print(f"tailproxy: refused a control connection from uid {uid}", file=sys.stderr,
                  flush=True)
            # Its request is read (and ignored) first: closing a unix socket with unread data
            # resets the peer, which would then not see the refusal.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.readline(), 2)
            writer.write(json.dumps({"ok": False, "error": "not your agent"}).encode() + b"\n")
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            return
        token = object()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError
                except ValueError:
                    reply = {"ok": False, "error": "malformed request"}
                else:
                    try:
                        reply = await self._handle(req, token, writer)
                    except Exception as e:
                        reply = {"ok": False, "error": str(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            a = self.attached.pop(token, None)
            if a is not None:
                if a.session is not None:
                    a.session.detached()
                self.lifetime.release(token)
            writer.close()

    def _programs(self) -> list[dict]:
        """Every program with a session: attached, or gone on as daemons after its launcher."""
        return [{"pid": x.program_pid or x.launcher_pid, "command": x.command,
                 "started": x.started_at,
                 "exports": x.claims.held_by(x) if x.exporter else [],
                 "export_idle_timeout": x.policy.export_idle_timeout,
                 "withdrawn": sorted(x.exporter.withdrawn) if x.exporter else [],
                 "connections": x.connections, "tracked": len(x.lifetime.tracked)}
                for x in sorted(self.sessions, key=lambda x: x.number)]

    async def _handle(self, req: dict, token: object, writer) -> dict:
        cmd = req["cmd"]
        if cmd == "attach":
            return await self._attach(req, token, writer)
        if cmd == "started":
            a = self.attached.get(token)
            if a and a.session and type(req.get("pid")) is int and req["pid"] > 0:
                a.session.program_started(req["pid"])
            return {"ok": True}
        if cmd == "detach":
            a = self.attached.get(token)
            left = await a.session.drain(_DRAIN_S) if a and a.session else 0
            return {"ok": True, "left": left}
        if cmd == "down":
            self.say(f"stopping (tailproxy down from pid {req.get('pid')})")
            self._stop_now()
            return {"ok": True, "pid": os.getpid()}
        if cmd == "linger":
            value = req.get("linger")
            self.lifetime.set_linger(float("inf") if value == "forever" else float(value))
            return {"ok": True}
        if cmd == "top":
            return await self._top()
        if cmd == "ui":
            return await self._ui()
        if cmd == "info":
            info = await self._handler({"cmd": "info"})
            programs = self._programs()
            info.update(agent=True, state_dir=self.settings.state_dir, programs=programs,
                        tracked=sum(p["tracked"] for p in programs),
                        exports=sorted(p for x in programs for p in x["exports"]),
                        linger="forever" if self.lifetime.linger == float("inf")
                        else self.lifetime.linger,
                        connections=sum(p["connections"] for p in programs))
            return info
        return await self._handler(req)

    async def _attach(self, req: dict, token: object, writer) -> dict:
        if self.stopping:
            return {"ok": False, "retry": True, "error": "the agent is stopping"}
        diff = differences(agent_wide(self.settings), req.get("settings") or {})
        if diff:
            # Only lingering (no launcher attached, no process alive: the sessions left are
            # ending): give way to the new settings rather than refuse them.
            if not self.attached and not any(x.lifetime.tracked for x in self.sessions):
                print(f"tailproxy: giving way to a program with other {', '.join(diff)}",
                      file=sys.stderr, flush=True)
                self._stop_now()
                return {"ok": False, "retry": True, "error": "the agent is stopping"}
            running = "; ".join(f"pid {p['pid']}: {' '.join(p['command'])}"
                                for p in self._programs()) or "a process it tracks"
            return {"ok": False, "differ": diff, "error":
                    f"the agent for {self.settings.state_dir} runs with other {', '.join(diff)} "
                    f"(serving {running}); run this program with another --hostname, or stop "
                    f"the agent with `tailproxy down --hostname {self.settings.hostname}`"}
        if token in self.attached:
            return {"ok": False, "error": "this connection has attached already"}
        command = req.get("command") if isinstance(req.get("command"), list) else []
        command = [str(c) for c in command][:4096]
        try:
            policy = policy_from_json(req.get("policy") or {})
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        try:
            socks = proxy_request(req.get("socks5"))
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        pid = req.get("pid") if type(req.get("pid")) is int else 0
        if socks:
            host, port = socks[0]
            command = ["tailproxy", "--socks5", f"[{host}]:{port}" if ":" in host
                       else f"{host}:{port}"]
        a = Attached(writer, pid, command, policy.verbose)
        reply = {"ok": True, "agent_pid": os.getpid()}
        if command and len(self.sessions) >= MAX_SESSIONS:
            return {"ok": False, "error": f"the agent for {self.settings.state_dir} serves "
                                          f"{MAX_SESSIONS} programs already"}
        if command:
            number = next(self._numbers)
            program = ProgramInfo(number, lambda: session.program_pid or pid, command)
            session = ProgramSession(number, policy, command, pid, self.node,
                                     self.routing, self.claims, self.run_dir, a.send_log,
                                     self._log_line, self._session_ended, pidfds=self.pidfds,
                                     watch=self.measure.for_program(program),
                                     **({"socks": socks[0], "socks_auth": socks[1]} if socks
                                        else {}))
            try:
                await session.start(with_channel=not socks)
            except OSError as e:
                return {"ok": False, "error": f"cannot start this program's proxy: "
                                              f"{e.strerror or e}"}
            a.session = session
            self.sessions.add(session)
            self.lifetime.hold(session)
            reply.update(session.reply())
        self.attached[token] = a
        self.lifetime.hold(token)
        return reply


def proxy_request(value) -> tuple[tuple[str, int], tuple[str, str] | None] | None:
    """The `socks5` part of an attach request (proxy-only mode): (listen address, credentials
    or None), checked; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("socks5: expected a JSON object")
    listen, auth = value.get("listen"), value.get("auth")
    if not (isinstance(listen, list) and len(listen) == 2 and isinstance(listen[0], str)
            and type(listen[1]) is int and 0 <= listen[1] < 65536 and 0 < len(listen[0]) < 256):
        raise ValueError("socks5: listen must be [host, port]")
    if auth is not None and not (isinstance(auth, list) and len(auth) == 2 and
                                 all(isinstance(x, str) and 0 < len(x) < 256 for x in auth)):
        raise ValueError("socks5: auth must be [user, password] or null")
    return (listen[0], listen[1]), (tuple(auth) if auth else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tailproxy-agent")
    p.add_argument("--lock-fd", type=int, required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    args = p.parse_args(argv)
    os.set_inheritable(args.lock_fd, False)
    os.set_inheritable(args.ready_fd, False)
    ready = Ready(args.ready_fd)
    settings = settings_from_json(sys.stdin.buffer.read().decode())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if not identity.try_lock(args.lock_fd):     # the launcher passed a held lock: never here
        ready.say("the identity's lock is not held by this agent")
        ready.done(False, 1)
        return 1
    raise_soft_limit()
    run_dir = identity.create_run_dir(settings.state_dir)
    try:
        return eventloop.run(Agent(settings, run_dir, ready).run())
    except (KeyboardInterrupt, _Terminated):
        ready.done(False, 130)
        return 130
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)    # still the lock holder: ours to remove

"""The agent process: `python -m tailproxy.agent --lock-fd N --ready-fd M`, settings on stdin.

The launcher that found no agent took the identity's lock and passes it down (an flock belongs
to the open file, so the agent holds it from its first instruction: no window for a second
agent). The agent starts its parts in order — node, exit nodes, name service, exporter, DNS
responder, proxy, process tracking, control socket — and stops them in reverse through one
AsyncExitStack. Until it is ready, what it has to say (a login URL, a bad exit node) goes to the
launcher on the ready pipe; afterwards to the attached launchers and to `<state dir>/agent.log`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
import time

from .. import control as control_mod
from .. import eventloop
from ..config import Settings
from ..exporter.exporter import Exporter
from ..exporter.ports import PortFilter
from ..fdlimit import raise_soft_limit
from ..launcher.exitnodes import ExitNodes
from ..launcher.launch import _listen_notice, _start_parts, _start_table, \
    _up_stoppable_by_sigterm, _Terminated
from ..node import Node, NodeConfig, NodeError
from ..node.exitnode import peer_label
from ..policy import NodeHandoff, RouteDialer, TailnetView
from ..printable import printable
from ..proxy.dialer import DirectDialer
from ..proxy.server import Proxy
from ..resolver import DNSResponder, NameService, PlaceholderMap, node_dns_query
from ..resolver.namepublisher import start_name_table
from . import identity
from .lifetime import Lifetime
from .wire import agent_wide, differences, settings_from_json

_DRAIN_S = 5.0
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
    """One launcher's connection: its program, and whether it wants the agent's log lines."""

    def __init__(self, writer: asyncio.StreamWriter, pid: int, command: list[str],
                 verbose: bool):
        self.writer = writer
        self.pid = pid
        self.command = command
        self.verbose = verbose
        self.started = time.time()
        self.program_pid: int | None = None

    def send(self, msg: dict) -> None:
        if not self.writer.is_closing():
            self.writer.write(json.dumps(msg).encode() + b"\n")


class Agent:
    def __init__(self, settings: Settings, run_dir: str, ready: Ready):
        self.settings = settings
        self.run_dir = run_dir
        self.ready = ready
        self.attached: dict[object, Attached] = {}
        self.stop = asyncio.Event()
        self.stopping = False
        self.node = self.exits = self.proxy = self.exporter = self.names = None
        self.dialer = None
        self.responder = None
        self.table_path: str | None = None     # the routing table the preloads read
        self.names_path: str | None = None     # the name table the preloads read
        self.lifetime = Lifetime(settings.linger, self._idle, log=self.say)
        self.auth = ("tailproxy", secrets.token_urlsafe(16))    # the SOCKS5/HTTP port's

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
        line = printable(line)
        print(line, file=sys.stderr, flush=True)
        for a in self.attached.values():
            if a.verbose:
                a.send({"log": line})

    def _idle(self) -> None:
        print(f"tailproxy: no program for {self.settings.linger:g}s: stopping", file=sys.stderr,
              flush=True)
        self.stopping = True
        self.stop.set()

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

    def _build(self) -> None:
        s = self.settings
        node = self.node
        if s.dns != "off":
            self.names = NameService(
                status=node.localapi.status, dns_query=node_dns_query(node.localapi),
                mode="tailnet" if s.dns == "tailnet" else "auto", log=self.log,
                placeholders=PlaceholderMap(s.dns_placeholder_v4, s.dns_placeholder_v6))
        self.dialer = RouteDialer(node=node, direct=DirectDialer(), view=self.view,
                                  placeholders=self.names.placeholders if self.names else None,
                                  tailnet_only=s.tailnet_only, log=self.say)
        if self.exits:
            self.exits.on_change = self.dialer.exit_node_changed
            self.exits.on_changing = self.dialer.exit_node_changing
        self.proxy = Proxy(self.dialer, channel_path=os.path.join(self.run_dir, "channel.sock"),
                           socks_listen=("127.0.0.1", 0),
                           socks_auth=self.auth,
                           connect_timeout=s.connect_timeout, verbose=s.verbose,
                           log=self._log_line, handoff=NodeHandoff(node))
        # Every agent has an exporter: exporting is per program (the preload of a program run
        # with --export-listeners sends the notices), the filter is the agent's.
        self.exporter = Exporter(node, PortFilter(s.export_allow_ports, s.export_deny_ports,
                                                  s.export_max),
                                 s.export_proxy_protocol, self.say, verbose=s.verbose)
        self.proxy.on_listen = _listen_notice(self.exporter)
        self._handler = control_mod.handler(s, node, self.exits, [], self.dialer, self.say,
                                            self.exporter, self.names)

    async def run(self) -> int:
        async with contextlib.AsyncExitStack() as parts:
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
            self._build()
            if self.names:
                await self.names.refresh()
                self.proxy.on_names = self.names.handle
                self.responder = DNSResponder(self.names.query,
                                              log=self.say if self.settings.verbose else None)
            try:
                await _start_parts(parts, self.exporter, self.responder, self.proxy)
            except OSError as e:
                self.say(f"cannot start the local proxy: {e.strerror or e}")
                self.ready.done(False, 1)
                return 1
            # the routing table the preloads read: agent-wide, with the agent's --bypass (a
            # program's own --bypass still reaches its preload through its environment)
            self.table_path = await _start_table(parts, self.dialer, self.run_dir, self.settings,
                                                 list(self.settings.bypass))
            self.names_path = await start_name_table(parts, self.names, self.run_dir, self.say)
            if self.exits:
                self.exits.start_monitor()
                parts.push_async_callback(self.exits.stop)
            self.lifetime.open_registration(os.path.join(self.run_dir, identity.REGISTER))
            parts.callback(self.lifetime.close)
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
            left = await self.proxy.drain(_DRAIN_S)
            if left:
                self.say(f"{left} connection(s) still sending after {_DRAIN_S:g}s; closing them")
        return 0

    def _stop_now(self) -> None:
        self.stopping = True
        self.stop.set()

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
            if self.attached.pop(token, None) is not None:
                self.lifetime.release(token)
            writer.close()

    def _programs(self) -> list[dict]:
        return [{"pid": a.program_pid or a.pid, "command": a.command, "started": a.started}
                for a in self.attached.values()]

    async def _handle(self, req: dict, token: object, writer) -> dict:
        cmd = req["cmd"]
        if cmd == "attach":
            return self._attach(req, token, writer)
        if cmd == "started":
            a = self.attached.get(token)
            if a and isinstance(req.get("pid"), int):
                a.program_pid = req["pid"]
                self.lifetime.track(req["pid"])
            return {"ok": True}
        if cmd == "detach":
            left = await self.proxy.drain(_DRAIN_S)
            return {"ok": True, "left": left}
        if cmd == "down":
            self.say(f"stopping (tailproxy down from pid {req.get('pid')})")
            self._stop_now()
            return {"ok": True, "pid": os.getpid()}
        if cmd == "linger":
            value = req.get("linger")
            self.lifetime.set_linger(float("inf") if value == "forever" else float(value))
            return {"ok": True}
        if cmd == "info":
            info = await self._handler({"cmd": "info"})
            info.update(agent=True, state_dir=self.settings.state_dir, programs=self._programs(),
                        tracked=len(self.lifetime.tracked),
                        linger="forever" if self.lifetime.linger == float("inf")
                        else self.lifetime.linger,
                        connections=len(getattr(self.proxy.channel, "_relays", ()) or ()))
            return info
        return await self._handler(req)

    def _attach(self, req: dict, token: object, writer) -> dict:
        if self.stopping:
            return {"ok": False, "retry": True, "error": "the agent is stopping"}
        diff = differences(agent_wide(self.settings), req.get("settings") or {})
        if diff:
            if not self.lifetime.busy:
                # Only lingering: give way to the new settings rather than refuse them.
                print(f"tailproxy: giving way to a program with other {', '.join(diff)}",
                      file=sys.stderr, flush=True)
                self._stop_now()
                return {"ok": False, "retry": True, "error": "the agent is stopping"}
            running = "; ".join(f"pid {p['pid']}: {' '.join(p['command'])}"
                                for p in self._programs()) or "a process it tracks"
            return {"ok": False, "error":
                    f"the agent for {self.settings.state_dir} runs with other {', '.join(diff)} "
                    f"(serving {running}); run this program with another --hostname, or stop "
                    f"the agent with `tailproxy down --hostname {self.settings.hostname}`"}
        command = req.get("command") if isinstance(req.get("command"), list) else []
        self.attached[token] = Attached(writer, int(req.get("pid") or 0),
                                        [str(c) for c in command], bool(req.get("verbose")))
        self.lifetime.hold(token)
        dns = self.responder.env_value() if self.responder else None
        return {"ok": True, "agent_pid": os.getpid(), "channel": self.proxy.channel_path,
                "register": os.path.join(self.run_dir, identity.REGISTER),
                "proxy_addr": list(self.proxy.socks_address), "proxy_auth": list(self.auth),
                "park_ports": list(self.proxy.park_ports), "dns_server": dns,
                "table": self.table_path, "names": self.names_path}


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

"""One attached program's parts on the agent, built for its own policy (wire.ProgramPolicy).

Each program gets a channel and a SOCKS5/HTTP port of its own (its --connect-timeout, its
--verbose lines sent to its own launcher only), a RouteDialer of its --tailnet-only mode and the
routing table of that mode, the name service of its --dns mode, an exporter with its own filters,
and a registration socket: its processes (fork children and daemons included) register there,
so the agent knows which ones are its. Policy is bound to the sockets the agent made for the
program, not to anything the program sends: no program can change another's.

A session ends when its launcher has gone and every process it registered has ended; the
agent lives while any session does (lifetime.py), then lingers."""
from __future__ import annotations

import os
import secrets
import time
from typing import Callable

from ..exporter.claims import OwnerClaims, PortClaims
from ..exporter.exporter import Exporter
from ..exporter.ports import PortFilter
from ..policy import NodeHandoff
from ..proxy.connwatch import ConnWatch
from ..proxy.server import Proxy
from .lifetime import Lifetime, PidfdBudget
from .routing import SharedRouting
from .policy import ProgramPolicy

DRAIN_S = 5.0


class ProgramSession:
    def __init__(self, number: int, policy: ProgramPolicy, command: list[str], launcher_pid: int,
                 node, routing: SharedRouting, claims: PortClaims, run_dir: str,
                 send: Callable[[str], None], log: Callable[[str], None],
                 on_end: Callable[["ProgramSession"], None],
                 socks: tuple[str, int] | None = ("127.0.0.1", 0),
                 socks_auth: tuple[str, str] | None | bool = True,
                 pidfds: PidfdBudget | None = None, watch: ConnWatch | None = None):
        self.number, self.policy, self.command = number, policy, command
        self.launcher_pid, self.program_pid = launcher_pid, None
        self.node, self.routing, self.claims, self.run_dir = node, routing, claims, run_dir
        self._send, self._log, self._on_end = send, log, on_end
        self.started_at = time.time()
        self.prefix = os.path.join(run_dir, f"p{number}-")
        # True: a password of its own; None: none (`--socks5-no-auth`); a pair: that one
        self.auth = ("tailproxy", secrets.token_urlsafe(16)) if socks_auth is True else socks_auth
        self.socks = socks
        self.watch = watch      # a measure.ProgramWatch (its .program), or None
        self.proxy: Proxy | None = None
        self.exporter: Exporter | None = None
        self.handoff: NodeHandoff | None = None     # the node's fast path for its connects
        self.table: str | None = None
        self.dns_server: str | None = None
        self.names_table: str | None = None     # the name table its preload reads
        self.lifetime = Lifetime(0, self._idle, log=self.say, budget=pidfds)
        self.ended = False

    @property
    def label(self) -> str:
        return f"pid {self.program_pid or self.launcher_pid}: {' '.join(self.command) or '(proxy)'}"

    # -- what it says, to its own launcher -----------------------------------------------------
    def say(self, msg: str) -> None:
        self._log(f"tailproxy: [{self.label}] {msg}")
        self._send(f"tailproxy: {msg}")

    def _verbose_line(self, line: str) -> None:
        self._log(f"[p{self.number}] {line}")
        self._send(line)

    # -- parts -----------------------------------------------------------------------------------
    async def start(self, with_channel: bool = True) -> None:
        p = self.policy
        self.handoff = NodeHandoff(self.node) if with_channel else None
        dialer = self.routing.dialer(p.tailnet_only, self.say)
        found = await self.routing.name_service(p.dns) if with_channel else None
        names = found[0] if found else None
        self.dns_server = found[1].env_value() if found else None
        self.names_table = found[2] if found else None
        self.proxy = Proxy(dialer, channel_path=self.prefix + "channel.sock" if with_channel
                           else None, socks_listen=self.socks, socks_auth=self.auth,
                           connect_timeout=p.connect_timeout, verbose=p.verbose,
                           log=self._verbose_line, make_channel_dir=False,
                           handoff=self.handoff,
                           on_names=names.handle if names else None, watch=self.watch)
        if p.export_listeners and with_channel:
            self.exporter = Exporter(
                self.node, PortFilter(p.export_allow_ports and list(p.export_allow_ports),
                                      p.export_deny_ports and list(p.export_deny_ports),
                                      p.export_max),
                p.export_proxy_protocol, self.say, verbose=p.verbose,
                claims=OwnerClaims(self.claims, self, self.label),
                idle_timeout=p.export_idle_timeout)
            await self.exporter.start()
            self.proxy.on_listen = self.exporter.on_notice
        try:
            await self.proxy.start()
            if with_channel:
                self.table = None if p.proxy_all else await self.routing.table(p.tailnet_only)
                self.lifetime.open_registration(self.prefix + "register.sock")
        except BaseException:
            await self.close()
            raise
        self.lifetime.hold(self)        # the launcher's hold, until detached()
        self.lifetime.start()

    def reply(self) -> dict:
        """What the launcher puts in its program's environment."""
        px = self.proxy
        return {"channel": px.channel_path, "register": self.prefix + "register.sock",
                "proxy_addr": list(px.socks_address) if px.socks_address else None,
                "proxy_auth": list(self.auth) if self.auth else None,
                "park_ports": list(px.park_ports), "dns_server": self.dns_server,
                "table": self.table, "names": self.names_table}

    # -- life ------------------------------------------------------------------------------------
    def program_started(self, pid: int) -> None:
        self.program_pid = pid
        self.lifetime.track(pid)

    def detached(self) -> None:
        """The launcher's connection closed: from now on its processes alone keep it."""
        self._send = lambda line: None
        self.lifetime.release(self)

    def _idle(self) -> None:
        self.ended = True
        self._on_end(self)

    @property
    def connections(self) -> int:
        channel = self.proxy.channel if self.proxy else None
        return len(channel._relays) if channel is not None else 0

    async def drain(self, timeout: float = DRAIN_S) -> int:
        return await self.proxy.drain(timeout) if self.proxy else 0

    async def close(self) -> None:
        self.lifetime.close()
        if self.exporter is not None:
            await self.exporter.close()
            self.exporter = None
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None
        for name in ("register.sock",):
            try:
                os.unlink(self.prefix + name)
            except OSError:
                pass

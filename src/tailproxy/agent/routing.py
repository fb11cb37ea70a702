"""What the programs on one agent share for routing, and what each gets of its own.

Shared (one node): the tailnet view, the placeholder map, one routing table per --tailnet-only
mode (the preloads map it read-only, so a table holds one policy), one name service and DNS
responder per --dns mode. Each program gets its own RouteDialer over them, so that its
--tailnet-only refusals and log lines are its own. An exit-node change reaches every table and
every dialer; a load of the view republishes every table. Parts are made when a first program
asks for them and stopped with the agent (its AsyncExitStack)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from typing import Callable

from ..policy import RouteDialer, RouteTableFile, TablePublisher, TailnetView
from ..proxy.dialer import DirectDialer
from ..resolver import DNSResponder, NameService, PlaceholderMap, node_dns_query
from ..resolver.namepublisher import start_name_table


class SharedRouting:
    def __init__(self, node, view: TailnetView, placeholders: PlaceholderMap, run_dir: str,
                 parts: contextlib.AsyncExitStack, say: Callable[[str], None],
                 log: Callable[[str], None]):
        self.node, self.view, self.placeholders = node, view, placeholders
        self.run_dir, self.parts, self.say, self.log = run_dir, parts, say, log
        self.publishers: dict[bool, TablePublisher] = {}
        self.names: dict[str, NameService] = {}
        self.responders: dict[str, DNSResponder] = {}
        self.name_tables: dict[str, str | None] = {}
        self._dialers: weakref.WeakSet[RouteDialer] = weakref.WeakSet()
        self._lock = asyncio.Lock()
        view.on_load = self._publish_all

    # -- per program ---------------------------------------------------------------------------
    def dialer(self, tailnet_only: bool, log: Callable[[str], None]) -> RouteDialer:
        d = RouteDialer(node=self.node, direct=DirectDialer(), view=self.view,
                        placeholders=self.placeholders, tailnet_only=tailnet_only, log=log)
        self._dialers.add(d)
        return d

    async def table(self, tailnet_only: bool) -> str | None:
        """The path of the routing table for programs of this --tailnet-only mode (None: none
        could be made, the preload then hands every connection over)."""
        async with self._lock:
            pub = self.publishers.get(tailnet_only)
            if pub is None:
                name = "routes-tailnet-only" if tailnet_only else "routes"
                try:
                    table = RouteTableFile(os.path.join(self.run_dir, name))
                except OSError as e:
                    self.say(f"warning: no routing table ({e}); connections go through the agent")
                    return None
                # No bypass prefixes in a shared table: each program's --bypass is in its own
                # environment, and one program's must not make another's connections direct.
                pub = TablePublisher(table, view=self.view, placeholders=self.placeholders,
                                     tailnet_only=tailnet_only, bypass=[], log=self.say)
                self.view.on_load = self._publish_all      # the publisher took it for itself
                self.publishers[tailnet_only] = pub
                await pub.start()
                self.parts.push_async_callback(pub.stop)
            return pub.table.path

    async def name_service(self, mode: str) -> tuple[NameService, DNSResponder, str | None] | None:
        """The name service, DNS responder and name table path for programs of this --dns mode
        (None for off). Only the first mode asked for gets a name table: a table pins the
        placeholders it publishes in the shared map, and one publisher owns the pins (the
        programs of another mode ask the service for every name, as without a table)."""
        if mode == "off":
            return None
        async with self._lock:
            if mode not in self.names:
                names = NameService(status=self.node.localapi.status,
                                    dns_query=node_dns_query(self.node.localapi), mode=mode,
                                    log=self.log, placeholders=self.placeholders)
                await names.refresh()
                responder = DNSResponder(names.query, log=self.log)
                self.parts.push_async_callback(responder.close)   # undoes a partial start too
                await responder.start()
                self.names[mode], self.responders[mode] = names, responder
                self.name_tables[mode] = None
                if len(self.names) == 1:
                    self.name_tables[mode] = await start_name_table(self.parts, names,
                                                                    self.run_dir, self.say)
            return self.names[mode], self.responders[mode], self.name_tables[mode]

    # -- what reaches them all -----------------------------------------------------------------
    def _publish_all(self) -> None:
        for pub in self.publishers.values():
            pub.publish()

    def exit_node_changing(self) -> None:
        for pub in self.publishers.values():
            pub.exit_node_changing()

    def exit_node_changed(self) -> None:
        self.view.invalidate()
        for pub in self.publishers.values():
            pub.exit_node_changed()
        for d in list(self._dialers):
            d.exit_node_changed()       # dials under way through the old exit node start again

    async def refresh(self) -> None:
        """After an exit-node change: every name service's mode from now on."""
        for names in list(self.names.values()):
            await names.refresh()

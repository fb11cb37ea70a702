"""Keeps the routing table the preload reads (policy/table.py) equal to what RouteDialer would
do, so that a destination the proxy would only dial directly is connected by the program
itself, with no hand-over and no relay.

The table says: the mode (exit node in use, --tailnet-only, --no-tailnet) and the prefixes the
proxy routes — the tailnet's ranges, the subnet routes this node accepted, the placeholder
ranges — plus the bypass prefixes (--bypass, LAN access), which are direct in every mode.
It is republished whenever an input changes: after every load of the TailnetView (peers,
routes, exit node), and around an exit-node change: from the moment a change starts until a
status asked for after it has been loaded, the table hands everything over, so no connection
goes direct by a table that no longer holds (the no-leak rule)."""
from __future__ import annotations

import asyncio
from typing import Callable

from ..resolver.placeholders import PlaceholderMap
from . import table as T
from .view import TAILNET_RANGES, TailnetView


class TablePublisher:
    def __init__(self, table: T.RouteTableFile, *, view: TailnetView | None,
                 placeholders: PlaceholderMap | None, tailnet_only: bool, bypass: list[str],
                 interval: float = 2.0, log: Callable[[str], None] = lambda msg: None):
        self.table, self.view, self.placeholders = table, view, placeholders
        self.tailnet_only, self.bypass, self.interval, self.log = tailnet_only, list(bypass), interval, log
        self._changing = 0                  # exit-node changes under way
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._said_full = False
        if view is not None:
            view.on_load = self.publish

    # ---------------------------------------------------------------- what goes in
    def flags(self) -> int:
        f = T.TAILNET_ONLY if self.tailnet_only else 0
        if self.view is None:
            return f | T.NO_TAILNET
        if self._changing or not self.view.current:
            return f | T.HAND_OVER_ALL      # the view predates the last exit-node change
        return f | (T.EXIT_NODE if self.view.exit_node_in_use else 0)

    def routes(self) -> list[tuple[str, int]]:
        routes = [(cidr, T.BYPASS) for cidr in self.bypass]
        if self.view is not None:
            routes += [(str(net), T.PROXY) for net in TAILNET_RANGES]
            routes += [(cidr, T.PROXY) for cidr, _ in self.view.routes()]
        if self.placeholders is not None:
            routes += [(str(self.placeholders.nets[v]), T.PROXY) for v in (4, 6)]
        return routes

    # ---------------------------------------------------------------- when
    def publish(self) -> None:
        """Publish the table for the current inputs (nothing if unchanged)."""
        flags, routes = self.flags(), self.routes()
        if len(routes) > T.MAX_ROUTES:
            if not self._said_full:
                self.log(f"{len(routes)} prefixes to route, the preload's table holds "
                         f"{T.MAX_ROUTES}: every connection goes through the proxy")
                self._said_full = True
            flags, routes = flags | T.HAND_OVER_ALL, routes[:len(self.bypass)][:T.MAX_ROUTES]
        if self.table.published != (flags, tuple(routes)):
            self.table.publish(flags, routes)

    def exit_node_changing(self) -> None:
        """An exit-node change starts: hand everything over until it is done and seen."""
        self._changing += 1
        self.publish()

    def exit_node_changed(self) -> None:
        """The change is done (or failed): the view reloads, then the table follows it."""
        self._changing = max(0, self._changing - 1)
        self.publish()                      # still hands over: the view is not current yet
        if self._wake is not None:
            self._wake.set()

    async def start(self) -> None:
        """Publish from a status asked for now, then keep it current in the background."""
        await self._refresh()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._keep_current())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _refresh(self) -> None:
        if self.view is not None:
            try:
                await self.view.refresh(force=True)     # publishes through on_load
            except Exception as e:                      # the node may be restarting
                self.log(f"routing table: no status from the node ({e})")
        self.publish()

    async def _keep_current(self) -> None:
        """At once after an exit-node change, else every `interval` seconds (peers join,
        routes change)."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self._refresh()

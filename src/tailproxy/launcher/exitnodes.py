"""Exit-node policy for one run: initial choice, failover along a list, runtime switching."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..node import Node
from ..node.exitnode import ExitNodeError, peer_label


PING_TIMEOUT_S = 0.75
PING_MISSES = 2
SUSPECT_S = 30.0


class ExitNodes:
    """`choices` in order of preference ("auto" allowed); the first usable one is used and
    the monitor moves to the next usable one when it goes offline."""

    def __init__(self, node: Node, choices: list[str], allow_lan: bool,
                 say: Callable[[str], None], poll_interval: float = 0.5,
                 on_change: Callable[[], None] | None = None,
                 on_changing: Callable[[], None] | None = None):
        self.node, self.choices, self.allow_lan = node, list(choices), allow_lan
        self.say, self.poll_interval = say, poll_interval
        # Told after every change of the exit node, so that routing follows it at once
        # (policy.RouteDialer.exit_node_changed).
        self.on_change = on_change or (lambda: None)
        # Told before every change of the exit node (each followed by on_change), so that
        # nothing connects directly while it is under way (policy.RouteDialer.exit_node_changing).
        self.on_changing = on_changing or (lambda: None)
        self.current: dict | None = None
        self._misses = 0                           # pings in a row the exit node did not answer
        self._suspects: dict[str, float] = {}      # peer ID -> until when it is passed over
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def select_initial(self, timeout: float) -> None:
        """Blocking: use the first usable choice; raise ExitNodeError listing every failure."""
        errors = []
        for name in self.choices:
            self.on_changing()
            try:
                self.current = self.node.set_exit_node(name, self.allow_lan, timeout=timeout)
                return
            except ExitNodeError as e:
                errors.append(str(e))
            finally:
                self.on_change()
        raise ExitNodeError("; ".join(errors) if len(errors) > 1 else errors[0])

    def start_monitor(self) -> None:
        if len(self.choices) > 1 or self.choices == ["auto"]:
            self._task = asyncio.create_task(self._monitor())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def set(self, name: str | None) -> dict | None:
        """Runtime switch (None clears); stops failover, the user decided."""
        async with self._lock:
            self.on_changing()
            try:
                if name is None:
                    await asyncio.to_thread(self.node.clear_exit_node)
                    self.current, self.choices = None, []
                    return None
                self.current = await asyncio.to_thread(self.node.set_exit_node, name,
                                                       self.allow_lan)
                self.choices = [name]
                return self.current
            finally:
                self.on_change()

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            async with self._lock:
                if not self.choices:
                    continue
                try:
                    await self._check()
                except Exception as e:  # keep monitoring; the node may be restarting
                    self.say(f"exit-node monitor: {e}")

    async def _check(self) -> None:
        st = await asyncio.to_thread(self.node.localapi.status)
        ens = st.get("ExitNodeStatus") or {}
        if ens.get("Online") and await self._answers(ens):
            return
        old = peer_label(self.current) if self.current else "none"
        now = time.monotonic()
        self._suspects = {k: t for k, t in self._suspects.items() if t > now}
        for name in self.choices:
            self.on_changing()
            try:
                peer = await asyncio.to_thread(self.node.set_exit_node, name, self.allow_lan, 10.0,
                                               frozenset(self._suspects))
            except ExitNodeError:
                continue
            finally:
                self.on_change()
            self._misses = 0
            if self.current and peer.get("ID") == self.current.get("ID"):
                return  # it came back
            self.current = peer
            self.say(f"exit node {old} is offline; now using {peer_label(peer)}")
            return
        self.say(f"exit node {old} is offline and no other choice is usable; waiting")

    async def _answers(self, ens: dict) -> bool:
        """Does the exit node in use answer disco pings? The control server may take ~10 s to
        call a node that died offline; missing PING_MISSES pings in a row (about 2 s) is enough
        to move on, and the silent node is passed over for SUSPECT_S."""
        ips = [p.split("/")[0] for p in ens.get("TailscaleIPs") or []]
        if not ips or await asyncio.to_thread(self.node.localapi.ping, ips[0], PING_TIMEOUT_S):
            self._misses = 0
            return True
        self._misses += 1
        if self._misses < PING_MISSES:
            return True
        if ens.get("ID"):
            self._suspects[ens["ID"]] = time.monotonic() + SUSPECT_S
        return False

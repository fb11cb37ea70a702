"""The node as the channel's parked-CONNECT hand-off (proxy/handoff.py): the preload's
connects to online peers are completed, dialled and relayed in Go (node/parked.go), with no
Python on their way. It takes only what this policy sends to the node whatever else holds
(route.py: an online peer's tailnet address); everything else comes back to the proxy."""
from __future__ import annotations

import asyncio
import socket
from typing import Callable

from ..node import Node, NodeError, ParkedConnects
from ..proxy.channel_proto import Address
from ..proxy.handoff import address_of


class NodeHandoff:
    """Implements proxy.handoff.ParkedHandoff over a running Node."""

    def __init__(self, node: Node):
        self.node = node
        self._parked: ParkedConnects | None = None

    def start(self, datagrams: socket.socket, forward: socket.socket,
              park_ports: tuple[int, int], default_timeout: float, max_timeout: float,
              on_event: Callable[[dict], None] | None, report_each: bool = False) -> None:
        try:
            self._parked = self.node.serve_parked(datagrams, forward, park_ports,
                                                  default_timeout, max_timeout, on_event,
                                                  report_each)
        except NodeError as e:
            raise OSError(f"the node cannot take parked connects: {e}") from None

    @property
    def server_id(self) -> int | None:
        """The node's number for this program's fast path (Node.parked_snapshot), once
        started."""
        return self._parked.server_id if self._parked is not None else None

    def peer_of(self, local: Address) -> Address | None:
        parked = self._parked
        try:
            dst = parked.peer_of(str(local)) if parked is not None else None
        except NodeError:
            return None
        return address_of(dst) if dst else None

    async def drain(self, timeout: float) -> int:
        parked = self._parked
        if parked is None:
            return 0
        try:
            return await asyncio.to_thread(parked.drain, timeout)
        except NodeError:
            return 0

    def close(self) -> None:
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.close()

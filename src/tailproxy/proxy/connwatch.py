"""What the channel server tells a watcher about each connection it routes (the agent's
measurements, agent/measure.py). The hot path pays one call at the connect's outcome and one
at the end; nothing is called while bytes flow. A connection the node's fast path relayed on
its own (node/parked.go) is told once, when it has ended."""
from __future__ import annotations

from typing import Protocol

from .dialer import Joined


class ConnWatch(Protocol):
    def opened(self, pid: int, asked: str, dialled: str, via_node: bool, t0: float,
               relay: Joined) -> object:
        """The dial succeeded and the relay runs: a handle for closed(). `t0` is the
        time.monotonic() of the program's connect; `relay` may be read for live counts."""

    def closed(self, handle: object, up: int, down: int, outcome: str) -> None:
        """The relay of `handle` ended (`outcome` as relay_outcome words it)."""

    def failed(self, pid: int, asked: str, dialled: str, outcome: str, t0: float) -> None:
        """The connect failed (`outcome`: the errno's name, maybe with a note)."""

    def relayed_by_node(self, pid: int, dst: str, connect_s: float, duration_s: float,
                        up: int, down: int, outcome: str) -> None:
        """A connection the node's fast path completed and relayed to a peer has ended."""

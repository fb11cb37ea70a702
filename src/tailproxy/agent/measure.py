"""The agent's measurements, cheap enough to stay on (issue 13): connections the proxy routes,
per program; totals, failures by errno and a connect-latency histogram; a rolling window of
closed connections. Memory is bounded whatever programs do: at most MAX_LIVE open connections
are listed (more are counted as `unlisted`), the closed window holds WINDOW, failure kinds are
capped at MAX_FAILURE_KINDS.

Cost per connection: one record and a dict insert at the outcome, a dict pop and a deque
append at the end; nothing while bytes flow (live byte counts are read from the relay when a
snapshot is asked for). Connections the node's fast path relays entirely in Go (a parked
connect to an online peer) never reach the proxy while they run: a view lists the open ones
from the node's snapshot (fast_path_row), with the bytes its relay delivered so far (one
atomic add per copied chunk in Go); each is counted, and kept in the closed window, from the
node's event at its end (node_relayed); the node's status gives each peer's totals
(peers.py)."""
from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from typing import Callable

from ..proxy.dialer import Joined

MAX_LIVE = 4096
FAST_PATH_IDS = 1 << 40     # ids of the node's fast-path connections in a view start here
WINDOW = 256
MAX_FAILURE_KINDS = 64
# connect latency histogram upper bounds, seconds (Prometheus style: cumulative at export)
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ROUTES = ("tailnet", "exit-node", "direct")


class Conn:
    """One connection the proxy routed."""
    __slots__ = ("id", "program", "pid", "asked", "dialled", "route", "state", "up", "down",
                 "connect_s", "started", "t0", "duration_s", "reason", "relay", "relayed_by")

    def __init__(self, id: int, program: "ProgramInfo", pid: int, asked: str, dialled: str,
                 route: str, t0: float, now: float, relay: Joined | None):
        self.id, self.program, self.pid = id, program, pid
        self.asked, self.dialled, self.route = asked, dialled, route
        self.state = "open" if relay is not None else "failed"
        self.up = self.down = 0
        self.t0 = t0
        self.connect_s = now - t0
        self.started = time.time() - self.connect_s
        self.duration_s: float | None = None
        self.reason: str | None = None
        self.relay = relay
        self.relayed_by = "agent"

    def as_json(self, now: float) -> dict:
        up, down = self.up, self.down
        live = self.state == "open"
        if live:
            counts = self.relay.bytes_so_far() if self.relay is not None else None
            up, down = counts if counts is not None else (None, None)
        return {"id": self.id, "relayed_by": self.relayed_by, "pid": self.pid or self.program.pid,
                "program_pid": self.program.pid, "command": self.program.command,
                "asked": self.asked, "dialled": self.dialled, "route": self.route,
                "state": self.state,
                "up": up, "down": down,
                "connect_ms": round(self.connect_s * 1000, 3), "started": self.started,
                "duration_s": round(now - self.t0 if live else self.duration_s or 0.0, 3),
                "reason": self.reason}


class ProgramInfo:
    """Who a connection belongs to: the attached program (its session)."""
    __slots__ = ("number", "pid_of", "command")

    def __init__(self, number: int, pid_of: Callable[[], int], command: list[str]):
        self.number, self.pid_of, self.command = number, pid_of, command

    @property
    def pid(self) -> int:
        return self.pid_of()


class Measurements:
    def __init__(self, classify: Callable[[str, str, bool], str],
                 clock: Callable[[], float] = time.monotonic,
                 max_live: int = MAX_LIVE, window: int = WINDOW):
        """`classify(asked, dialled, via_node)` names a connection's route (ROUTES)."""
        self.classify, self.clock, self.max_live = classify, clock, max_live
        self.live: dict[int, Conn] = {}
        self.closed: deque[Conn] = deque(maxlen=window)
        self._ids = 0
        self.unlisted = 0
        self.connections = {r: 0 for r in ROUTES}
        self.failed = 0
        self.failures: dict[str, int] = {}
        self.bytes_up = self.bytes_down = 0
        self.latency_counts = [0] * (len(LATENCY_BOUNDS) + 1)   # the last: +Inf
        self.latency_sum = 0.0

    def for_program(self, program: ProgramInfo) -> "ProgramWatch":
        return ProgramWatch(self, program)

    # -- the channel server's calls, through ProgramWatch --------------------------------
    def _latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1     # le: bound inclusive

    def opened(self, program: ProgramInfo, pid: int, asked: str, dialled: str, via_node: bool,
               t0: float, relay: Joined) -> Conn | None:
        self._ids += 1
        route = self.classify(asked, dialled, via_node)
        self.connections[route] += 1
        c = Conn(self._ids, program, pid, asked, dialled, route, t0, self.clock(), relay)
        self._latency(c.connect_s)
        if len(self.live) >= self.max_live:
            self.unlisted += 1
            c.relay = None          # counted at its end, never listed: hold nothing of it
            return c
        self.live[c.id] = c
        return c

    def closed_one(self, c: Conn, up: int, down: int, outcome: str) -> None:
        self.live.pop(c.id, None)
        c.relay = None
        c.state, c.up, c.down, c.reason = "closed", up, down, outcome
        c.duration_s = self.clock() - c.t0
        self.bytes_up += up
        self.bytes_down += down
        if " then " in outcome:         # connected, then cut (a clean end or idle is not)
            self._failure(outcome)
        self.closed.append(c)

    def failed_one(self, program: ProgramInfo, pid: int, asked: str, dialled: str,
                   outcome: str, t0: float) -> None:
        self._ids += 1
        self.failed += 1
        self._failure(outcome)
        c = Conn(self._ids, program, pid, asked, dialled, "-", t0, self.clock(), None)
        c.reason, c.duration_s = outcome, c.connect_s
        self.closed.append(c)

    def node_relayed(self, program: ProgramInfo, pid: int, dst: str, connect_s: float,
                     duration_s: float, up: int, down: int, outcome: str) -> None:
        """A connection the node's fast path relayed to a peer (never seen by the proxy) has
        ended: counted as opened and closed at once."""
        self._ids += 1
        self.connections["tailnet"] += 1
        now = self.clock()
        c = Conn(self._ids, program, pid, dst, dst, "tailnet", now - duration_s, now, None)
        c.connect_s, c.relayed_by = connect_s, "node"
        self._latency(connect_s)
        self.closed_one(c, up, down, outcome)

    def _failure(self, outcome: str) -> None:
        kind = errno_kind(outcome)
        if kind not in self.failures and len(self.failures) >= MAX_FAILURE_KINDS - 1:
            kind = "other"      # the last place is kept for it
        self.failures[kind] = self.failures.get(kind, 0) + 1

    # -- reading ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        now = self.clock()
        return {"connections": [c.as_json(now) for c in self.live.values()],
                "closed": [c.as_json(now) for c in reversed(self.closed)],
                "totals": {"connections": dict(self.connections), "failed": self.failed,
                           "open": len(self.live), "unlisted": self.unlisted,
                           "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                           "failures": dict(self.failures),
                           "connect_latency": {
                               "bounds": list(LATENCY_BOUNDS),
                               "counts": list(self.latency_counts),
                               "sum": round(self.latency_sum, 6)}}}


def errno_kind(outcome: str) -> str:
    """ "ECONNREFUSED", "ok then ECONNRESET", "ETIMEDOUT(relay)" -> the errno's name; without
    one, the word after "then" ("ok then cut (...)" -> "cut"), else the last word."""
    words = outcome.replace("(", " ").replace(")", " ").split()
    for w in words:
        if w.startswith("E") and w[1:].isalnum() and w.isupper():
            return w[:32]
    if "then" in words[:-1]:
        return words[words.index("then") + 1][:32]
    return (words[-1] if words else "unknown")[:32]


class ProgramWatch:
    """The ConnWatch (proxy/connwatch.py) of one program's channel server."""
    __slots__ = ("m", "program")

    def __init__(self, m: Measurements, program: ProgramInfo):
        self.m, self.program = m, program

    def opened(self, pid, asked, dialled, via_node, t0, relay):
        return self.m.opened(self.program, pid, asked, dialled, via_node, t0, relay)

    def closed(self, handle, up, down, outcome):
        if handle is not None:
            self.m.closed_one(handle, up, down, outcome)

    def failed(self, pid, asked, dialled, outcome, t0):
        self.m.failed_one(self.program, pid, asked, dialled, outcome, t0)

    def relayed_by_node(self, pid, dst, connect_s, duration_s, up, down, outcome):
        self.m.node_relayed(self.program, pid, dst, connect_s, duration_s, up, down, outcome)


def fast_path_row(entry: dict, program: ProgramInfo | None) -> dict:
    """A connection the node relays on its own (Node.parked_snapshot) as a view lists it: to
    an online peer's address (route tailnet), open, with the bytes its relay delivered so far.
    Its id stays the same from one look to the next (server and the program's port)."""
    port = int(entry["src"].rpartition(":")[2] or 0)
    age_s = entry["age_ms"] / 1000
    return {"id": FAST_PATH_IDS + (entry["server"] << 17) + port, "relayed_by": "node",
            "pid": entry["pid"], "program_pid": program.pid if program else 0,
            "command": program.command if program else [],
            "asked": entry["dst"], "dialled": entry["dst"], "route": "tailnet", "state": "open",
            "up": entry.get("up"), "down": entry.get("down"), "connect_ms": entry["connect_ms"],
            "started": time.time() - age_s, "duration_s": round(age_s, 3), "reason": None}

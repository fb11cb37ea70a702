"""`tailproxy top`: a live terminal view of every agent of this user.

Drawn with rich (a maintained, pure-Python renderer: tables that fit the terminal's width, an
alternate screen, no curses, so it works over SSH and in 80x24); keys are read with termios in
cbreak mode (rich draws, it does not read keys). Views: connections (the busiest first, by the
byte rate between two looks), programs, peers with their paths and the exit node's health.
Keys: c p n switch views, / filters (Enter ends it, an empty filter clears it), q quits.
"""
from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import control
from .printable import printable
from .topview import _exports

VIEWS = {"c": "connections", "p": "programs", "n": "peers"}
INTERVAL_S = 1.0


def _bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def look() -> list[dict]:
    """Every agent's `top` answer (agents that stop meanwhile are left out)."""
    from .agent.client import agents
    views = []
    for path, _ in agents():
        try:
            reply = control.ask(path, {"cmd": "top"}, timeout=10)
        except (OSError, ValueError):
            continue
        if reply.get("ok"):
            views.append(reply)
    return views


class TopState:
    """What is shown: the view, the filter, and the byte rates between two looks."""

    def __init__(self):
        self.view = "connections"
        self.filter = ""
        self.typing: str | None = None      # the filter being typed after "/"
        self._last: dict[tuple, tuple[float, int]] = {}
        self.rates: dict[tuple, float] = {}

    def key(self, ch: str) -> bool:
        """False to quit."""
        if self.typing is not None:
            if ch in ("\r", "\n"):
                self.filter, self.typing = self.typing, None
            elif ch in ("\x7f", "\b"):
                self.typing = self.typing[:-1]
            elif ch == "\x1b":
                self.typing = None
            elif ch.isprintable() and len(self.typing) < 64:
                self.typing += ch
            return True
        if ch in ("q", "\x03"):
            return False
        if ch == "/":
            self.typing = ""
        elif ch in VIEWS:
            self.view = VIEWS[ch]
        return True

    def measure(self, views: list[dict], now: float) -> None:
        seen = {}
        for v in views:
            for c in v["connections"]:
                k = (v["pid"], c["id"])
                total = (c["up"] or 0) + (c["down"] or 0)
                before = self._last.get(k)
                if before and now > before[0]:
                    self.rates[k] = (total - before[1]) / (now - before[0])
                seen[k] = (now, total)
        self._last = seen
        self.rates = {k: r for k, r in self.rates.items() if k in seen}

    def matches(self, *fields) -> bool:
        f = self.filter.lower()
        return not f or any(f in str(x).lower() for x in fields)


def render(state: TopState, views: list[dict], height: int) -> Group:
    lines = []
    for v in views:
        ex = v.get("exit_node")
        health = (f"exit node {ex['name']} {'online' if ex['online'] else 'OFFLINE'} "
                  f"{ex['path']}" if ex else "no exit node")
        t = v["totals"]
        lines.append(Text(f"agent {v['pid']} {v['hostname']}: {health}; {t['open']} open, "
                          f"{t['failed']} failed", style="bold", overflow="ellipsis",
                          no_wrap=True))
    keys = "c connections  p programs  n peers  / filter  q quit"
    prompt = (f"filter: {state.typing}_" if state.typing is not None
              else f"[{state.view}] filter: {state.filter or '-'}   {keys}")
    lines.append(Text(prompt, style="reverse", overflow="ellipsis", no_wrap=True))
    rows = max(3, height - len(lines) - 4)
    table = {"connections": _connections, "programs": _programs, "peers": _peers}[state.view]
    return Group(*lines, table(state, views, rows))


def _table(*cols: str) -> Table:
    t = Table(box=None, pad_edge=False, expand=True, show_edge=False)
    for i, c in enumerate(cols):
        t.add_column(c, no_wrap=True, overflow="ellipsis", ratio=3 if i == 1 else None)
    return t


def _connections(state: TopState, views: list[dict], rows: int) -> Table:
    t = _table("PID", "DESTINATION", "ROUTE", "RATE", "UP", "DOWN", "AGE")
    conns = [(state.rates.get((v["pid"], c["id"]), 0.0), c) for v in views
             for c in v["connections"]]
    conns.sort(key=lambda rc: -rc[0])
    for rate, c in [rc for rc in conns if state.matches(rc[1]["asked"], rc[1]["dialled"],
                                                         rc[1]["route"], rc[1]["pid"],
                                                         " ".join(rc[1]["command"]))][:rows]:
        dest = c["asked"] if c["asked"] == c["dialled"] else f"{c['asked']} ({c['dialled']})"
        t.add_row(str(c["pid"]), printable(dest), c["route"], _bytes(rate) + "/s",
                  _bytes(c["up"]), _bytes(c["down"]), f"{c['duration_s']:.0f}s")
    return t


def _programs(state: TopState, views: list[dict], rows: int) -> Table:
    t = _table("PID", "COMMAND", "CONNS", "EXPORTS", "AGENT")
    progs = [(v, p) for v in views for p in v["programs"]
             if state.matches(p["pid"], " ".join(p["command"]), v["hostname"])]
    for v, p in progs[:rows]:
        t.add_row(str(p["pid"]), printable(" ".join(p["command"])) or "(proxy)",
                  str(p["connections"]), _exports(p), v["hostname"])
    return t


def _peers(state: TopState, views: list[dict], rows: int) -> Table:
    t = _table("PEER", "NAME", "PATH", "HANDSHAKE", "RX", "TX")
    peers = [p for v in views for p in v["peers"]
             if state.matches(p["name"], p["path"], " ".join(p["ips"]))]
    for p in peers[:rows]:
        mark = "exit" if p["exit_node"] else ("on" if p["online"] else "off")
        path = p["path"] + (f" {p['derp_region']}" if p["path"] == "derp" else "")
        t.add_row(mark, p["name"], path, (p["last_handshake"] or "-")[11:19] or "-",
                  _bytes(p["rx_bytes"]), _bytes(p["tx_bytes"]))
    return t


def run() -> int:
    if not sys.stdin.isatty():
        print("tailproxy: top needs a terminal (tailproxy top --once for one look)",
              file=sys.stderr)
        return 2
    console = Console()
    state = TopState()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            next_look = 0.0
            views: list[dict] = []
            while True:
                now = time.monotonic()
                if now >= next_look:
                    views = look()
                    state.measure(views, now)
                    next_look = now + INTERVAL_S
                live.update(render(state, views, console.size.height), refresh=True)
                ready, _, _ = select.select([fd], [], [], max(0.05, next_look - time.monotonic()))
                if ready:
                    data = os.read(fd, 64).decode(errors="replace")
                    if not data or not all(state.key(ch) for ch in data):
                        return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

"""`tailproxy top --once` as text: each agent's exit node, programs, open connections (the
busiest first), recently closed ones, peers with their paths, lookups by source. Every line is
cut to the terminal's width, so it reads in 80 columns."""
from __future__ import annotations

from .printable import printable

CLOSED_SHOWN = 10


def _bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _cmd(words) -> str:
    return printable(" ".join(words or [])) or "(proxy)"


def render_text(views: list[dict], width: int = 80) -> str:
    out: list[str] = []
    if not views:
        return "no agent runs"
    for v in views:
        ex = v.get("exit_node")
        exit_text = (f"exit node {ex['name']} ({'online' if ex['online'] else 'OFFLINE'}, "
                     f"{ex['path']})" if ex else "no exit node")
        t = v["totals"]
        out.append(f"agent {v['pid']} {v['hostname']}: {exit_text}")
        by_route = ", ".join(f"{k} {n}" for k, n in t["connections"].items())
        out.append(f"  connections: {t['open']} open, {by_route}, {t['failed']} failed; "
                   f"up {_bytes(t['bytes_up'])} down {_bytes(t['bytes_down'])} (closed)")
        out.append("  PROGRAMS")
        for p in v["programs"]:
            out.append(f"  {p['pid']:>7} {_exports(p):<24} {_cmd(p['command'])}")
        out.append("  OPEN CONNECTIONS             ROUTE     UP      DOWN    CONNECT  AGE")
        conns = sorted(v["connections"], key=lambda c: -((c["up"] or 0) + (c["down"] or 0)))
        for c in conns:
            out.append(_conn_line(c))
        out.append("  RECENTLY CLOSED              ROUTE     UP      DOWN    CONNECT  REASON")
        for c in v["closed"][:CLOSED_SHOWN]:
            out.append(_conn_line(c, closed=True))
        out.append("  PEERS                          PATH    HANDSHAKE")
        for p in v["peers"]:
            path = p["path"] + (f" {p['derp_region']}" if p["path"] == "derp" else "")
            mark = " (exit node)" if p["exit_node"] else ""
            out.append(f"  {p['name'][:30]:<30} {path:<7} {(p['last_handshake'] or '-')[:19]}"
                       f"{'' if p['online'] else ' offline'}{mark}")
        out.append("  LOOKUPS " + ", ".join(f"{k} {n}" for k, n in v["lookups"].items()))
    return "\n".join(line[:width] for line in out)


def _exports(p: dict) -> str:
    """ "8080,3000 idle 60s withdrawn 9090": exported ports, --export-idle-timeout, withdrawn."""
    text = ",".join(map(str, p["exports"])) or "-"
    if p.get("export_idle_timeout"):
        text += f" idle {p['export_idle_timeout']:g}s"
    if p.get("withdrawn"):
        text += " withdrawn " + ",".join(map(str, p["withdrawn"]))
    return text


def _conn_line(c: dict, closed: bool = False) -> str:
    dest = c["asked"] if c["asked"] == c["dialled"] else f"{c['asked']} ({c['dialled']})"
    tail = printable(c["reason"] or "") if closed else f"{c['duration_s']:.0f}s"
    return (f"  {c['pid']:>7} {printable(dest)[:20]:<20} {c['route']:<9} {_bytes(c['up']):<7} "
            f"{_bytes(c['down']):<7} {c['connect_ms']:>6.1f}ms {tail}")

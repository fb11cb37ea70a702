"""Each tailnet peer's WireGuard path as the node's status tells it (tailproxy top, ps --json):
direct (an endpoint address in use) or through a DERP relay (its region), the last handshake,
and the bytes the node exchanged with it (every connection, the fast path's included)."""
from __future__ import annotations

from ..node.exitnode import peer_label

_NEVER = "0001-01-01T00:00:00Z"


def peer_rows(status: dict) -> list[dict]:
    rows = []
    for p in (status.get("Peer") or {}).values():
        endpoint = p.get("CurAddr") or ""
        relay = p.get("Relay") or ""
        handshake = p.get("LastHandshake") or ""
        rows.append({
            "name": peer_label(p),
            "ips": list(p.get("TailscaleIPs") or []),
            "online": bool(p.get("Online")),
            "path": "direct" if endpoint else ("derp" if relay else "none"),
            "endpoint": endpoint or None,
            "derp_region": relay or None,
            "last_handshake": None if handshake in ("", _NEVER) else handshake,
            "rx_bytes": int(p.get("RxBytes") or 0),
            "tx_bytes": int(p.get("TxBytes") or 0),
            "exit_node": bool(p.get("ExitNode")),
            "exit_node_option": bool(p.get("ExitNodeOption")),
        })
    # the exit node first, then online peers: what a short view must not cut off
    return sorted(rows, key=lambda r: (not r["exit_node"], not r["online"], r["name"]))


def exit_node_health(rows: list[dict]) -> dict | None:
    """The exit node in use: its name, whether it is online and its path; None without one."""
    for r in rows:
        if r["exit_node"]:
            return {"name": r["name"], "online": r["online"], "path": r["path"],
                    "last_handshake": r["last_handshake"]}
    return None

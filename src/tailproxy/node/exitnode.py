"""Choosing an exit node by what a user types, from a LocalAPI status snapshot (pure functions)."""
from __future__ import annotations

import ipaddress

from .errors import NodeError


class ExitNodeError(NodeError):
    """An exit node that cannot be used; the message says why."""


_EXIT_ROUTES = ("0.0.0.0/0", "::/0")


def peer_label(p: dict) -> str:
    return (p.get("DNSName") or p.get("HostName") or p.get("ID") or "?").rstrip(".")


def _names(p: dict) -> set[str]:
    out = set()
    dns = (p.get("DNSName") or "").rstrip(".").lower()
    if dns:
        out.add(dns)
        out.add(dns.split(".")[0])
    if p.get("HostName"):
        out.add(p["HostName"].lower())
    return out


def matches(p: dict, name: str) -> bool:
    want = name.strip().rstrip(".").lower()
    if not want:
        return False
    try:
        ip = ipaddress.ip_address(want)
    except ValueError:
        ip = None
    if ip is not None:
        return any(ipaddress.ip_address(a) == ip for a in p.get("TailscaleIPs") or [])
    return want == (p.get("ID") or "").lower() or want in _names(p)


def find_peer(status: dict, name: str) -> dict:
    """The one peer `name` designates (short name, FQDN, hostname, tailnet IP or stable ID)."""
    peers = list((status.get("Peer") or {}).values())
    hits = [p for p in peers if matches(p, name)]
    if not hits:
        options = ", ".join(sorted(peer_label(p) for p in peers if p.get("ExitNodeOption"))) or "none"
        raise ExitNodeError(f"exit node {name!r}: no such peer on the tailnet "
                            f"(exit nodes available: {options})")
    if len(hits) > 1:
        # An exact FQDN or ID match wins over a short-name/hostname collision.
        exact = [p for p in hits if name.rstrip(".").lower() in
                 ((p.get("DNSName") or "").rstrip(".").lower(), (p.get("ID") or "").lower())]
        if len(exact) == 1:
            return exact[0]
        names = ", ".join(sorted(f"{peer_label(p)} ({p.get('ID')})" for p in hits))
        raise ExitNodeError(f"exit node {name!r} is ambiguous; it matches: {names}")
    return hits[0]


def pick_auto(status: dict, avoid: frozenset = frozenset()) -> dict:
    """An online exit node (none whose ID is in `avoid`): the current one if still fine, else
    the first by name."""
    peers = [p for p in (status.get("Peer") or {}).values()
             if p.get("ExitNodeOption") and p.get("Online") and p.get("ID") not in avoid]
    if not peers:
        raise ExitNodeError("--exit-node=auto: no online exit node on the tailnet")
    current = [p for p in peers if p.get("ExitNode")]
    return current[0] if current else sorted(peers, key=peer_label)[0]


def check_usable(peer: dict, whois: dict | None) -> None:
    """Raise ExitNodeError saying why `peer` cannot be an exit node right now."""
    label = peer_label(peer)
    if not peer.get("ExitNodeOption"):
        node = (whois or {}).get("Node") or {}
        advertised = set((node.get("Hostinfo") or {}).get("RoutableIPs") or [])
        if advertised & set(_EXIT_ROUTES):
            raise ExitNodeError(f"exit node {label!r} offers itself as an exit node, but the "
                                f"control server has not approved it")
        raise ExitNodeError(f"{label!r} is not an exit node (it does not advertise itself as one)")
    if not peer.get("Online"):
        seen = peer.get("LastSeen")
        raise ExitNodeError(f"exit node {label!r} is offline" + (f" (last seen {seen})" if seen else ""))

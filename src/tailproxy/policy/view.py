"""What is on the tailnet right now, from the node's status: peers (addresses, names, online),
the subnet routes this node accepted, and whether an exit node is in use."""
from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Callable

TAILNET_RANGES = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"))


class TailnetView:
    """A status snapshot, taken again when older than `ttl` seconds or after invalidate()
    (the exit node changed).

    ``accept_routes``: whether the node accepts subnet routes (--accept-routes, the pref
    RouteAll). Peers' routes count only then; otherwise the node would not send traffic for
    them into the tailnet anyway."""

    def __init__(self, status: Callable[[], dict], ttl: float = 2.0, accept_routes: bool = False):
        self._status, self.ttl, self.accept_routes = status, ttl, accept_routes
        self._at = float("-inf")
        self._peers: dict = {}              # ip -> online
        self._names: set[str] = set()
        self._routes: list = []             # [(network, peer's DNS name)], accepted only
        self._suffix = ""
        self.exit_node_in_use = False
        # invalidate() counts up; the status now loaded was asked for at loaded_epoch
        self.epoch = 0
        self.loaded_epoch = -1
        # told after every load (the routing table republishes: policy/publisher.py)
        self.on_load: Callable[[], None] = lambda: None

    def invalidate(self) -> None:
        self._at = float("-inf")
        self.epoch += 1

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self._at < self.ttl

    async def refresh(self, force: bool = False) -> None:
        if self.fresh and not force:
            return
        asked_in = self.epoch
        self.load(await asyncio.to_thread(self._status), asked_in=asked_in)

    def load(self, st: dict, asked_in: int | None = None) -> None:
        """`asked_in`: the epoch in which `st` was asked for (default: now). A status asked
        for before the last invalidate() (the exit node changed meanwhile) is loaded but not
        fresh, so the next use asks again instead of routing by it."""
        peers, names, routes = {}, set(), []
        for p in (st.get("Peer") or {}).values():
            for ip in p.get("TailscaleIPs") or []:
                peers[ipaddress.ip_address(ip)] = bool(p.get("Online"))
            dns = (p.get("DNSName") or "").rstrip(".").lower()
            if dns:
                names.update((dns, dns.split(".")[0]))
            for r in (p.get("PrimaryRoutes") or []) if self.accept_routes else ():
                net = ipaddress.ip_network(r, strict=False)
                if net.prefixlen:  # not the exit routes
                    routes.append((net, dns))
        self._peers, self._names, self._routes = peers, names, routes
        me = (((st.get("Self") or {}).get("DNSName")) or "").rstrip(".").lower()
        if me:      # our own name is in the netmap too (the node resolves it)
            names.update((me, me.split(".")[0]))
        self._suffix = ((st.get("CurrentTailnet") or {}).get("MagicDNSSuffix") or "").rstrip(".").lower()
        self.exit_node_in_use = bool((st.get("ExitNodeStatus") or {}).get("ID"))
        self.loaded_epoch = self.epoch if asked_in is None else asked_in
        self._at = time.monotonic() if self.current else float("-inf")
        self.on_load()

    @property
    def current(self) -> bool:
        """Loaded from a status asked for after the last invalidate()."""
        return self.loaded_epoch == self.epoch

    def is_tailnet_name(self, name: str) -> bool:
        """A name in the netmap: a peer's MagicDNS name (FQDN or short name)."""
        return name.rstrip(".").lower() in self._names

    def unknown_under_suffix(self, name: str) -> bool:
        """A name under the MagicDNS suffix that no peer has: it exists nowhere, and is never
        to be asked of any resolver (docs/NAMES.md)."""
        n = name.rstrip(".").lower()
        return (bool(self._suffix) and (n == self._suffix or n.endswith("." + self._suffix))
                and n not in self._names)

    @staticmethod
    def in_tailnet_range(ip) -> bool:
        return any(ip in net for net in TAILNET_RANGES if net.version == ip.version)

    def peer_online(self, ip) -> bool | None:
        """True/False for a peer's address, None for no peer's."""
        return self._peers.get(ip)

    def in_routes(self, ip) -> bool:
        """Inside a subnet route this node accepted (never the exit routes)."""
        return any(ip in net for net, _ in self._routes if net.version == ip.version)

    def routes(self) -> list[tuple[str, str]]:
        """The accepted subnet routes: (CIDR, the router's DNS name), in status order."""
        return [(str(net), via) for net, via in self._routes]

"""The proxy's dialer for the tailnet: the node's dial plus the run's destination policy."""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import time
from typing import Callable

from ..node import DialFailed, Node
from ..proxy.dialer import DialError

TAILNET_RANGES = [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48")]


class TailnetView:
    """What is on the tailnet, from a LocalAPI status snapshot refreshed at most every `ttl` s."""

    def __init__(self, node: Node, ttl: float = 2.0):
        self.node, self.ttl = node, ttl
        self._at = 0.0
        self._names: set[str] = set()
        self._routes: list = []
        self.exit_node_in_use = False

    async def refresh(self) -> None:
        if time.monotonic() - self._at < self.ttl:
            return
        st = await asyncio.to_thread(self.node.localapi.status)
        names, routes = set(), list(TAILNET_RANGES)
        suffix = ((st.get("CurrentTailnet") or {}).get("MagicDNSSuffix") or "").lower()
        for p in (st.get("Peer") or {}).values():
            dns = (p.get("DNSName") or "").rstrip(".").lower()
            if dns:
                names.update((dns, dns.split(".")[0]))
            for r in p.get("PrimaryRoutes") or []:
                net = ipaddress.ip_network(r, strict=False)
                if net.prefixlen:  # not the exit routes
                    routes.append(net)
        self._names, self._routes, self._suffix = names, routes, suffix
        self.exit_node_in_use = bool((st.get("ExitNodeStatus") or {}).get("ID"))
        self._at = time.monotonic()

    def is_tailnet(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            name = host.rstrip(".").lower()
            return name in self._names or bool(self._suffix and name.endswith("." + self._suffix))
        return any(ip in net for net in self._routes if net.version == ip.version)


class TailnetDialer:
    def __init__(self, node: Node, tailnet_only: bool, log: Callable[[str], None]):
        self.node, self.tailnet_only, self.log = node, tailnet_only, log
        self.view = TailnetView(node)

    async def dial(self, host: str, port: int, timeout: float):
        if self.tailnet_only:
            await self.view.refresh()
            if not self.view.exit_node_in_use and not self.view.is_tailnet(host):
                self.log(f"refused {host}:{port}: not on the tailnet and no exit node "
                         f"(--tailnet-only)")
                raise DialError(errno.EHOSTUNREACH,
                                f"{host}:{port} is not on the tailnet (--tailnet-only)")
        try:
            return await self.node.dial(host, port, timeout)
        except DialFailed as e:
            raise DialError(e.errno, str(e)) from None

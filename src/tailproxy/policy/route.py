"""The proxy's dialer: placeholder → name, then the route (node, direct, or refused), then the
dial. A node error becomes a DialError here and only here (the node library already chose the
errno)."""
from __future__ import annotations

import errno
import ipaddress
from collections.abc import Awaitable
from typing import Callable

from ..node import DialFailed, Node
from ..proxy.dialer import DialError, Dialer, Outbound
from ..resolver.held import held_while_connected
from ..resolver.placeholders import PlaceholderMap
from .upstream import NodeUpstream
from .view import TailnetView


class RouteDialer:
    """Implements proxy.dialer.Dialer.

    - A placeholder address is dialled by the name it stands for, through the node, so the
      name is resolved on the far side (MagicDNS, or the exit node's resolver).
    - With an exit node in use, everything goes through the node.
    - Without: tailnet addresses, accepted routes and MagicDNS names go through the node;
      a peer that is offline is refused at once (EHOSTUNREACH), as is an address in the
      tailnet's range that belongs to no peer; anything else is dialled directly, or refused
      with --tailnet-only.
    """

    def __init__(self, *, node: Node | None, direct: Dialer, view: TailnetView | None,
                 placeholders: PlaceholderMap | None = None, tailnet_only: bool = False,
                 log: Callable[[str], None] = lambda msg: None):
        self.node, self.direct, self.view = node, direct, view
        self.placeholders, self.tailnet_only, self.log = placeholders, tailnet_only, log

    async def dial(self, host: str, port: int, timeout: float) -> Outbound:
        started = self.start_dial(host, port, timeout)
        return started if not isinstance(started, Awaitable) else await started

    def start_dial(self, host: str, port: int, timeout: float) -> Outbound | Awaitable[Outbound]:
        ip = _ip(host)
        if ip is not None and self.placeholders is not None and self._is_placeholder(ip):
            name = self.placeholders.name_of(ip)
            if name is None:
                raise DialError(errno.EHOSTUNREACH,
                                f"{host}: a placeholder address that stands for no name in this run")
            self.log(f"{host} is {name}")
            if self.node is None:        # --no-tailnet: this host resolves it
                start = lambda: self.direct.start_dial(name, port, timeout)  # noqa: E731
            else:
                start = lambda: self._via_node(name, port, timeout, None)  # noqa: E731
            return held_while_connected(self.placeholders, name, start)
        if self.node is None:
            return self.direct.start_dial(host, port, timeout)
        if not self.view.fresh:
            return self._route_after_refresh(host, ip, port, timeout)
        return self._route(host, ip, port, timeout)

    def _is_placeholder(self, ip) -> bool:
        v4 = ip if ip.version == 4 or ip.ipv4_mapped is None else ip.ipv4_mapped
        return self.placeholders.contains(v4)

    async def _route_after_refresh(self, host, ip, port, timeout) -> Outbound:
        await self.view.refresh()
        started = self._route(host, ip, port, timeout)
        return started if not isinstance(started, Awaitable) else await started

    def _route(self, host: str, ip, port: int, timeout: float):
        view = self.view
        if view.exit_node_in_use:
            return self._via_node(host, port, timeout, ip)
        if ip is None:
            if view.is_tailnet_name(host):
                return self._via_node(host, port, timeout, None)
        elif view.in_tailnet_range(ip) or view.in_routes(ip):
            return self._via_node(host, port, timeout, ip)
        if self.tailnet_only:
            self.log(f"refused {host}:{port}: not on the tailnet and no exit node (--tailnet-only)")
            raise DialError(errno.EHOSTUNREACH, f"{host}:{port} is not on the tailnet (--tailnet-only)")
        return self.direct.start_dial(host, port, timeout)

    async def _via_node(self, host: str, port: int, timeout: float, ip) -> NodeUpstream:
        if ip is not None and self.view.in_tailnet_range(ip):
            await self._check_peer(host, ip)
        try:
            return NodeUpstream(await self.node.connect(host, port, timeout))
        except DialFailed as e:
            raise DialError(e.errno, str(e)) from None

    async def _check_peer(self, host: str, ip) -> None:
        online = self.view.peer_online(ip)
        if online is None:          # perhaps a peer that joined since the last look
            await self.view.refresh(force=True)
            online = self.view.peer_online(ip)
        if online is None:
            raise DialError(errno.EHOSTUNREACH, f"{host}: no peer of this tailnet has that address")
        if not online:
            raise DialError(errno.EHOSTUNREACH, f"{host}: the peer is offline")


def _ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None

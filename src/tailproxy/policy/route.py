"""The proxy's dialer: placeholder → name, then the route (node, direct, or refused), then the
dial. A node error becomes a DialError here and only here (the node library already chose the
errno)."""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Awaitable
from typing import Callable

from ..node import DialFailed, Node
from ..proxy.dialer import DatagramUpstream, DialError, Dialer, Outbound
from ..resolver.held import HeldDatagramUpstream, held_while_connected
from ..resolver.placeholders import PlaceholderMap
from .upstream import NodeUpstream
from .view import TailnetView


class RouteDialer:
    """Implements proxy.dialer.Dialer.

    - A placeholder address is dialled by the name it stands for, through the node, so the
      name is resolved on the far side (MagicDNS, or the exit node's resolver).
    - A name under the MagicDNS suffix that no peer has is refused (EHOSTUNREACH), exit node
      or not: it exists nowhere, and dialling it by name would have it resolved by this
      host's resolver (or the exit node's), which must never see it.
    - With an exit node in use, everything else goes through the node.
    - Without: tailnet destinations go through the node: a peer's address, an address inside
      a subnet route this node accepted (--accept-routes), a MagicDNS name in the netmap. A
      peer that is offline is refused at once (EHOSTUNREACH), as is an address in the
      tailnet's range that belongs to no peer; anything else is dialled directly, or refused
      with --tailnet-only.
    """

    def __init__(self, *, node: Node | None, direct: Dialer, view: TailnetView | None,
                 placeholders: PlaceholderMap | None = None, tailnet_only: bool = False,
                 log: Callable[[str], None] = lambda msg: None):
        self.node, self.direct, self.view = node, direct, view
        self.placeholders, self.tailnet_only, self.log = placeholders, tailnet_only, log
        self._exit_changed: asyncio.Future | None = None     # set by exit_node_changed()
        # the preload's routing table (policy/publisher.py), told of exit-node changes
        self.table = None

    async def dial(self, host: str, port: int, timeout: float) -> Outbound:
        started = self.start_dial(host, port, timeout)
        return started if not isinstance(started, Awaitable) else await started

    def start_dial(self, host: str, port: int, timeout: float) -> Outbound | Awaitable[Outbound]:
        ip = _ip(host)
        if ip is not None and self.placeholders is not None and self._is_placeholder(ip):
            name = self._placeholder_name(host, ip)
            self.log(f"{host} is {name}")
            if self.node is None:        # --no-tailnet: this host resolves it
                start = lambda: self.direct.start_dial(name, port, timeout)  # noqa: E731
            else:
                start = lambda: self._via_node(name, port, timeout, None)  # noqa: E731
            return held_while_connected(self.placeholders, name, start)
        if self.node is None:
            return self.direct.start_dial(host, port, timeout)
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped         # ::ffff:100.64.0.2 is the peer 100.64.0.2, routed as such
            host = str(ip)
        if not self.view.fresh:
            return self._route_after_refresh(host, ip, port, timeout)
        return self._route(host, ip, port, timeout)

    def _placeholder_name(self, host: str, ip) -> str:
        name = self.placeholders.name_of(ip)
        if name is None:
            raise DialError(errno.EHOSTUNREACH,
                            f"{host}: a placeholder address that stands for no name in this run")
        return name

    def _is_placeholder(self, ip) -> bool:
        v4 = ip if ip.version == 4 or ip.ipv4_mapped is None else ip.ipv4_mapped
        return self.placeholders.contains(v4)

    async def _route_after_refresh(self, host, ip, port, timeout) -> Outbound:
        await self.view.refresh()
        started = self._route(host, ip, port, timeout)
        return started if not isinstance(started, Awaitable) else await started

    def _route(self, host: str, ip, port: int, timeout: float):
        if ip is None and self.view.unknown_under_suffix(host):
            return self._name_not_on_tailnet(host, port, timeout)
        if self._goes_to_node(host, ip):
            return self._via_node(host, port, timeout, ip)
        self._check_direct_allowed(host, port)
        return self.direct.start_dial(host, port, timeout)

    def _goes_to_node(self, host: str, ip) -> bool:
        """With an exit node everything does; without, tailnet destinations (see the class)."""
        view = self.view
        if view.exit_node_in_use:
            return True
        if ip is None:
            return view.is_tailnet_name(host)
        return view.in_tailnet_range(ip) or view.in_routes(ip)

    def _check_direct_allowed(self, host: str, port: int) -> None:
        if self.tailnet_only:
            self.log(f"refused {host}:{port}: not on the tailnet and no exit node (--tailnet-only)")
            raise DialError(errno.EHOSTUNREACH, f"{host}:{port} is not on the tailnet (--tailnet-only)")

    async def dial_udp(self, host: str, port: int, timeout: float) -> socket.socket:
        """The same route as a TCP dial to host:port would take, for datagrams. (No redial
        when the exit node changes: a UDP association has no handshake to lose; the node
        sends its next datagram through the new exit node.)"""
        via_node, name = await self._udp_route(host, port)
        if not via_node:
            return await self.direct.dial_udp(name, port, timeout)
        try:
            return await self.node.dial_udp(name, port, timeout)
        except DialFailed as e:
            raise DialError(e.errno, str(e)) from None

    async def associate_udp(self, host: str, port: int, timeout: float) -> DatagramUpstream | None:
        """The preload's UDP association: held in the node (None: send directly)."""
        via_node, name = await self._udp_route(host, port)
        if not via_node:
            return await self.direct.associate_udp(name, port, timeout)
        try:
            conn = await self.node.connect_udp(name, port, timeout)
        except DialFailed as e:
            raise DialError(e.errno, str(e)) from None
        ip = _ip(host)
        if ip is not None and self.placeholders is not None and self._is_placeholder(ip):
            return HeldDatagramUpstream(self.placeholders, name, conn)   # held while it lives
        return conn

    async def _udp_route(self, host: str, port: int) -> tuple[bool, str]:
        """(through the node?, the host to send to); raises DialError."""
        ip = _ip(host)
        if ip is not None and self.placeholders is not None and self._is_placeholder(ip):
            name = self._placeholder_name(host, ip)
            return self.node is not None, name   # through the node: resolved on the far side
        if self.node is None:
            return False, host
        if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
            host = str(ip)
        await self.view.refresh()
        if ip is None and self.view.unknown_under_suffix(host):
            await self.view.refresh(force=True)
            if self.view.unknown_under_suffix(host):
                raise DialError(errno.EHOSTUNREACH, f"{host}: no node of this tailnet has that name")
        if not self._goes_to_node(host, ip):
            self._check_direct_allowed(host, port)
            return False, host
        if ip is not None and self.view.in_tailnet_range(ip):
            await self._check_peer(host, ip)
        return True, host

    def exit_node_changing(self) -> None:
        """The exit node is about to be switched or cleared: the preload hands everything
        over until the change is done and seen (no connection direct by a stale table)."""
        if self.table is not None:
            self.table.exit_node_changing()

    def exit_node_changed(self) -> None:
        """The exit node was switched or cleared: route from a fresh view, and dial again
        what is still being dialled through the old one."""
        if self.view is not None:
            self.view.invalidate()
        if self.table is not None:
            self.table.exit_node_changed()
        changed, self._exit_changed = self._exit_changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _via_node(self, host: str, port: int, timeout: float, ip) -> NodeUpstream:
        if ip is not None and self.view.in_tailnet_range(ip):
            await self._check_peer(host, ip)
        try:
            if self.view.exit_node_in_use and (ip is None or not self.view.in_tailnet_range(ip)):
                return NodeUpstream(await self._connect_via_exit(host, port, timeout))
            return NodeUpstream(await self.node.connect(host, port, timeout))
        except DialFailed as e:
            raise DialError(e.errno, str(e)) from None

    async def _connect_via_exit(self, host: str, port: int, timeout: float):
        """A dial through the exit node. When the exit node fails over while it is under way
        (its SYN went to a node that is gone), it starts again through the new one, within
        the same timeout, instead of hanging until the program gives up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._exit_changed is None:
                self._exit_changed = loop.create_future()
            changed = self._exit_changed
            dial = asyncio.ensure_future(self.node.connect(host, port, max(0.001, deadline - loop.time())))
            await asyncio.wait((dial, changed), return_when=asyncio.FIRST_COMPLETED)
            if dial.done():
                return dial.result()
            dial.cancel()               # drops the node's dial
            self.log(f"{host}:{port}: the exit node changed while dialling; dialling again")
            await self.view.refresh()

    async def _name_not_on_tailnet(self, host: str, port: int, timeout: float) -> NodeUpstream:
        await self.view.refresh(force=True)         # perhaps a peer that joined since
        if self.view.unknown_under_suffix(host):
            self.log(f"refused {host}:{port}: no node of this tailnet has that name")
            raise DialError(errno.EHOSTUNREACH, f"{host}: no node of this tailnet has that name")
        return await self._via_node(host, port, timeout, None)

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

"""The exporter: a loopback port the program listens on becomes <node>:port on the tailnet.

The preload tells us when a socket starts listening (LISTEN over the private channel); the node
then listens on its tailnet addresses at that port and forwards each connection, in Go, to the
address the program listens on (127.0.0.1, or [::1] for an IPv6-only listener), optionally with a
PROXY v2 header first. No byte of an exported connection passes through Python; with --verbose the
node reports each connection when it ends, with the peer's node and user.

Whether a port is still served is the kernel's word: the export ends when no socket listens on it
any more (last close, dup'd copies, forked children, exec, crash all included), as read from
/proc/net/tcp{,6} on every UNLISTEN notice and every `poll_interval`. If the address that was
served goes away while another loopback address still listens on the port, the export follows it.

UDP: a UDP socket the program binds to a fixed port (held to loopback by the preload) is a
server; the node serves <node>:port/udp by it, one flow per peer, for as long as
/proc/net/udp{,6} shows an unconnected socket bound to that loopback port. The same filters and
maximum apply (TCP and UDP ports counted together).
"""
from __future__ import annotations

import asyncio
from typing import Callable

from ..node import Node, NodeError
from ..proxy.channel_proto import FLAG_LISTEN_UDP, OP_LISTEN
from .listening import loopback_listeners, loopback_udp_servers, target_host
from .ports import PortFilter


class Exporter:
    def __init__(self, node: Node, port_filter: PortFilter, proxy_protocol: bool,
                 say: Callable[[str], None], poll_interval: float = 0.25,
                 listeners: Callable[[], set] = loopback_listeners, verbose: bool = False,
                 claims=None, udp_servers: Callable[[], set] = loopback_udp_servers,
                 idle_timeout: float | None = None):
        self.node, self.filter, self.proxy_protocol = node, port_filter, proxy_protocol
        # exporter/claims.py's OwnerClaims when several programs export through one node
        self.claims = claims
        self.verbose = verbose                   # one line per inbound connection, from the node
        self.say, self.poll_interval, self._listeners = say, poll_interval, listeners
        self.exports: dict = {}                  # port -> the node's Export (.target)
        self.udp_exports: dict = {}              # port -> the node's UDP Export
        self._udp_servers = udp_servers
        # --export-idle-timeout: the node withdraws an export unused that long; the port stays
        # withdrawn until the program listens on it again (a new LISTEN notice)
        self.idle_timeout = idle_timeout
        self.withdrawn: set[int] = set()
        self._refused: set[int] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._names: tuple[str, list[str]] | None = None

    async def start(self) -> None:
        st = await asyncio.to_thread(self.node.localapi.status, False)
        self._names = (((st.get("Self") or {}).get("DNSName") or "").rstrip("."),
                       st.get("TailscaleIPs") or [])
        self._task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        async with self._lock:
            for port in list(self.exports):
                self._unexport(port, quiet=True)
            for port in list(self.udp_exports):
                self._unexport_udp(port)

    # -- notices from the preload -----------------------------------------------------------
    async def on_notice(self, req) -> None:
        """A LISTEN or UNLISTEN request from the channel (the proxy's `on_listen`)."""
        if req.op == OP_LISTEN and req.flags & FLAG_LISTEN_UDP:
            await self.on_udp_bind(req.family, req.port)
        elif req.op == OP_LISTEN:
            await self.on_listen(req.family, req.port)
        else:
            await self.on_unlisten(req.family, req.port)

    async def on_listen(self, family: int, port: int) -> None:
        async with self._lock:
            if port in self.exports:
                return
            why = self.filter.refusal(port, len(self.exports))
            if why is None and self.claims is not None:
                why = self.claims.claim(port)
            if why:
                if port not in self._refused:
                    self.say(f"not exporting port {port}: {why}")
                    self._refused.add(port)
                return
            # The preload sends LISTEN after listen() returned, so the kernel shows the socket;
            # the notice's family is only a fallback.
            host = target_host(await self._live_on(port)) or ("::1" if family == 6 else "127.0.0.1")
            if await self._export(port, host) is None:
                return
            self._refused.discard(port)
            self.withdrawn.discard(port)
            self.say(f"exported port {port}: {self.urls(port)} (forwarded to {_hostport(host, port)})")

    async def on_udp_bind(self, family: int, port: int) -> None:
        async with self._lock:
            if port in self.udp_exports:
                return
            why = self.filter.refusal(port, len(self.exports) + len(self.udp_exports))
            if why is None and self.claims is not None:
                why = self.claims.claim(port, "udp")
            if why:
                if ("udp", port) not in self._refused:
                    self.say(f"not exporting UDP port {port}: {why}")
                    self._refused.add(("udp", port))
                return
            host = target_host(await self._udp_live_on(port)) or (
                "::1" if family == 6 else "127.0.0.1")
            on_inbound = None
            if self.verbose:
                target = _hostport(host, port)
                on_inbound = lambda ev: self._log_inbound(port, target + "/udp", ev)  # noqa: E731
            try:
                self.udp_exports[port] = await self.node.export(port, (host, port),
                                                                on_inbound=on_inbound, udp=True)
            except (NodeError, OSError, ValueError) as e:
                if self.claims is not None:
                    self.claims.release(port, "udp")
                self.say(f"could not export UDP port {port}: {e}")
                return
            self._refused.discard(("udp", port))
            name, ips = self._names or ("", [])
            where = " ".join(([f"{name}:{port}"] if name else []) + [_hostport(ip, port) for ip in ips])
            self.say(f"exported UDP port {port}: {where} (forwarded to {_hostport(host, port)})")

    async def _udp_live_on(self, port: int | None = None):
        by_port: dict[int, set[str]] = {}
        for addr, p in await asyncio.to_thread(self._udp_servers):
            by_port.setdefault(p, set()).add(addr)
        return by_port if port is None else by_port.get(port, set())

    async def on_unlisten(self, family: int, port: int) -> None:
        if port in self.exports:
            await self._sweep()

    # -- the node's forwards ----------------------------------------------------------------
    async def _export(self, port: int, host: str):
        on_inbound = None
        if self.verbose:
            target = _hostport(host, port)
            on_inbound = lambda ev: self._log_inbound(port, target, ev)  # noqa: E731
        export = None

        def idle() -> None:
            if export is not None and self.exports.get(port) is export:
                self._withdraw(port)
        try:
            export = await self.node.export(port, (host, port), proxy_protocol=self.proxy_protocol,
                                            on_inbound=on_inbound, idle_timeout=self.idle_timeout,
                                            on_idle=idle if self.idle_timeout else None)
        except (NodeError, OSError, ValueError) as e:
            if self.claims is not None:
                self.claims.release(port)
            self.say(f"could not export port {port}: {e}")
            return None
        self.exports[port] = export
        return export

    def _unexport(self, port: int, quiet: bool = False) -> None:
        export = self.exports.pop(port, None)
        if export is not None:
            export.close()      # connections already served run to their end
        if self.claims is not None:
            self.claims.release(port)
        if not quiet:
            self.say(f"port {port} is no longer exported (nothing listens on it)")

    def _unexport_udp(self, port: int) -> None:
        self.udp_exports.pop(port).close()
        if self.claims is not None:
            self.claims.release(port, "udp")

    def _withdraw(self, port: int) -> None:
        """The node closed the export for want of use (--export-idle-timeout)."""
        export = self.exports.pop(port)
        export.close()
        if self.claims is not None:
            self.claims.release(port)
        self.withdrawn.add(port)
        self.say(f"port {port} withdrawn from the tailnet: no connection for "
                 f"{self.idle_timeout:g}s (--export-idle-timeout); it comes back when the "
                 f"program listens on it again")

    def _log_inbound(self, port: int, target: str, ev: dict) -> None:
        try:
            self.say(inbound_line(port, target, ev))
        except Exception:       # a log line must never break the node's event delivery
            pass

    # -- liveness -----------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._sweep()
            except Exception as e:  # keep going; the node may be restarting
                self.say(f"exporter: {e}")

    async def _live_on(self, port: int | None = None) -> dict[int, set[str]] | set[str]:
        """The loopback addresses listening now: all as {port: {address}}, or one port's set."""
        by_port: dict[int, set[str]] = {}
        for addr, p in await asyncio.to_thread(self._listeners):
            by_port.setdefault(p, set()).add(addr)
        return by_port if port is None else by_port.get(port, set())

    async def _sweep(self) -> None:
        if self.udp_exports:
            async with self._lock:
                live = await self._udp_live_on()
                for port in list(self.udp_exports):
                    if not live.get(port):
                        self._unexport_udp(port)
                        self.say(f"UDP port {port} is no longer exported (no socket is bound to it)")
        if not self.exports:
            return
        # Read the kernel under the lock: a snapshot taken before an on_listen that is still
        # exporting would not show its listener yet, and would end the new export at once.
        async with self._lock:
            live = await self._live_on()
            for port in list(self.exports):
                addrs = live.get(port)
                if not addrs:
                    self._unexport(port)
                    continue
                host = self.exports[port].target[0]
                if host not in addrs:                    # e.g. the IPv4 half closed, ::1 stays
                    new = target_host(addrs)
                    self.exports.pop(port).close()
                    if await self._export(port, new) is not None:
                        self.say(f"port {port} is now forwarded to {_hostport(new, port)}")

    def urls(self, port: int) -> str:
        name, ips = self._names or ("", [])
        scheme = "https" if port in (443, 8443) else "http"
        out = [f"{scheme}://{name}:{port}/"] if name else []
        out += [_hostport(ip, port) for ip in ips]
        return " ".join(out)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"


def inbound_line(port: int, target: str, ev: dict) -> str:
    """The --verbose line for one exported connection, from the node's "inbound" event."""
    who = f"{ev.get('node') or 'unknown node'}, {ev.get('user') or 'unknown user'}"
    head = f"inbound {ev.get('src', '?')} ({who}) -> port {port} {target}"
    reason = ev.get("reason") or ""
    if reason.startswith("connect "):
        return f"{head} failed: the program does not answer ({reason})"
    outcome = f"cut ({reason})" if reason else "ok"
    return (f"{head} {outcome} up={_fmt_bytes(ev.get('up', 0))} "
            f"down={_fmt_bytes(ev.get('down', 0))} {ev.get('ms', 0) / 1000:.3f}s")

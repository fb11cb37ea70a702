"""The exporter: a loopback port the program listens on becomes <node>:port on the tailnet.

The preload tells us when a socket starts listening (LISTEN over the private channel); the node
then forwards tailnet connections to that port (serve config TCPForward, optionally with a PROXY v2
header). Whether a port is still served is the kernel's word: the export ends when no socket
listens on it any more (last close, dup'd copies, forked children, exec, crash all included), as
read from /proc/net/tcp{,6} on every UNLISTEN notice and every `poll_interval`.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Callable

from .. import proxyproto
from ..node import Node, NodeError
from ..proxy.relay import relay
from .listening import loopback_listeners
from .ports import PortFilter


class Exporter:
    def __init__(self, node: Node, port_filter: PortFilter, proxy_protocol: bool,
                 say: Callable[[str], None], poll_interval: float = 0.25,
                 listeners: Callable[[], set] = loopback_listeners, verbose: bool = False):
        self.node, self.filter, self.proxy_protocol = node, port_filter, proxy_protocol
        # --verbose: connections pass through us (one more hop) so each is logged with who made it
        self.verbose = verbose
        self._via_us: dict[int, tuple] = {}      # port -> (Listener, accept task)
        self._who: dict[str, str] = {}
        self.say, self.poll_interval, self._listeners = say, poll_interval, listeners
        self.exports: dict[int, int] = {}        # port -> family used for the forward
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
                await self._unexport(port, quiet=True)

    # -- notices from the preload -----------------------------------------------------------
    async def on_listen(self, family: int, port: int) -> None:
        async with self._lock:
            if port in self.exports:
                return
            why = self.filter.refusal(port, len(self.exports))
            if why:
                if port not in self._refused:
                    self.say(f"not exporting port {port}: {why}")
                    self._refused.add(port)
                return
            # The kernel may not show the socket as listening yet if we are very quick; the
            # preload sends LISTEN after listen() returned, so it is there.
            live = await asyncio.to_thread(self._listeners)
            fam = 4 if (4, port) in live else 6 if (6, port) in live else family
            target = f"127.0.0.1:{port}" if fam == 4 else f"[::1]:{port}"
            handler = {"TCPForward": target}
            if self.proxy_protocol:
                handler["ProxyProtocol"] = 2
            try:
                if self.verbose:
                    lst = await self.node.listen(port)
                    task = asyncio.create_task(self._accept_loop(lst, port, fam))
                    self._via_us[port] = (lst, task)
                else:
                    await asyncio.to_thread(self.node.serve_tcp, port, handler)
            except NodeError as e:
                self.say(f"could not export port {port}: {e}")
                return
            self.exports[port] = fam
            self._refused.discard(port)
            self.say(f"exported port {port}: {self.urls(port)}")

    async def on_unlisten(self, family: int, port: int) -> None:
        if port in self.exports:
            await self._sweep()

    # -- liveness -----------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._sweep()
            except Exception as e:  # keep going; the node may be restarting
                self.say(f"exporter: {e}")

    async def _sweep(self) -> None:
        if not self.exports:
            return
        live = {port for _, port in await asyncio.to_thread(self._listeners)}
        async with self._lock:
            for port in [p for p in self.exports if p not in live]:
                await self._unexport(port)

    async def _unexport(self, port: int, quiet: bool = False) -> None:
        self.exports.pop(port, None)
        try:
            if port in self._via_us:
                lst, task = self._via_us.pop(port)
                task.cancel()
                await lst.close()
            else:
                await asyncio.to_thread(self.node.serve_tcp, port, None)
        except NodeError as e:
            self.say(f"could not remove the export of port {port}: {e}")
            return
        if not quiet:
            self.say(f"port {port} is no longer exported (nothing listens on it)")

    # -- --verbose: through us, logged with the peer's identity ------------------------------
    async def _accept_loop(self, lst, port: int, fam: int) -> None:
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                conn, src = await lst.accept()
                t = asyncio.create_task(self._forward(conn, src, port, fam))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        finally:
            for t in tasks:
                t.cancel()

    async def _whois(self, ip: str) -> str:
        if ip not in self._who:
            try:
                w = await asyncio.to_thread(self.node.localapi.whois, ip) or {}
            except NodeError:
                w = {}
            node = ((w.get("Node") or {}).get("Name") or "").rstrip(".") or "unknown node"
            user = (w.get("UserProfile") or {}).get("LoginName") or "unknown user"
            self._who[ip] = f"{node}, {user}"
        return self._who[ip]

    async def _forward(self, conn: socket.socket, src: tuple, port: int, fam: int) -> None:
        loop = asyncio.get_running_loop()
        self.say(f"inbound {src[0]} port {src[1]} ({await self._whois(src[0])}) -> port {port}")
        up = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6)
        up.setblocking(False)
        try:
            await loop.sock_connect(up, ("127.0.0.1" if fam == 4 else "::1", port))
            if self.proxy_protocol:
                ips = (self._names or ("", []))[1]
                mine = next((ip for ip in ips if (":" in ip) == (":" in src[0])), src[0])
                await loop.sock_sendall(up, proxyproto.encode(src, (mine, port)))
        except OSError as e:
            self.say(f"inbound to port {port}: the program does not answer ({e.strerror or e})")
            up.close()
            conn.close()
            return
        await relay(conn, up)

    def urls(self, port: int) -> str:
        name, ips = self._names or ("", [])
        scheme = "https" if port in (443, 8443) else "http"
        out = [f"{scheme}://{name}:{port}/"] if name else []
        out += [f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}" for ip in ips]
        return " ".join(out)

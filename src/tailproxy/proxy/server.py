"""``Proxy``: the channel server and the SOCKS5/HTTP proxy over one dialer."""

from __future__ import annotations

import asyncio

import sys
from typing import Callable

from ..printable import printable
from .channel import ChannelServer
from .connwatch import ConnWatch
from .dialer import Dialer
from .handoff import ParkedHandoff
from .loopback import LoopbackEndpoints

__all__ = ["Proxy"]


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


class Proxy:
    """The local proxy.

    ``Proxy(dialer, channel_path=..., socks_listen=(host, port) | None,
    socks_auth=(user, pw) | None, connect_timeout=..., idle_timeout=...,
    verbose=bool, log=callable)``

    - ``channel_path``: SOCK_SEQPACKET Unix socket for libtailproxy.so
      (created 0600; its parent directory is created 0700 if missing), or None;
    - ``socks_listen``: where the SOCKS5 + HTTP proxy listens (port 0 = any);
    - ``socks_auth``: required username/password (SOCKS5 RFC 1929 and HTTP
      ``Proxy-Authorization: Basic``); None = no authentication;
    - ``connect_timeout``: default dial timeout (s); ``idle_timeout``: close a
      relay after that long without traffic (None = never);
    - ``verbose``: one ``log`` line per connection when it ends.
    """

    def __init__(self, dialer: Dialer, *, channel_path: str | None = None,
                 socks_listen: tuple[str, int] | None = None,
                 socks_auth: tuple[str, str] | None = None,
                 connect_timeout: float = 30.0, idle_timeout: float | None = None,
                 verbose: bool = False, log: Callable[[str], None] | None = None,
                 make_channel_dir: bool = True, on_listen=None, on_names=None,
                 handoff: ParkedHandoff | None = None, watch: ConnWatch | None = None):
        self.dialer = dialer
        self.watch = watch                  # the agent's measurements (connwatch.py)
        self._channel_path = channel_path
        self._socks_listen = socks_listen
        self._socks_auth = socks_auth
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.verbose = verbose
        self.log = log or (lambda line: print(printable(line), file=sys.stderr, flush=True))
        self.make_channel_dir = make_channel_dir
        self.on_listen = on_listen          # async callable(ListenReq): export-listeners notices
        self.on_names = on_names            # async callable(Resolve/Reverse/QueryReq) -> reply bytes
        self.handoff = handoff              # takes parked CONNECTs first (proxy/handoff.py)
        self._endpoints: LoopbackEndpoints | None = None
        self.channel: ChannelServer | None = None
        self.socks = None
        self._started = False

    # ------------------------------------------------------------------
    def _on_conn(self, source: str, dst: str, outcome: str, up: int, down: int,
                 duration: float) -> None:
        if self.verbose:
            self.log(f"tailproxy: {source} {dst} {outcome} up={_fmt_bytes(up)} "
                     f"down={_fmt_bytes(down)} {duration:.3f}s")

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        try:
            if self._channel_path is not None:
                self._endpoints = LoopbackEndpoints()
                self.channel = ChannelServer(
                    self._channel_path, self.dialer, endpoints=self._endpoints,
                    connect_timeout=self.connect_timeout, idle_timeout=self.idle_timeout,
                    make_parent=self.make_channel_dir, log=self._debug,
                    on_conn=self._on_conn if self.verbose else None,  # nothing to report otherwise
                    on_listen=self.on_listen, on_names=self.on_names, handoff=self.handoff,
                    watch=self.watch)
                await self.channel.start()
            if self._socks_listen is not None:
                from .socks5 import SocksServer
                self.socks = SocksServer(
                    self.dialer, self._socks_listen, auth=self._socks_auth,
                    connect_timeout=self.connect_timeout, idle_timeout=self.idle_timeout,
                    on_conn=self._on_conn, log=self._debug)
                await self.socks.start()
        except BaseException:
            await self.close()
            raise

    async def drain(self, timeout: float) -> int:
        """Let connections the program has finished with deliver what they hold (see
        ChannelServer.drain); returns how many did not finish in time."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        left = await self.channel.drain(timeout) if self.channel is not None else 0
        if self.socks is not None:      # proxy-aware programs (ALL_PROXY) too
            left += await self.socks.drain(max(0.0, end - loop.time()))
        return left

    async def close(self) -> None:
        if self.socks is not None:
            await self.socks.close()
            self.socks = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self._endpoints is not None:
            self._endpoints.close()
            self._endpoints = None

    async def __aenter__(self) -> "Proxy":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _debug(self, msg: str) -> None:
        if self.verbose:
            self.log(f"tailproxy: {msg}")

    # ------------------------------------------------------------------
    @property
    def park_ports(self) -> tuple[int, int]:
        """Parking ports (IPv4, IPv6; 0 = none) for the preload's fast non-blocking connect."""
        return self.channel.park_ports if self.channel else (0, 0)

    @property
    def channel_path(self) -> str | None:
        return self._channel_path

    @property
    def socks_address(self) -> tuple | None:
        """Bound (host, port) of the SOCKS5/HTTP listener, or None."""
        return self.socks.address if self.socks is not None else None

    @property
    def relay_addresses(self) -> list[tuple]:
        return self.channel.relay_addresses if self.channel is not None else []

"""The DNS server the preload points a program's own port-53 traffic at (dig, c-ares, ...): UDP and
TCP on a loopback port, answers from the name service.

Only this run's user can use it: a datagram or connection is answered only when the socket it
comes from belongs to our uid (looked up in /proc/net/{udp,tcp}{,6}), which is the same trust as
the 0600 channel in the 0700 run directory. Anything else is dropped unanswered.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import sys
from typing import Awaitable, Callable

from . import dnsmsg

Answerer = Callable[[bytes], Awaitable[bytes]]


def _parse_hex_addr(h: str) -> tuple[ipaddress._BaseAddress, int]:
    ip_hex, port_hex = h.split(":")
    raw = bytes.fromhex(ip_hex)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    return ip, int(port_hex, 16)


def _norm(ip: ipaddress._BaseAddress) -> ipaddress._BaseAddress:
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def socket_uid(proto: str, ip: str, port: int) -> int | None:
    """uid owning the local socket bound to ip:port (a wildcard bind matches too), from
    /proc/net/<proto>{,6}; None when there is none."""
    want = _norm(ipaddress.ip_address(ip.split("%", 1)[0]))
    wildcard = None
    for name in (proto, proto + "6"):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f, None)
                for line in f:
                    p = line.split()
                    if len(p) < 8:
                        continue
                    try:
                        lip, lport = _parse_hex_addr(p[1])
                    except ValueError:
                        continue
                    if lport != port:
                        continue
                    lip = _norm(lip)
                    if proto == "tcp" and p[3] == "0A":     # a listener, not the client
                        continue
                    if lip == want:
                        return int(p[7])
                    if lip.is_unspecified and wildcard is None:
                        wildcard = int(p[7])
        except OSError:
            continue
    return wildcard


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, owner: "DNSResponder"):
        self.owner = owner
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.owner._spawn(self.owner._answer_udp(self.transport, data, addr))

    def error_received(self, exc):
        pass


class DNSResponder:
    def __init__(self, answer: Answerer, *, uid: int | None = None,
                 log: Callable[[str], None] | None = None):
        self.answer = answer
        self.uid = os.getuid() if uid is None else uid
        self.log = log or (lambda msg: None)
        self.addresses: list[tuple[str, int]] = []     # where it listens (UDP and TCP alike)
        self._transports = []
        self._servers = []
        self._tasks: set[asyncio.Task] = set()
        self.refused = 0

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    @staticmethod
    def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP sockets on host:port (port 0: the same free port for both)."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(50):
            u = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            t = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                for s in (u, t):
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                u.bind((host, port))
                t.bind((host, u.getsockname()[1]))
                return u, t
            except OSError:
                u.close()
                t.close()
                if port:
                    raise
        raise OSError("no free port for the DNS responder")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        port = 0
        for host in ("127.0.0.1", "::1"):
            try:
                u, t = self._bind_pair(host, port)
            except OSError:
                if host == "::1":
                    try:
                        u, t = self._bind_pair(host, 0)
                    except OSError:
                        continue    # no IPv6 loopback: the preload uses ::ffff:127.0.0.1
                else:
                    raise
            port = u.getsockname()[1]
            tr, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=u)
            self._transports.append(tr)
            t.listen(64)
            t.setblocking(False)
            self._servers.append(await asyncio.start_server(self._serve_tcp, sock=t))
            self.addresses.append((host, port))

    async def close(self) -> None:
        for tr in self._transports:
            tr.close()
        for s in self._servers:
            s.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._transports, self._servers = [], []

    def env_value(self) -> str:
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)

    def _allowed(self, proto: str, addr) -> bool:
        try:
            ok = socket_uid(proto, addr[0], addr[1]) == self.uid
        except (ValueError, IndexError):
            ok = False
        if not ok:
            self.refused += 1
        return ok

    async def _answer_udp(self, transport, data: bytes, addr) -> None:
        if not self._allowed("udp", addr):
            return
        try:
            ans = await self.answer(data)
        except Exception as e:
            self.log(f"dns responder: {e!r}")
            ans = dnsmsg.error_answer(data, dnsmsg.SERVFAIL)
        if not ans:
            return
        limit = 512
        try:
            limit = max(512, min(dnsmsg.parse_query(data).edns_size, 4096))
        except dnsmsg.DNSFormatError:
            pass
        try:
            transport.sendto(dnsmsg.truncate(ans, limit), addr)
        except OSError:
            pass

    async def _serve_tcp(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            if not self._allowed("tcp", w.get_extra_info("peername")):
                return
            while True:
                try:
                    n = struct.unpack("!H", await r.readexactly(2))[0]
                    data = await r.readexactly(n)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                ans = await self.answer(data)
                if not ans:
                    return
                w.write(struct.pack("!H", len(ans)) + ans)
                await w.drain()
        except Exception as e:
            self.log(f"dns responder (tcp): {e!r}")
        finally:
            w.close()

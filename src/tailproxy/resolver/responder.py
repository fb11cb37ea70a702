"""The DNS server the preload points a program's own port-53 traffic at (dig, c-ares, ...): UDP and
TCP on a loopback port, answers from the name service.

Only this run's user can use it: a datagram or connection is answered only when the socket it
comes from belongs to our uid (looked up in /proc/net/{udp,tcp}{,6}), which is the same trust as
the 0600 channel in the 0700 run directory. Anything else is dropped unanswered.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Awaitable, Callable

import dns.rcode

from ..peeruid import socket_uid, tcp_peer_uid
from ..proxy.preauth import PreAuthGate
from . import dnsmsg

Answerer = Callable[[bytes], Awaitable[bytes]]


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
        self.gate = PreAuthGate()    # TCP: per-uid cap, fd headroom, idle deadline

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

    def _allowed(self, proto: str, addr, local=None) -> bool:
        try:
            uid = tcp_peer_uid(addr, local) if local else socket_uid(proto, addr[0], addr[1])
            ok = uid == self.uid
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
            ans = dnsmsg.error_answer(data, dns.rcode.SERVFAIL)
        if not ans:
            return
        if len(ans) > 512:          # what the query allows over UDP (EDNS), else TC
            ans = dnsmsg.truncate(ans, dnsmsg.udp_limit(data))
        try:
            transport.sendto(ans, addr)
        except OSError:
            pass

    async def _serve_tcp(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ticket = self.gate.admit(w.get_extra_info("socket"))
        try:
            if ticket is None or not self._allowed("tcp", w.get_extra_info("peername"),
                                                   w.get_extra_info("sockname")):
                return
            ticket.release()        # our uid: trusted, but still held to the idle deadline
            while True:
                try:
                    async with asyncio.timeout(self.gate.deadline):
                        n = struct.unpack("!H", await r.readexactly(2))[0]
                        data = await r.readexactly(n)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                ans = await self.answer(data)
                if not ans:
                    return
                w.write(struct.pack("!H", len(ans)) + ans)
                await w.drain()
        except Exception as e:
            self.log(f"dns responder (tcp): {e!r}")
        finally:
            if ticket is not None:
                ticket.release()
            w.close()

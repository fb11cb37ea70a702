"""The preload's UDP associations (channel op UDP, preload/src/udp.c).

A program's UDP socket that sends to a destination the node must carry gets a loopback
endpoint: a UDP socket of ours bound to 127.0.0.1 (or ::1) and connected to the program's own
address, so the kernel delivers to it only what that socket sends, and it sends only to that
socket. The node relays between this endpoint and the tailnet (node/datagrams.go); no Python
touches a datagram. One association per (program address, destination), reused while it
lives; at most `limit` at once (ENOBUFS beyond, as a kernel out of buffers would say).
"""
from __future__ import annotations

import asyncio
import errno
import socket
from typing import Callable

from . import channel_proto as cp
from .dialer import DialError, Dialer, errno_name

DEFAULT_LIMIT = 1024
ASSOCIATE_TIMEOUT = 10.0

_LOOPBACK = {cp.FAMILY_V4: "127.0.0.1", cp.FAMILY_V6: "::1"}
# The endpoint's receive queue absorbs the program's bursts while the node encrypts and sends;
# past net.core.rmem_max only with CAP_NET_ADMIN (SO_RCVBUFFORCE), else the kernel's maximum.
ENDPOINT_RCVBUF = 4 << 20
_SO_RCVBUFFORCE = 33        # <asm-generic/socket.h>; Python's socket module lacks it


class UdpAssociations:
    def __init__(self, dialer: Dialer, *, limit: int = DEFAULT_LIMIT,
                 log: Callable[[str], None] = lambda msg: None):
        self.dialer, self.limit, self.log = dialer, limit, log
        self._live: dict[tuple[cp.Address, cp.Address], cp.Address] = {}
        self._starting: dict[tuple[cp.Address, cp.Address], asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._live) + len(self._starting)

    async def answer(self, req: cp.UdpReq) -> bytes:
        """The encoded reply to a UDP request: the endpoint, none (send directly) or an errno."""
        key = (req.local, req.dst.normalized())
        endpoint = self._live.get(key)
        if endpoint is not None:
            return cp.encode_udp_reply(0, endpoint)
        starting = self._starting.get(key)
        if starting is not None:
            return await asyncio.shield(starting)
        if len(self) >= self.limit:
            self.log(f"udp {req.local} -> {req.dst}: refused, {self.limit} associations "
                     f"already (ENOBUFS)")
            return cp.encode_udp_reply(errno.ENOBUFS)
        fut = asyncio.get_running_loop().create_future()
        self._starting[key] = fut
        try:
            reply = await self._start(key, req)
        except BaseException:
            fut.cancel()
            raise
        else:
            fut.set_result(reply)
        finally:
            del self._starting[key]
        return reply

    async def _start(self, key, req: cp.UdpReq) -> bytes:
        local, dst = key
        try:
            upstream = await self.dialer.associate_udp(dst.ip, dst.port, ASSOCIATE_TIMEOUT)
        except DialError as exc:
            self.log(f"udp {local} -> {dst}: {exc} ({errno_name(exc.errno)})")
            return cp.encode_udp_reply(exc.errno or errno.EHOSTUNREACH)
        if upstream is None:
            return cp.encode_udp_reply(0)       # the program sends directly
        try:
            sock = _endpoint_for(local)
        except OSError as exc:
            upstream.close()
            self.log(f"udp {local} -> {dst}: no loopback endpoint: {exc}")
            return cp.encode_udp_reply(exc.errno or errno.ENOBUFS)
        with sock:
            ip, port = sock.getsockname()[:2]
            endpoint = cp.Address(local.family, ip, port)
            self._live[key] = endpoint
            try:
                upstream.relay(sock, lambda end: self._ended(key, endpoint, end))
            except BaseException:
                del self._live[key]
                raise
        return cp.encode_udp_reply(0, endpoint)

    def _ended(self, key, endpoint: cp.Address, end) -> None:
        if self._live.get(key) == endpoint:
            del self._live[key]
        if end.reason:
            self.log(f"udp {key[0]} -> {key[1]}: ended: {end.reason}")


def _endpoint_for(local: cp.Address) -> socket.socket:
    """A UDP socket on loopback connected to the program's address `local`."""
    sock = socket.socket(local.af, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, ENDPOINT_RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ENDPOINT_RCVBUF)
        sock.bind((_LOOPBACK[local.family], 0))
        sock.connect(local.sockaddr())
    except BaseException:
        sock.close()
        raise
    return sock

"""Buffered async reads on a raw non-blocking socket (for proxy handshakes).

Unlike asyncio streams this keeps the socket a plain socket, so that after
the handshake the relay can take it over; :meth:`leftover` hands over any
bytes read past the handshake.
"""

from __future__ import annotations

import asyncio
import socket


class HandshakeEOF(Exception):
    """The peer closed (or reset) before the message was complete."""


class SockReader:
    def __init__(self, sock: socket.socket, chunk: int = 16384):
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.chunk = chunk

    async def fill(self, n: int = 1) -> None:
        """Read until at least ``n`` bytes are buffered."""
        while len(self.buf) < n:
            try:
                data = await self.loop.sock_recv(self.sock, self.chunk)
            except ConnectionError as exc:
                raise HandshakeEOF(str(exc)) from None
            if not data:
                raise HandshakeEOF("peer closed")
            self.buf += data

    async def more(self) -> None:
        """Read at least one more byte."""
        await self.fill(len(self.buf) + 1)

    def consume(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def readexactly(self, n: int) -> bytes:
        await self.fill(n)
        return self.consume(n)

    async def parse(self, fn, limit: int):
        """Feed the buffer to ``fn(buf) -> (value, consumed) | None`` until it
        returns a value; ``limit`` bounds the bytes buffered for this parse
        (``fn`` raises on malformed input; we raise ValueError past limit)."""
        while True:
            res = fn(bytes(self.buf[:limit]))
            if res is not None:
                value, used = res
                del self.buf[:used]
                return value
            if len(self.buf) >= limit:
                raise ValueError("message too long")
            await self.more()

    def leftover(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def sendall(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

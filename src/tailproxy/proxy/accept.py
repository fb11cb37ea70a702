"""The accept loop every listener of the proxy shares."""
from __future__ import annotations

import asyncio
import errno
import socket
from typing import AsyncIterator, Callable

_SHORT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


async def accepted(loop: asyncio.AbstractEventLoop, lsock: socket.socket, what: str,
                   log: Callable[[str], None]) -> AsyncIterator[tuple[socket.socket, object]]:
    """Yield (non-blocking connection, peer address) forever; out of fds/memory pauses briefly
    instead of ending the listener."""
    while True:
        try:
            conn, addr = await loop.sock_accept(lsock)
        except (ConnectionAbortedError, InterruptedError):
            continue
        except OSError as exc:
            if exc.errno in _SHORT_OF:
                log(f"{what} accept: {exc}; pausing")
                await asyncio.sleep(0.1)
                continue
            raise
        conn.setblocking(False)
        yield conn, addr

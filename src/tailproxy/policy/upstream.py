"""A tailnet connection as the proxy sees it: an upstream that relays itself, in the node."""
from __future__ import annotations

import errno
import fcntl
import socket
import struct
from typing import Callable

from ..node import NodeError, RelayEnd, TailnetConn
from ..proxy.dialer import Joined

_TCP_ESTABLISHED = 1
_SIOCINQ = 0x541B


class NodeUpstream:
    """Implements proxy.dialer.Upstream over a TailnetConn."""

    def __init__(self, conn: TailnetConn):
        self._conn = conn
        self.local_address = conn.local_address

    def join(self, local: socket.socket, done: Callable[[int, int, int, str], None],
             initial: bytes = b"") -> Joined:
        joined = _NodeRelay(local, done, self._conn)
        try:
            self._conn.relay(local, joined._on_end, initial)
        except NodeError as e:      # the proxy handles a join that fails as a socket error
            raise OSError(errno.ECONNRESET, f"the node could not relay: {e}") from None
        return joined

    def close(self) -> None:
        self._conn.close()


class _NodeRelay:
    """A relay running in the node. We keep our own descriptor of the proxy-side socket (the
    node has a duplicate) so that delivering() can ask the kernel where the program is."""

    __slots__ = ("local", "done", "finished", "conn")

    def __init__(self, local: socket.socket, done, conn: TailnetConn):
        self.local, self.done, self.conn = local, done, conn
        self.finished = False

    def bytes_so_far(self) -> tuple[int, int] | None:
        if self.finished:
            return None
        try:
            return self.conn.bytes_so_far()
        except NodeError:
            return None

    def _on_end(self, end: RelayEnd) -> None:
        self.finished = True
        self.local.close()
        self.done(end.up, end.down, end.errno, end.reason)

    def delivering(self) -> bool:
        """True while what the program sent is still on its way: bytes wait in our socket for
        the node to read them (an exited program's socket pushes the rest as the node reads),
        or the program ended its side (its FIN arrived after its last byte: the socket left
        ESTABLISHED) and the relay has not ended yet, which it does once the tailnet peer ended
        its side too."""
        if self.finished:
            return False
        try:
            if self.local.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_ESTABLISHED:
                return True
            return struct.unpack("i", fcntl.ioctl(self.local.fileno(), _SIOCINQ, b"\0" * 4))[0] > 0
        except OSError:
            return False

    def abort(self) -> None:
        """Nothing to do here: stopping the node resets every relay it runs."""

"""Handing the channel's parked CONNECTs to someone faster than the proxy.

The preload's parked CONNECTs arrive as datagrams (docs/CHANNEL.md). A :class:`ParkedHandoff`
(the tailnet node: policy/handoff.py over node/parked.go) may read them first: it completes,
dials and relays the ones it can take entirely on its own (an online peer's address), and
passes every other message, and every dial of its own that failed, on to the proxy over a
socket pair, each as one :class:`Forwarded` message.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Protocol

from .channel_proto import Address

__all__ = ["ParkedHandoff", "Forwarded", "decode_forwarded", "address_of"]

# u32 pid | i32 errno | u16 message length | u16 flags | message | reason (node/parked.go)
_HEADER = struct.Struct("=IiHH")
_TRUNCATED = 1


class ParkedHandoff(Protocol):
    def start(self, datagrams: socket.socket, forward: socket.socket,
              park_ports: tuple[int, int], default_timeout: float, max_timeout: float,
              on_event: Callable[[dict], None] | None, report_each: bool = False) -> None:
        """Read `datagrams` from now on; write what is not taken to `forward`. Both are
        lent. `on_event`, if given, gets {"ev": "done_batch", "done": [report, ...]} as
        connections taken end, each report {"token", "src", "dst", "pid", "up", "down",
        "errno", "reason", "ms", "connect_us"}: at most one batch per 200 ms, or each report
        at once with `report_each` (--verbose, whose lines keep up with the program). Without
        it nothing per connection reaches Python. Raises OSError if it cannot."""

    def peer_of(self, local: Address) -> Address | None:
        """Where the program's socket at `local` asked to connect, while it is relayed."""

    async def drain(self, timeout: float) -> int:
        """Wait until no connection taken is still delivering what its program sent, or
        `timeout`; returns how many still were."""

    def close(self) -> None:
        """Stop reading; connections taken run on."""


@dataclass
class Forwarded:
    pid: int
    errno: int          # 0: the proxy routes it; else the hand-off's dial failed with it
    message: bytes      # the datagram as the preload sent it
    truncated: bool
    reason: str


def decode_forwarded(data: bytes) -> Forwarded | None:
    """None for a message that does not parse (the hand-off is ours; it cannot happen)."""
    if len(data) < _HEADER.size:
        return None
    pid, err, size, flags = _HEADER.unpack_from(data)
    end = _HEADER.size + size
    if end > len(data) or err < 0:
        return None
    return Forwarded(pid, err, bytes(data[_HEADER.size:end]), bool(flags & _TRUNCATED),
                     bytes(data[end:]).decode(errors="replace"))


def address_of(text: str) -> Address | None:
    """ "ip:port" or "[ip]:port" (as the hand-off writes them) → channel_proto.Address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return Address(ip.version, str(ip), int(port))

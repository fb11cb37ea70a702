"""SOCKS5 UDP ASSOCIATE (RFC 1928 §7): the datagram side of one association.

The client sends each datagram, behind a SOCKS5 UDP header naming its destination, to the
association's UDP port; we send the payload on a *flow* to that destination (the dialer's
``dial_udp``: a connected UDP socket, or the node's relay for the tailnet), and each datagram
a flow receives back to the client behind a header naming the destination it came from.

- Only the control connection's client may use the association: datagrams must come from its
  IP address, and from the port it asked for (or, if it asked for none, the port of its first
  datagram, pinned from then on). Anything else is dropped, so another local user cannot
  inject.
- FRAG ≠ 0 (fragments), unknown address types and truncated headers are dropped, as the RFC
  allows; so are datagrams over the limits below (bounded memory and fds).
- The association lives as long as its TCP control connection (the caller closes it then).
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from .dialer import Dialer, as_dial_error

__all__ = ["UdpAssociation", "parse_udp_header", "encode_udp_header", "UdpHeaderError"]

ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4

MAX_FLOWS = 64            # destinations per association, each a socket
MAX_QUEUED = 16           # datagrams held per flow while it is being dialled
FLOW_IDLE_S = 120.0       # a flow that carried nothing for this long is closed
_RECV = 65535
_BATCH = 64               # datagrams handled per wake-up


class UdpHeaderError(ValueError):
    pass


def parse_udp_header(buf: bytes) -> tuple[int, str, int, int]:
    """RSV(2) FRAG ATYP DST.ADDR DST.PORT → (atyp, host, port, offset of the payload)."""
    if len(buf) < 4:
        raise UdpHeaderError("truncated header")
    if buf[2] != 0:
        raise UdpHeaderError(f"fragment {buf[2]} (fragments are not supported)")
    atyp = buf[3]
    if atyp == ATYP_V4:
        end = 4 + 4
        host = str(ipaddress.IPv4Address(bytes(buf[4:end]))) if len(buf) >= end else None
    elif atyp == ATYP_V6:
        end = 4 + 16
        host = str(ipaddress.IPv6Address(bytes(buf[4:end]))) if len(buf) >= end else None
    elif atyp == ATYP_DOMAIN:
        if len(buf) < 5 or buf[4] == 0:
            raise UdpHeaderError("truncated or empty domain name")
        end = 5 + buf[4]
        try:
            host = bytes(buf[5:end]).decode("ascii") if len(buf) >= end else None
        except UnicodeDecodeError:
            raise UdpHeaderError("domain name not ASCII") from None
        if host is not None and not all(0x21 <= ord(c) < 0x7f for c in host):
            raise UdpHeaderError("bad domain name")
    else:
        raise UdpHeaderError(f"address type {atyp} not supported")
    if host is None or len(buf) < end + 2:
        raise UdpHeaderError("truncated header")
    (port,) = struct.unpack_from("!H", buf, end)
    if port == 0:
        raise UdpHeaderError("port 0")
    return atyp, host, port, end + 2


def encode_udp_header(atyp: int, host: str, port: int) -> bytes:
    if atyp == ATYP_DOMAIN:
        name = host.encode("ascii")
        return bytes((0, 0, 0, ATYP_DOMAIN, len(name))) + name + struct.pack("!H", port)
    return bytes((0, 0, 0, atyp)) + ipaddress.ip_address(host).packed + struct.pack("!H", port)


@dataclass(eq=False)
class _Flow:
    header: bytes                         # the SOCKS5 UDP header of what comes back
    label: str
    sock: socket.socket | None = None     # None while being dialled
    queued: list[bytes] = field(default_factory=list)
    last: float = field(default_factory=time.monotonic)
    up: int = 0
    down: int = 0


class UdpAssociation:
    """The datagram side of one UDP ASSOCIATE. ``client`` is (ip, port) of the control
    connection's client as it asked (port 0: not yet known); ``bind_ip`` the address the
    association's socket listens on (the control connection's local address)."""

    def __init__(self, dialer: Dialer, client: tuple[str, int], bind_ip: str, *,
                 timeout: float, log: Callable[[str], None]):
        self.dialer, self.timeout, self.log = dialer, timeout, log
        self._client_ip = _canonical(client[0])
        self._client_port = client[1]
        self._bind_ip = bind_ip
        self._sock: socket.socket | None = None
        self._flows: dict[tuple[str, int], _Flow] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.dropped = 0
        self.closed = False

    @property
    def address(self) -> tuple:
        """Where the client sends its datagrams (BND.ADDR, BND.PORT of the reply)."""
        return self._sock.getsockname()[:2]

    def open(self) -> None:
        fam = socket.AF_INET6 if ":" in self._bind_ip else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            s.bind((self._bind_ip, 0))
        except BaseException:
            s.close()
            raise
        self._sock = s
        loop = asyncio.get_running_loop()
        loop.add_reader(s.fileno(), self._on_client)
        self._sweeper = loop.call_later(FLOW_IDLE_S / 4, self._sweep)

    def close(self) -> tuple[int, int]:
        """Close everything; returns (bytes up, bytes down) over all flows."""
        if self.closed:
            return 0, 0
        self.closed = True
        loop = asyncio.get_running_loop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for t in list(self._tasks):
            t.cancel()
        up = down = 0
        for flow in self._flows.values():
            up, down = up + flow.up, down + flow.down
            self._close_flow(loop, flow)
        self._flows.clear()
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
        return up, down

    # -- from the client ---------------------------------------------------------------------
    def _on_client(self) -> None:
        for _ in range(_BATCH):
            try:
                data, addr = self._sock.recvfrom(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:          # an ICMP error from a past send: not fatal
                self.log(f"socks udp: {exc}")
                continue
            if not self._from_client(addr):
                self.dropped += 1
                continue
            try:
                atyp, host, port, off = parse_udp_header(data)
            except (UdpHeaderError, ValueError) as exc:
                self.dropped += 1
                self.log(f"socks udp: dropped a datagram: {exc}")
                continue
            self._send(atyp, host, port, data[off:])

    def _from_client(self, addr) -> bool:
        if _canonical(addr[0]) != self._client_ip:
            return False
        if self._client_port == 0:
            self._client_port = addr[1]     # pinned from now on
        return addr[1] == self._client_port

    def _send(self, atyp: int, host: str, port: int, payload: bytes) -> None:
        key = (host.lower() if atyp == ATYP_DOMAIN else host, port)
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= MAX_FLOWS:
                self.dropped += 1
                self.log(f"socks udp: more than {MAX_FLOWS} destinations; dropped one for {host}")
                return
            label = f"[{host}]:{port}" if atyp == ATYP_V6 else f"{host}:{port}"
            flow = self._flows[key] = _Flow(encode_udp_header(atyp, host, port), label)
            t = asyncio.get_running_loop().create_task(self._dial(key, flow, host, port))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        flow.last = time.monotonic()
        if flow.sock is None:
            if len(flow.queued) < MAX_QUEUED:
                flow.queued.append(payload)
            else:
                self.dropped += 1
            return
        self._write(flow, payload)

    async def _dial(self, key, flow: _Flow, host: str, port: int) -> None:
        try:
            sock = await self.dialer.dial_udp(host, port, self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:        # noqa: BLE001 -- one errno translation, as for TCP
            err = as_dial_error(exc, host, port, self.log)
            self.log(f"socks udp {flow.label}: {err} ({err.name}); {len(flow.queued)} datagram(s) dropped")
            self.dropped += len(flow.queued)
            self._flows.pop(key, None)
            return
        if self.closed or self._flows.get(key) is not flow:
            sock.close()
            return
        flow.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_flow, flow)
        queued, flow.queued = flow.queued, []
        for payload in queued:
            self._write(flow, payload)

    def _write(self, flow: _Flow, payload: bytes) -> None:
        try:
            flow.sock.send(payload)
            flow.up += len(payload)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1               # UDP: a full buffer drops, as the kernel would
        except OSError as exc:
            self.dropped += 1
            self.log(f"socks udp {flow.label}: {exc}")

    # -- back to the client ------------------------------------------------------------------
    def _on_flow(self, flow: _Flow) -> None:
        for _ in range(_BATCH):
            try:
                data = flow.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:          # e.g. ECONNREFUSED: an ICMP port unreachable
                self.log(f"socks udp {flow.label}: {exc}")
                continue
            if not data and flow.sock.type == socket.SOCK_SEQPACKET:
                self._end_flow(flow)        # the node ended the association
                return
            flow.last = time.monotonic()
            flow.down += len(data)
            try:
                self._sock.sendto(flow.header + data, (self._client_ip, self._client_port))
            except OSError:
                self.dropped += 1

    def _sweep(self) -> None:
        now = time.monotonic()
        for flow in [f for f in self._flows.values() if now - f.last > FLOW_IDLE_S and f.sock]:
            self._end_flow(flow)
        self._sweeper = asyncio.get_running_loop().call_later(FLOW_IDLE_S / 4, self._sweep)

    def _end_flow(self, flow: _Flow) -> None:
        for key, f in list(self._flows.items()):
            if f is flow:
                del self._flows[key]
        self._close_flow(asyncio.get_running_loop(), flow)

    @staticmethod
    def _close_flow(loop, flow: _Flow) -> None:
        if flow.sock is not None:
            loop.remove_reader(flow.sock.fileno())
            flow.sock.close()
            flow.sock = None


def _canonical(ip: str) -> str:
    a = ipaddress.ip_address(ip.split("%", 1)[0])
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return str(a)

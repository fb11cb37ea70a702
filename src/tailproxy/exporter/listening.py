"""Which loopback TCP addresses have a listening socket right now, and which loopback UDP
addresses a bound, unconnected one (the kernel's own count)."""
from __future__ import annotations

import ipaddress
import sys

_LISTEN = "0A"
_UDP_UNCONNECTED = "07"     # TCP_CLOSE, as /proc/net/udp shows a socket with no peer


def loopback_udp_servers(paths=("/proc/net/udp", "/proc/net/udp6")) -> set[tuple[str, int]]:
    """{(address, port)} of UDP sockets bound to a loopback address and not connected (a
    server's), listed as loopback_listeners lists TCP listeners."""
    return loopback_listeners(paths, _UDP_UNCONNECTED)


def loopback_listeners(paths=("/proc/net/tcp", "/proc/net/tcp6"),
                       state: str = _LISTEN) -> set[tuple[str, int]]:
    """{(address, port)} of sockets in LISTEN on 127.0.0.0/8 or ::1, as an export would connect
    to them: an IPv6 socket bound to a v4-mapped loopback address (::ffff:127.0.0.1) is reached
    at the IPv4 address, so it is listed as "127.0.0.1"."""
    out = set()
    for path in paths:
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    if len(parts) < 4 or parts[3] != state:
                        continue
                    hexaddr, _, port = parts[1].partition(":")
                    addr = _address(hexaddr)
                    if addr is not None and addr.is_loopback:
                        out.add((str(addr), int(port, 16)))
        except OSError:
            continue
    return out


def _address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """/proc/net/tcp* print addresses as 32-bit words in host (little-endian) byte order."""
    try:
        raw = bytes.fromhex(hexaddr)
    except ValueError:
        return None
    if len(raw) not in (4, 16):
        return None
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(raw)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def target_host(addresses: set[str] | list[str]) -> str | None:
    """The address an export of a port forwards to, given the loopback addresses listening on
    that port: 127.0.0.1, else ::1, else another 127.x address; None when there is none."""
    if "127.0.0.1" in addresses:
        return "127.0.0.1"
    if "::1" in addresses:
        return "::1"
    return min(addresses, default=None, key=lambda a: ipaddress.ip_address(a))

"""This host's directly connected networks (its LAN), for --exit-node-allow-lan-access.

The userspace node routes every non-tailnet address to the exit node, LAN included, so LAN access
is granted where it is cheapest: these networks join the preload's --bypass list.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

_RTF_UP, _RTF_GATEWAY = 0x1, 0x2


def local_networks(route4: str = "/proc/net/route", route6: str = "/proc/net/ipv6_route") -> list[str]:
    nets: list[str] = []
    try:
        with open(route4) as f:
            next(f, None)
            for line in f:
                p = line.split()
                if len(p) < 8 or p[0] == "lo":
                    continue
                flags = int(p[3], 16)
                if not flags & _RTF_UP or flags & _RTF_GATEWAY:
                    continue
                dest = socket.inet_ntoa(struct.pack("<I", int(p[1], 16)))
                mask = socket.inet_ntoa(struct.pack("<I", int(p[7], 16)))
                net = ipaddress.ip_network(f"{dest}/{mask}", strict=False)
                if 0 < net.prefixlen < 32 and not net.is_loopback:
                    nets.append(str(net))
    except OSError:
        pass
    try:
        with open(route6) as f:
            for line in f:
                p = line.split()
                if len(p) < 10 or p[9] == "lo" or int(p[8], 16) & _RTF_GATEWAY:
                    continue
                if int(p[4], 16) or p[4] != "0" * 32:     # has a next hop: not on-link
                    continue
                net = ipaddress.ip_network(f"{ipaddress.IPv6Address(bytes.fromhex(p[0]))}/{int(p[1], 16)}",
                                           strict=False)
                if 0 < net.prefixlen < 128 and not (net.is_loopback or net.is_multicast):
                    nets.append(str(net))
    except OSError:
        pass
    return sorted(set(nets))

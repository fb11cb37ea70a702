"""Which local user owns the socket at the other end of a loopback connection or datagram.

SO_PEERCRED exists only for unix sockets; for TCP/UDP on this host the kernel's socket tables
(/proc/net/{tcp,udp}{,6}) name the owner of every local socket. The DNS responder answers only our
uid this way; the SOCKS5/HTTP port caps unauthenticated connections per uid with it.

Reading those tables costs milliseconds per call once a host has a few thousand sockets (the
kernel formats every one), so a TCP connection whose both ends are known is looked up with one
exact sock_diag netlink query instead (microseconds); the tables remain the fallback.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys


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
    port_hex = f":{port:04X} "      # lines without it are skipped unparsed: tables can be long
    wildcard = None
    for name in (proto, proto + "6"):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f, None)
                for line in f:
                    if port_hex not in line:
                        continue
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


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF
_REQ = struct.Struct("=IHHII" "BBBBI" "HH16s16s" "III")   # nlmsghdr + inet_diag_req_v2
_MSG_UID = 16 + 4 + 48 + 12                                    # nlmsghdr, head, sockid, 3×u32


def _packed(ip: str) -> tuple[int, bytes]:
    a = _norm(ipaddress.ip_address(ip.split("%", 1)[0]))
    return (socket.AF_INET if a.version == 4 else socket.AF_INET6), a.packed.ljust(16, b"\0")


def tcp_peer_uid(peer: tuple, local: tuple) -> int | None:
    """uid owning the TCP socket at `peer` that is connected to our `local` end, by an exact
    sock_diag lookup; falls back to socket_uid() when netlink cannot answer."""
    try:
        fam, src = _packed(peer[0])
        fam2, dst = _packed(local[0])
        if fam != fam2:
            raise ValueError("mixed families")
        req = _REQ.pack(_REQ.size, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0,
                        fam, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF,
                        socket.htons(peer[1]), socket.htons(local[1]), src, dst,
                        0, _NOCOOKIE, _NOCOOKIE)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                           _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(req)
            reply = nl.recv(8192)
        _length, kind = struct.unpack_from("=IH", reply)
        if kind == _NLMSG_ERROR:
            err = -struct.unpack_from("=i", reply, 16)[0]
            if err == 2:                     # ENOENT: no such socket on this host
                return None
            raise OSError(err, os.strerror(err))
        if len(reply) < _MSG_UID + 4:
            raise ValueError("short sock_diag reply")
        return struct.unpack_from("=I", reply, _MSG_UID)[0]
    except (OSError, ValueError, struct.error):
        return socket_uid("tcp", peer[0], peer[1])

"""Which loopback TCP ports have a listening socket right now (the kernel's own count)."""
from __future__ import annotations

_LISTEN = "0A"


def loopback_listeners(paths=("/proc/net/tcp", "/proc/net/tcp6")) -> set[tuple[int, int]]:
    """{(family 4|6, port)} of sockets in LISTEN on 127.0.0.0/8, ::1, or v4-mapped loopback."""
    out = set()
    for path in paths:
        fam = 6 if path.endswith("6") else 4
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    if len(parts) < 4 or parts[3] != _LISTEN:
                        continue
                    addr, _, port = parts[1].partition(":")
                    if _is_loopback(addr, fam):
                        out.add((fam, int(port, 16)))
        except OSError:
            continue
    return out


def _is_loopback(hexaddr: str, fam: int) -> bool:
    if fam == 4:
        return hexaddr.endswith("7F")              # little-endian 127.x.x.x
    if hexaddr == "00000000000000000000000001000000":  # ::1
        return True
    return hexaddr.startswith("0000000000000000FFFF0000") and hexaddr.endswith("7F")

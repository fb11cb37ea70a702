"""What a destination host name from a proxy client may contain."""
from __future__ import annotations


def is_visible_ascii(host: str) -> bool:
    """Only visible ASCII (0x21-0x7e): no NUL, controls, spaces or raw 8-bit bytes, which no
    resolver accepts and which would reach the dialer (a ValueError there) and the logs."""
    return all("\x21" <= c <= "\x7e" for c in host)

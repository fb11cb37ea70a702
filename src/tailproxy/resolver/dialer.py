"""A dialer wrapper: a connect to a placeholder address is dialled by the name it stands for, so
the name is resolved on the far side (the exit node). Both the channel and SOCKS5/HTTP use it."""
from __future__ import annotations

import errno
import ipaddress

from ..proxy.dialer import DialError
from .placeholders import PlaceholderMap


class PlaceholderDialer:
    def __init__(self, inner, placeholders: PlaceholderMap, log=None):
        self.inner, self.placeholders = inner, placeholders
        self.log = log or (lambda msg: None)

    async def dial(self, host: str, port: int, timeout: float):
        try:
            ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            ip = None
        if ip is not None and self.placeholders.contains(ip if ip.version == 4 or ip.ipv4_mapped is None
                                                         else ip.ipv4_mapped):
            name = self.placeholders.name_of(ip)
            if name is None:
                raise DialError(errno.EHOSTUNREACH,
                                f"{host}: a placeholder address that stands for no name in this run")
            self.log(f"{host} is {name}")
            return await self.inner.dial(name, port, timeout)
        return await self.inner.dial(host, port, timeout)

    def __getattr__(self, name):          # TailnetDialer.view etc. stay reachable
        return getattr(self.inner, name)

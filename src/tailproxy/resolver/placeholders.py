"""Placeholder addresses: a stable stand-in address per name for one tailproxy run.

With an exit node (or --dns=tailnet) a name that is not on the tailnet is not resolved on this
host; the program gets a placeholder, and a connect to it is dialled by *name* through the tailnet
(resolved on the exit node's side). The map lives in the proxy: every thread, forked child and
exec'd program of the run shares it, so a placeholder is valid in any of them.

Defaults: 240.0.0.0/4 and fd74:7072:6f78::/48 (docs/NAMES.md says why).
"""
from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict, deque

DEFAULT_V4 = "240.0.0.0/4"
DEFAULT_V6 = "fd74:7072:6f78::/48"

_FORBIDDEN = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "100.64.0.0/10",
    "::/128", "::1/128", "ff00::/8", "fd7a:115c:a1e0::/48", "::ffff:0:0/96")]


def check_range(cidr: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A usable placeholder range or ValueError with the reason."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValueError(f"{cidr!r} is not a CIDR") from None
    if net.version != version:
        raise ValueError(f"{cidr} is not an IPv{version} range")
    if net.num_addresses < 256:
        raise ValueError(f"{cidr} is too small (at least a /{24 if version == 4 else 120})")
    for bad in _FORBIDDEN:
        if bad.version == version and net.overlaps(bad):
            raise ValueError(f"{cidr} overlaps {bad} (loopback, multicast, unspecified or the "
                             f"tailnet's own range)")
    return net


class PlaceholderMap:
    """name <-> (IPv4 placeholder, IPv6 placeholder), allocated on first use, thread-safe.

    At most ``max_names`` names are kept; beyond that the least recently used name is
    forgotten (its placeholders become unknown: a connect to one fails with EHOSTUNREACH)."""

    def __init__(self, v4: str = DEFAULT_V4, v6: str = DEFAULT_V6, max_names: int = 1 << 20):
        self.nets = {4: check_range(v4, 4), 6: check_range(v6, 6)}
        self.max_names = max_names
        self._lock = threading.Lock()
        self._by_name: OrderedDict[str, dict[int, int]] = OrderedDict()   # name -> {4|6: offset}
        self._by_ip: dict[tuple[int, int], str] = {}                       # (4|6, offset) -> name
        self._next = {4: 1, 6: 1}
        self._free: dict[int, deque] = {4: deque(), 6: deque()}

    def contains(self, ip: str | ipaddress._BaseAddress) -> bool:
        try:
            a = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        except ValueError:
            return False
        net = self.nets[a.version]
        return a in net

    def _alloc(self, version: int) -> int:
        net = self.nets[version]
        size = net.num_addresses
        last = size - 1 if version == 4 else size   # never the v4 "broadcast" address
        if self._next[version] < last:
            off = self._next[version]
            self._next[version] += 1
            return off
        if self._free[version]:
            return self._free[version].popleft()
        self._evict()
        return self._alloc(version)

    def _evict(self) -> None:
        name, offs = self._by_name.popitem(last=False)
        for v, off in offs.items():
            self._by_ip.pop((v, off), None)
            self._free[v].append(off)

    def get(self, name: str, version: int) -> str:
        """The placeholder of `name` (normalised: lower case, no trailing dot) for IPv4 or IPv6."""
        key = name.rstrip(".").lower()
        with self._lock:
            offs = self._by_name.get(key)
            if offs is None:
                while len(self._by_name) >= self.max_names:
                    self._evict()
                offs = self._by_name[key] = {}
            else:
                self._by_name.move_to_end(key)
            off = offs.get(version)
            if off is None:
                off = offs[version] = self._alloc(version)
                self._by_ip[(version, off)] = key
            return str(self.nets[version].network_address + off)

    def name_of(self, ip: str | ipaddress._BaseAddress) -> str | None:
        try:
            a = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        except ValueError:
            return None
        if a.version == 6 and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        net = self.nets[a.version]
        if a not in net:
            return None
        off = int(a) - int(net.network_address)
        with self._lock:
            name = self._by_ip.get((a.version, off))
            if name is not None:
                self._by_name.move_to_end(name)
            return name

    def __len__(self) -> int:
        return len(self._by_name)

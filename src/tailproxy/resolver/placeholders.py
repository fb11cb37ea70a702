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
import time
from typing import Callable
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


# What one name costs in the maps beyond its characters (dict slots, the str and int objects,
# the reverse entries for both families), measured with tracemalloc and rounded up
# (tests/unit/test_placeholders_memory.py checks it stays an upper bound).
ENTRY_OVERHEAD = 512
DEFAULT_MAX_BYTES = 64 << 20
RECENT_S = 60.0       # an answer this young may still be in a program's cache: kept
_OFF_BITS = 40        # offsets are allocated from 1 upwards, far below 2**40


class PlaceholdersFull(Exception):
    """Every placeholder is still in use by a live connection or a recent answer."""


class PlaceholderMap:
    """name <-> (IPv4 placeholder, IPv6 placeholder), allocated on first use, thread-safe.

    Bounded in bytes (`max_bytes`, estimated as ENTRY_OVERHEAD + the name's length per name), not
    just in names: hostile input can make a program look up millions of names. When full, the
    least recently used name is forgotten, unless it is in use: a live connection holds it
    (`hold`), or it was answered or dialled within `recent_s`. Then a new name is refused
    (PlaceholdersFull; the program gets a temporary failure) rather than breaking a placeholder
    a program still relies on."""

    def __init__(self, v4: str = DEFAULT_V4, v6: str = DEFAULT_V6,
                 max_bytes: int = DEFAULT_MAX_BYTES, recent_s: float = RECENT_S,
                 clock=time.monotonic):
        self.nets = {4: check_range(v4, 4), 6: check_range(v6, 6)}
        self.max_bytes, self.recent_s, self._clock = max_bytes, recent_s, clock
        self._lock = threading.Lock()
        # name -> off4 | off6 << 40 | last use (whole seconds) << 80, in the order of last use,
        # oldest first. (An OrderedDict: a plain dict popped from the front keeps the holes
        # until it resizes, and finding the oldest then scans them all.)
        self._by_name: OrderedDict[str, int] = OrderedDict()
        self._by_off: dict[int, dict[int, str]] = {4: {}, 6: {}}
        self._held: dict[str, int] = {}           # name -> live connections using it
        # names the preload's name table answers (namepublisher.py): a program may get them at
        # any time without the service seeing it, so they are in use while published
        self._pinned: frozenset[str] = frozenset()
        # told after a name got a new placeholder, outside the lock (the name table republishes)
        self.on_new: Callable[[], None] = lambda: None
        self._next = {4: 1, 6: 1}
        self._free: dict[int, deque] = {4: deque(), 6: deque()}
        self.bytes = 0

    def contains(self, ip: str | ipaddress._BaseAddress) -> bool:
        try:
            a = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        except ValueError:
            return False
        net = self.nets[a.version]
        return a in net

    # ------------------------------------------------------------ entries
    @staticmethod
    def _offset(packed: int, version: int) -> int:
        return (packed >> (0 if version == 4 else _OFF_BITS)) & ((1 << _OFF_BITS) - 1)

    def _touch(self, name: str, packed: int) -> None:
        """Mark `name` used now: to the end of the order, with the time."""
        packed = (packed & ((1 << 2 * _OFF_BITS) - 1)) | int(self._clock()) << 2 * _OFF_BITS
        self._by_name[name] = packed
        self._by_name.move_to_end(name)

    def _in_use(self, name: str, packed: int) -> bool:
        if name in self._held or name in self._pinned:
            return True
        return self._clock() - (packed >> 2 * _OFF_BITS) < self.recent_s

    def _evict_oldest(self) -> None:
        """Forget the least recently used name; PlaceholdersFull if it is still in use."""
        for _ in range(len(self._held) + len(self._pinned) + 1):
            if not self._by_name:
                break
            name, packed = next(iter(self._by_name.items()))
            if name in self._held or name in self._pinned:   # used now
                self._touch(name, packed)
                continue
            if self._in_use(name, packed):   # the oldest is recent: so is everything else
                raise PlaceholdersFull("every placeholder is in use")
            del self._by_name[name]
            self.bytes -= ENTRY_OVERHEAD + len(name)
            for v in (4, 6):
                off = self._offset(packed, v)
                if off:
                    del self._by_off[v][off]
                    self._free[v].append(off)
            return
        raise PlaceholdersFull("every placeholder is held by a live connection")

    def _alloc(self, version: int) -> int:
        size = self.nets[version].num_addresses
        last = size - 1 if version == 4 else min(size, 1 << _OFF_BITS)   # never v4 "broadcast"
        while True:
            if self._next[version] < last:
                self._next[version] += 1
                return self._next[version] - 1
            if self._free[version]:
                return self._free[version].popleft()
            self._evict_oldest()         # the range is used up: the same rule as for memory

    # ------------------------------------------------------------ lookups
    def get(self, name: str, version: int) -> str:
        """The placeholder of `name` (normalised: lower case, no trailing dot) for IPv4 or IPv6;
        PlaceholdersFull when no room can be made."""
        new = [False]
        try:
            return self._get(name, version, new)
        finally:
            if new[0]:
                self.on_new()

    def _get(self, name: str, version: int, new: list) -> str:
        key = name.rstrip(".").lower()
        with self._lock:
            packed = self._by_name.get(key)
            if packed is None:
                cost = ENTRY_OVERHEAD + len(key)
                while self._by_name and self.bytes + cost > self.max_bytes:
                    self._evict_oldest()
                packed = 0
                self.bytes += cost
            off = self._offset(packed, version)
            if not off:
                self._touch(key, packed)      # recent: eviction for its address stops here
                try:
                    off = self._alloc(version)
                except PlaceholdersFull:
                    if not packed:
                        del self._by_name[key]
                        self.bytes -= ENTRY_OVERHEAD + len(key)
                    raise
                packed = self._by_name[key] | off << (0 if version == 4 else _OFF_BITS)
                self._by_off[version][off] = key
                new[0] = True
            self._touch(key, packed)
            return str(self.nets[version].network_address + off)

    def _lookup(self, ip: str | ipaddress._BaseAddress) -> tuple[int, int] | None:
        try:
            a = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        except ValueError:
            return None
        if a.version == 6 and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        net = self.nets[a.version]
        if a not in net:
            return None
        return a.version, int(a) - int(net.network_address)

    def name_of(self, ip: str | ipaddress._BaseAddress) -> str | None:
        """The name a placeholder stands for (a use: it counts as recent again)."""
        where = self._lookup(ip)
        if where is None:
            return None
        with self._lock:
            name = self._by_off[where[0]].get(where[1])
            if name is not None:
                self._touch(name, self._by_name[name])
            return name

    def recent(self, limit: int) -> list[tuple[str, str | None, str | None]]:
        """Up to `limit` names, most recently used first: (name, IPv4 placeholder or None,
        IPv6 placeholder or None)."""
        out = []
        with self._lock:
            for name in reversed(self._by_name):
                if len(out) == limit:
                    break
                packed = self._by_name[name]
                o4, o6 = self._offset(packed, 4), self._offset(packed, 6)
                out.append((name, str(self.nets[4].network_address + o4) if o4 else None,
                            str(self.nets[6].network_address + o6) if o6 else None))
        return out

    def pin(self, names) -> None:
        """`names` are answered without the service from now on (the name table): never
        evicted while pinned; a name unpinned counts as just used (a program may have cached
        its answer)."""
        names = frozenset(names)
        with self._lock:
            for name in self._pinned - names:
                packed = self._by_name.get(name)
                if packed is not None:
                    self._touch(name, packed)
            self._pinned = names

    def hold(self, name: str) -> None:
        """A live connection uses `name`'s placeholder: never evicted until `release`."""
        with self._lock:
            if name in self._by_name:
                self._held[name] = self._held.get(name, 0) + 1

    def release(self, name: str) -> None:
        with self._lock:
            n = self._held.get(name, 0) - 1
            if n > 0:
                self._held[name] = n
            elif n == 0:
                del self._held[name]
                packed = self._by_name.get(name)
                if packed is not None:
                    self._touch(name, packed)     # just used: recent from now

    def __len__(self) -> int:
        return len(self._by_name)

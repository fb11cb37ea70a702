"""/etc/hosts, read the way glibc's `files` backend reads it (with `multi on`): every matching
line counts, the canonical name is the first name of the first matching line. Re-read when the file
changes (stat per lookup)."""
from __future__ import annotations

import ipaddress
import os
import threading
from typing import Callable
from dataclasses import dataclass, field


@dataclass
class HostsEntry:
    canon: str
    aliases: list[str] = field(default_factory=list)
    addrs: list[str] = field(default_factory=list)


class HostsFile:
    def __init__(self, path: str = "/etc/hosts"):
        self.path = path
        self._sig = None
        self._lock = threading.Lock()
        self._lines: list[tuple[ipaddress._BaseAddress, list[str]]] = []
        self._by_name: dict[str, list[int]] = {}
        self.signature: tuple[int, int, int, int] | None = None    # (dev, ino, size, mtime ns)
        # told after the file was read again (the name table republishes: namepublisher.py)
        self.on_change: Callable[[], None] = lambda: None

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
            sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            sig = None
        if sig == self._sig:
            return
        lines: list = []
        by_name: dict[str, list[int]] = {}
        if sig is not None:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            for raw in data.splitlines():
                raw = raw.split(b"#", 1)[0]
                parts = raw.decode("utf-8", "surrogateescape").split()
                if len(parts) < 2:
                    continue
                try:
                    ip = ipaddress.ip_address(parts[0].split("%", 1)[0])
                except ValueError:
                    continue
                lines.append((ip, parts[1:]))
                for n in parts[1:]:
                    by_name.setdefault(n.rstrip(".").lower(), []).append(len(lines) - 1)
        with self._lock:
            self._lines, self._by_name, self._sig = lines, by_name, sig
            self.signature = sig
        self.on_change()

    def names(self) -> list[str]:
        """Every name the file has (as looked up: lower case, no trailing dot), in file order;
        read again first if the file changed."""
        self._load()
        return list(self._by_name)

    def has(self, key: str) -> bool:
        """Whether the file, as last read, names `key` (lower case, no trailing dot)."""
        return key in self._by_name

    def lookup(self, name: str, version: int = 0) -> HostsEntry | None:
        """Addresses of `name` (version 0: both, in file order); None if no line names it. A name
        the file has only for the other version gets an entry without addresses."""
        self._load()
        key = name.rstrip(".").lower()
        idx = self._by_name.get(key)
        if not idx:
            return None
        entry = None
        for i in idx:
            ip, names = self._lines[i]
            if version and ip.version != version:
                continue
            if entry is None:
                entry = HostsEntry(names[0])
            for n in names:
                if n != entry.canon and n not in entry.aliases:
                    entry.aliases.append(n)
            s = str(ip)
            if s not in entry.addrs:
                entry.addrs.append(s)
        if entry is None:
            _ip, names = self._lines[idx[0]]
            entry = HostsEntry(names[0])
        return entry

    def reverse(self, ip: str) -> tuple[str, list[str]] | None:
        self._load()
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for lip, names in self._lines:
            if lip == a:
                return names[0], names[1:]
        return None

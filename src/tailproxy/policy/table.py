"""The routing table file the preload reads (docs/CHANNEL.md, "The routing table"): its layout
and the one writer's lock-free publish.

Layout (host byte order): a 64-byte header — u32 magic "TPRT", u32 version 1, u64 generation,
u32 MAX_ROUTES, u32 slot size — then two slots of: u64 generation, u64 checksum, u32 flags,
u32 count, MAX_ROUTES routes of (u8 family 4/6, u8 prefix bits, u8 kind, u8 0, u8 addr[16]).
The checksum is FNV-1a 64 over the slot without its checksum field, routes up to `count`.

Publishing generation g writes slot g % 2, which no reader that has seen generation g-1 uses,
then the header's generation. A reader copies the slot the generation names and keeps the
copy only if the generation is unchanged after the copy, the slot carries that generation and
its checksum matches; otherwise it reads again.

Why that is safe from Python, which has no memory fences:
- x86-64: stores become visible in program order (TSO). The slot is one memcpy (one mmap slice
  assignment), the generation one aligned 8-byte store (a memoryview item), made after it; every
  Python-level operation is an opaque C call, so the compiler cannot swap them either. A reader
  that sees generation g sees all of slot g.
- aarch64 (and any weaker order): a reader may see the new generation before the whole slot, or
  a slot rewritten under it. Then the slot's own generation or its 64-bit checksum does not
  match (a torn copy matches only by a 2^-64 accident) and the reader reads again; after a
  bounded number of tries it hands the connection to the proxy, which is always correct.
"""
from __future__ import annotations

import ipaddress
import mmap
import os
import struct
import threading

MAGIC = 0x54525054          # b"TPRT" as a little-endian u32
VERSION = 1
MAX_ROUTES = 64
HEADER_SIZE = 64
ROUTE_SIZE = 20
SLOT_SIZE = 24 + ROUTE_SIZE * MAX_ROUTES
FILE_SIZE = HEADER_SIZE + 2 * SLOT_SIZE

# flags
EXIT_NODE = 1           # an exit node is in use: everything not local/bypassed goes to the proxy
TAILNET_ONLY = 2        # --tailnet-only: never connect directly
NO_TAILNET = 4          # --no-tailnet (informational)
HAND_OVER_ALL = 8       # hand everything over: the exit node is being changed, or too many routes

# route kinds
PROXY = 1               # the proxy routes it (tailnet, accepted route, placeholder)
BYPASS = 2              # always direct (--bypass, LAN access), as TAILPROXY_BYPASS

_GEN_OFFSET = 8


class TableFull(ValueError):
    """More routes than a table holds."""


def fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def encode_routes(routes: list[tuple[str, int]]) -> bytes:
    """[(CIDR, kind)] as the file's route entries."""
    if len(routes) > MAX_ROUTES:
        raise TableFull(f"{len(routes)} routes, a table holds {MAX_ROUTES}")
    out = bytearray()
    for cidr, kind in routes:
        net = ipaddress.ip_network(cidr, strict=False)
        out += struct.pack("=BBBB16s", net.version, net.prefixlen, kind, 0,
                           net.network_address.packed)
    return bytes(out)


def encode_slot(gen: int, flags: int, routes: list[tuple[str, int]]) -> bytes:
    """One slot, padded to SLOT_SIZE."""
    entries = encode_routes(routes)
    body = struct.pack("=II", flags, len(routes)) + entries
    checksum = fnv1a64(struct.pack("=Q", gen) + body)
    return (struct.pack("=QQ", gen, checksum) + body).ljust(SLOT_SIZE, b"\0")


class RouteTableFile:
    """The writer: creates the file (0600, in the 0700 run directory) with nothing published
    (generation 0: the preload hands everything over), then publishes tables atomically.
    One writer per file; publish() may be called from any thread."""

    def __init__(self, path: str):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, FILE_SIZE)
            self._mm = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._mm[:HEADER_SIZE] = struct.pack("=IIQII", MAGIC, VERSION, 0, MAX_ROUTES,
                                             SLOT_SIZE).ljust(HEADER_SIZE, b"\0")
        self._gen_word = memoryview(self._mm)[_GEN_OFFSET:_GEN_OFFSET + 8].cast("Q")
        self._lock = threading.Lock()
        self.gen = 0
        self.published: tuple[int, tuple] | None = None     # (flags, routes) last published

    def publish(self, flags: int, routes: list[tuple[str, int]]) -> int:
        """Make (flags, routes) the table; returns its generation. Raises TableFull."""
        with self._lock:
            gen = self.gen + 1
            slot = encode_slot(gen, flags, routes)
            off = HEADER_SIZE + (gen & 1) * SLOT_SIZE
            self._mm[off:off + SLOT_SIZE] = slot      # the slot no reader of gen-1 uses
            self._gen_word[0] = gen                   # then, one aligned store: the switch
            self.gen = gen
            self.published = (flags, tuple(routes))
            return gen

    def close(self) -> None:
        with self._lock:
            self._gen_word.release()
            self._mm.close()

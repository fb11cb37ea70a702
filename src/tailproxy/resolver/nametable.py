"""The name table file the preload reads (TAILPROXY_NAMES; preload/src/nametable.c): answers the
name service already knows — /etc/hosts names and MagicDNS names of known peers — so that a
program gets them without a round trip. Its layout and the one writer's lock-free publish.

Layout (host byte order). A 512-byte header: u32 magic "TPNT", u32 version 1, u64 generation,
u32 NBUCKETS, u32 MAX_RECORDS, u32 POOL_SIZE, u32 slot size, u16 length of the hosts file's
path and the path itself (at most 478 bytes, else none: the reader then answers nothing).
Then two slots of:
  a 64-byte slot header: u64 generation; the hosts file as stat() saw it when the answers were
  taken from it — u64 st_dev, u64 st_ino, i64 st_size, i64 st_mtime in ns —; u32 flags
  (HOSTS_PRESENT: the file existed), u32 record count, u32 pool bytes used, u32 0; u64 checksum
  (FNV-1a 64 over the 56 bytes before it);
  u32 buckets[NBUCKETS]: 1 + the index of the first record of the chain, 0 for none;
  MAX_RECORDS record entries of (u32 hash, u32 next (1 + index, 0: end), u32 offset, u32 length);
  the pool: records, 8-aligned.
A record: u64 generation, u64 checksum (FNV-1a 64 of the record after these 16 bytes), u8
version asked (0, 4 or 6), u8 flags (RES_HOSTS/RES_TAILNET), u8 address count (0: ENODATA, the
name exists but not for that family), u8 alias count, u8 key length, u8 canonical name length,
u16 aliases' length; the key (ASCII, as the name service normalises a name: lower case, no
trailing dot), the canonical name, the addresses (20 bytes each, as in the RESOLVE reply), the
aliases (NUL-terminated, packed). The hash is FNV-1a 32 over the key and then the version
byte.

Publishing generation g writes slot g % 2 — which no reader that has seen generation g-1 uses —
and then the header's generation (one aligned 8-byte store). A reader finds its record in the
slot the generation names, copies it, reads the generation again and keeps the copy only if it
is unchanged, the slot header's checksum and generation match, and the record carries
generation g and its checksum matches. Anything else is "ask the name service", which is always
right: a reader never answers from a half-written table. Why that holds from Python without
memory fences is said in policy/table.py (the same scheme: x86-64's store order, and on weaker
orders the generations and checksums).

Bounded: a table holds at most MAX_RECORDS answers and POOL_SIZE bytes of them; what does not fit
is answered by the name service, as before.
"""
from __future__ import annotations

import functools
import mmap
import os
import struct
import threading
from array import array
from dataclasses import dataclass

from ..policy.table import fnv1a64
from ..proxy import channel_proto as cp

MAGIC = 0x544E5054          # b"TPNT" as a little-endian u32
VERSION = 1
NBUCKETS = 16384            # a power of two
MAX_RECORDS = 8192
POOL_SIZE = 1 << 20
HEADER_SIZE = 512
PATH_MAX = HEADER_SIZE - 34  # the hosts file's path, at the end of the header
SLOT_HEADER = 64
ENTRY_SIZE = 16
SLOT_SIZE = SLOT_HEADER + 4 * NBUCKETS + ENTRY_SIZE * MAX_RECORDS + POOL_SIZE
FILE_SIZE = HEADER_SIZE + 2 * SLOT_SIZE
RECORD_HEAD = 24
ADDR_SIZE = 17

HOSTS_PRESENT = 1           # slot flag: the hosts file existed when its answers were taken

_GEN_OFFSET = 8


def fnv1a32(data: bytes) -> int:
    h = 0x811c9dc5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class Answer:
    """One known answer: what the name service's RESOLVE gives for (key, version)."""
    key: str                    # lower case, no trailing dot
    version: int                # 0, 4 or 6: the family asked for
    flags: int                  # cp.RES_HOSTS or cp.RES_TAILNET
    canon: str
    addrs: tuple[str, ...]      # empty: ENODATA (the name exists, not for this family)
    aliases: tuple[str, ...] = ()


class TooBig(ValueError):
    """An answer the format cannot carry (a name or list longer than its fields)."""


def _text(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


_RESOLVE_REP = struct.Struct("=BBBBHH")       # as in the RESOLVE reply (docs/CHANNEL.md)


@functools.lru_cache(maxsize=2 * MAX_RECORDS)
def encode_body(a: Answer) -> tuple[bytes, int, int]:
    """The record after its generation, with the checksum: (bytes, FNV-1a 32 hash of the key
    and version, padded record length). The fields are those of the name service's RESOLVE
    reply for the answer, cut the same way, so the program gets what a round trip would give.
    Cached: republishing rarely changes more than a few answers."""
    key = a.key.encode("ascii")
    if len(key) > 253 or a.version not in (0, 4, 6):
        raise TooBig(a.key)
    if a.addrs:
        rep = cp.encode_resolve_reply(0, list(a.addrs), flags=a.flags, canon=a.canon,
                                      aliases=list(a.aliases))
        naddr, flags, clen, nal, alen, _ = _RESOLVE_REP.unpack_from(rep, cp.REP_HDR_SIZE)
        b = cp.REP_HDR_SIZE + _RESOLVE_REP.size
        addrs = rep[b:b + naddr * cp.ADDR_SIZE]
        b += cp.RESOLVE_MAX_ADDRS * cp.ADDR_SIZE
        canon = rep[b:b + clen]
        aliases = rep[b + cp.CANON_FIELD:b + cp.CANON_FIELD + alen]
    else:           # ENODATA: the preload's RESOLVE returns the error alone
        naddr, flags, clen, nal, alen, addrs, canon, aliases = 0, a.flags, 0, 0, 0, b"", b"", b""
    rest = (struct.pack("=BBBBBBH", a.version, flags, naddr, nal, len(key), clen, alen)
            + key + canon + addrs + aliases)
    body = struct.pack("=Q", fnv1a64(rest)) + rest
    return body, fnv1a32(key + bytes([a.version])), (8 + len(body) + 7) & ~7


def encode_slot(gen: int, hosts_sig: tuple[int, int, int, int] | None,
                answers: list[Answer]) -> tuple[bytes, int]:
    """One slot holding as many of `answers` as fit, in order; (slot bytes, answers held)."""
    buckets = array("I", bytes(4 * NBUCKETS))
    entries = array("I", bytes(ENTRY_SIZE * MAX_RECORDS))
    pool = bytearray()
    held = 0
    genb = struct.pack("=Q", gen)
    for a in answers:
        if held == MAX_RECORDS:
            break
        body, h, length = encode_body(a)
        if len(pool) + length > POOL_SIZE:
            break
        off = len(pool)
        pool += (genb + body).ljust(length, b"\0")
        b = h & (NBUCKETS - 1)
        entries[4 * held:4 * held + 4] = array("I", (h, buckets[b], off, 8 + len(body)))
        buckets[b] = held + 1
        held += 1
    dev, ino, size, mtime = hosts_sig or (0, 0, 0, 0)
    head = struct.pack("=QQQqqIII I", gen, dev, ino, size, mtime,
                       HOSTS_PRESENT if hosts_sig else 0, held, len(pool), 0)
    head += struct.pack("=Q", fnv1a64(head))
    slot = head + buckets.tobytes() + entries.tobytes() + bytes(pool)
    return slot.ljust(SLOT_SIZE, b"\0"), held


class NameTableFile:
    """The writer: creates the file (0600, in the 0700 run directory) with nothing published
    (generation 0: the preload asks the name service), then publishes tables atomically.
    One writer per file; publish() may be called from any thread."""

    def __init__(self, path: str, hosts_path: str):
        self.path = path
        hp = _text(os.path.abspath(hosts_path))
        if len(hp) > PATH_MAX:
            hp = b""            # the reader cannot check the file: it answers nothing
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, FILE_SIZE)
            self._mm = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._mm[:HEADER_SIZE] = struct.pack(
            "=IIQIIIIH", MAGIC, VERSION, 0, NBUCKETS, MAX_RECORDS, POOL_SIZE, SLOT_SIZE,
            len(hp)).ljust(HEADER_SIZE - PATH_MAX, b"\0") + hp.ljust(PATH_MAX, b"\0")
        self._gen_word = memoryview(self._mm)[_GEN_OFFSET:_GEN_OFFSET + 8].cast("Q")
        self._lock = threading.Lock()
        self.gen = 0
        self.held = 0
        self.published: tuple | None = None      # (hosts signature, answers) last published

    def publish(self, hosts_sig: tuple[int, int, int, int] | None, answers: list[Answer]) -> int:
        """Make `answers` the table (those that fit); returns its generation."""
        with self._lock:
            gen = self.gen + 1
            slot, held = encode_slot(gen, hosts_sig, answers)
            off = HEADER_SIZE + (gen & 1) * SLOT_SIZE
            self._mm[off:off + SLOT_SIZE] = slot      # the slot no reader of gen-1 uses
            self._gen_word[0] = gen                   # then, one aligned store: the switch
            self.gen, self.held = gen, held
            self.published = (hosts_sig, tuple(answers))
            return gen

    def close(self) -> None:
        with self._lock:
            self._gen_word.release()
            self._mm.close()

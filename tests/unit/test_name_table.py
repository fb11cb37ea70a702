"""The name table the preload reads: its file (resolver/nametable.py) and what is published
when (resolver/namepublisher.py), with the NameService fed from status dicts and a hosts file
in a temporary directory. A reader here trusts nothing but the format."""
import asyncio
import errno
import os
import stat
import struct

import pytest

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)
from tailproxy.resolver import nametable as N
from tailproxy.resolver.hosts import HostsFile
from tailproxy.resolver.namepublisher import NameTablePublisher, start_name_table
from tailproxy.resolver.service import NameService


def status(peers: dict, exit_node=False) -> dict:
    return {"CurrentTailnet": {"MagicDNSSuffix": "ts.test"},
            "Self": {"DNSName": "me.ts.test.", "TailscaleIPs": ["100.64.0.9"]},
            "ExitNodeStatus": {"ID": "x"} if exit_node else None,
            "Peer": {f"k{i}": {"DNSName": f"{n}.ts.test.", "TailscaleIPs": ips}
                     for i, (n, ips) in enumerate(peers.items())}}


def read(path: str, key: str, version: int):
    """(flags, canon, [addresses], [aliases]) the table answers for (key, version), "ENODATA",
    or None when it does not hold it."""
    data = open(path, "rb").read()
    magic, ver, gen, nb, maxr, pool, slot_size, plen = struct.unpack_from("=IIQIIIIH", data)
    assert (magic, ver, nb, maxr, pool, slot_size) == (N.MAGIC, N.VERSION, N.NBUCKETS,
                                                       N.MAX_RECORDS, N.POOL_SIZE, N.SLOT_SIZE)
    if gen == 0:
        return None
    slot = N.HEADER_SIZE + (gen & 1) * N.SLOT_SIZE
    head = data[slot:slot + 56]
    assert struct.unpack_from("=Q", data, slot)[0] == gen
    assert struct.unpack_from("=Q", data, slot + 56)[0] == N.fnv1a64(head)
    h = N.fnv1a32(key.encode() + bytes([version]))
    idx = struct.unpack_from("=I", data, slot + 64 + 4 * (h & (N.NBUCKETS - 1)))[0]
    entries = slot + 64 + 4 * N.NBUCKETS
    pool_at = entries + N.ENTRY_SIZE * N.MAX_RECORDS
    while idx:
        eh, nxt, off, length = struct.unpack_from("=IIII", data, entries + 16 * (idx - 1))
        rec = data[pool_at + off:pool_at + off + length]
        rgen, rsum, v, flags, naddr, nal, klen, clen, alen = struct.unpack_from("=QQBBBBBBH", rec)
        k = rec[24:24 + klen].decode()
        if eh == h and k == key and v == version:
            assert rgen == gen and rsum == N.fnv1a64(rec[16:])
            if naddr == 0:
                return "ENODATA"
            p = 24 + klen
            canon = rec[p:p + clen].decode()
            p += clen
            addrs = []
            for _ in range(naddr):
                addrs.append(cp.decode_address(rec[p:p + 20]).ip)
                p += 20
            aliases = rec[p:p + alen].split(b"\0")[:nal]
            return flags, canon, addrs, [a.decode() for a in aliases]
        idx = nxt
    return None


@pytest.fixture
def hosts(tmp_path):
    p = tmp_path / "hosts"
    p.write_text("10.1.2.3 myhost.example myhost alias2\n"
                 "fd00::3 myhost\n"
                 "10.9.9.9 shadowed\n"              # a peer's short name: the file wins
                 "10.0.0.5 p\u00e9er\n"             # not ASCII: left to the name service
                 "10.0.0.6 bad/name\n")             # invalid: refused by the name service
    return str(p)


@pytest.fixture
def setup(tmp_path, hosts):
    os.chmod(tmp_path, 0o700)
    st = {"now": status({"peer": ["100.64.0.2", "fd7a:115c:a1e0::2"],
                         "shadowed": ["100.64.0.3"]})}
    names = NameService(status=lambda: st["now"], hosts=HostsFile(hosts), status_ttl=0)
    asyncio.run(names.refresh())
    table = N.NameTableFile(str(tmp_path / "names"), hosts)
    pub = NameTablePublisher(table, names)
    yield names, table, pub, st
    table.close()


def test_file_is_private_and_starts_with_nothing_published(setup):
    _names, table, _pub, _st = setup
    s = os.stat(table.path)
    assert stat.S_IMODE(s.st_mode) == 0o600 and s.st_size == N.FILE_SIZE
    assert read(table.path, "peer", 0) is None     # the preload asks the name service


def test_reference_hashes():
    assert N.fnv1a32(b"") == 0x811c9dc5
    assert N.fnv1a32(b"a") == 0xe40c292c
    assert N.fnv1a32(b"foobar") == 0xbf9cf968


def test_table_answers_exactly_what_the_name_service_answers(setup):
    names, table, pub, _st = setup
    pub.publish()
    held = 0
    for key in ("myhost", "shadowed", "peer", "peer.ts.test", "me", "me.ts.test"):
        for v in (0, 4, 6):
            r = asyncio.run(names.resolve(key, v))
            got = read(table.path, key, v)
            if r.err == errno.ENODATA:
                assert got == "ENODATA", (key, v)
            else:
                assert r.err == 0 and got == (r.flags, r.canon, r.addrs, r.aliases), (key, v)
            held += 1
    assert read(table.path, "myhost", 0) == (cp.RES_HOSTS, "myhost.example",
                                             ["10.1.2.3", "fd00::3"], ["myhost", "alias2"])
    assert read(table.path, "shadowed", 0)[0] == cp.RES_HOSTS       # the file's order rule
    assert read(table.path, "peer", 4) == (cp.RES_TAILNET, "peer.ts.test", ["100.64.0.2"], [])
    # what it leaves to the name service: not ASCII, invalid, unknown (and placeholders)
    for key in ("p\u00e9er", "bad/name", "nosuch.ts.test", "far.test"):
        assert read(table.path, key, 0) is None, key


def test_republished_only_when_something_changed(setup):
    _names, table, pub, _st = setup
    pub.publish()
    gen = table.gen
    pub.publish()
    assert table.gen == gen


def test_a_peer_joining_and_leaving_is_followed(setup):
    names, table, pub, st = setup
    pub.publish()
    assert read(table.path, "newpeer", 0) is None
    st["now"] = status({"peer": ["100.64.0.2"], "newpeer": ["100.64.0.4"]})
    asyncio.run(names.refresh())                    # what the publisher's loop does
    assert read(table.path, "newpeer", 4) == (cp.RES_TAILNET, "newpeer.ts.test",
                                              ["100.64.0.4"], [])
    assert read(table.path, "peer", 6) == "ENODATA"  # its IPv6 address is gone
    st["now"] = status({})
    asyncio.run(names.refresh())
    assert read(table.path, "newpeer", 0) is None and read(table.path, "peer", 0) is None
    assert read(table.path, "myhost", 4) is not None


def test_an_exit_node_switch_keeps_tailnet_and_hosts_names_and_adds_placeholders(setup):
    """Tailnet and hosts names come before placeholders in every mode: with an exit node they
    are still answered in the program; placeholders a name already has are too, while the exit
    node is in use, and pinned in the map for as long as the table holds them."""
    names, table, pub, st = setup
    peers = {"peer": ["100.64.0.2", "fd7a:115c:a1e0::2"], "shadowed": ["100.64.0.3"]}
    pub.publish()
    before = read(table.path, "peer", 0)
    r = asyncio.run(names.resolve("far.test", 4))   # no exit node: the system's resolver
    assert r.flags == 0 and read(table.path, "far.test", 4) is None
    st["now"] = status(peers, exit_node=True)
    asyncio.run(names.refresh())                    # the control command's refresh
    assert read(table.path, "peer", 0) == before
    r = asyncio.run(names.resolve("Far.Test.", 4))
    assert r.flags == cp.RES_PLACEHOLDER
    for v in (0, 4):                                # published at once (no event loop here)
        assert read(table.path, "far.test", v) == (cp.RES_PLACEHOLDER, "far.test", r.addrs, [])
    assert read(table.path, "far.test", 6) is None  # none yet: the service allocates it
    r6 = asyncio.run(names.resolve("far.test", 6))
    assert read(table.path, "far.test", 6) == (cp.RES_PLACEHOLDER, "far.test", r6.addrs, [])
    assert names.placeholders._pinned == {"far.test"}
    st["now"] = status(peers)                       # exit node cleared
    asyncio.run(names.refresh())
    assert read(table.path, "far.test", 4) is None and read(table.path, "peer", 0) == before
    assert names.placeholders._pinned == frozenset()


def test_a_pinned_placeholder_is_never_evicted():
    from tailproxy.resolver.placeholders import ENTRY_OVERHEAD, PlaceholderMap
    m = PlaceholderMap(max_bytes=2 * (ENTRY_OVERHEAD + 1), recent_s=0, clock=lambda: 100.0)
    a = m.get("a", 4)
    m.get("b", 4)
    m.pin({"a"})
    m.get("c", 4)                                   # full: the oldest unpinned one goes
    assert m.name_of(a) == "a" and "b" not in m._by_name
    m.pin(())                                       # "a" counts as just used
    m.get("d", 4)
    assert m.name_of(a) == "a" and "c" not in m._by_name


def test_new_placeholders_are_published_in_batches(tmp_path, hosts):
    os.chmod(tmp_path, 0o700)
    st = status({}, exit_node=True)

    async def main():
        import contextlib
        names = NameService(status=lambda: st, hosts=HostsFile(hosts))
        await names.refresh()
        async with contextlib.AsyncExitStack() as parts:
            path = await start_name_table(parts, names, str(tmp_path), lambda m: None)
            gen = int.from_bytes(open(path, "rb").read(16)[8:16], "little")
            addrs = [(await names.resolve(f"n{i}.example", 4)).addrs for i in range(50)]
            assert read(path, "n0.example", 4) is None          # not yet: batched
            await asyncio.sleep(0.3)
            for i in (0, 49):
                assert read(path, f"n{i}.example", 4)[2] == addrs[i]
            after = int.from_bytes(open(path, "rb").read(16)[8:16], "little")
            assert after - gen <= 3, (gen, after)               # not one per name
    asyncio.run(main())


def test_a_hosts_file_edit_is_followed(setup, hosts):
    names, table, pub, _st = setup
    pub.publish()
    sig = table.published[0]
    with open(hosts, "a") as f:
        f.write("10.7.7.7 added\n")
    os.utime(hosts, ns=(1, 1))                      # a different mtime whatever the clock says
    pub.publish()                                   # the keep-current tick, or a lookup's reload
    assert table.published[0] != sig
    s = os.stat(hosts)
    assert table.published[0] == (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)
    assert read(table.path, "added", 4) == (cp.RES_HOSTS, "added", ["10.7.7.7"], [])
    os.unlink(hosts)
    asyncio.run(names.resolve("x.example", 4))      # a lookup notices: the file is reloaded
    assert table.published[0] is None and read(table.path, "added", 0) is None


def test_a_table_too_small_holds_what_fits_and_says_so_once(tmp_path):
    os.chmod(tmp_path, 0o700)
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"10.0.{i // 250}.{i % 250} h{i}\n" for i in range(3000)))
    said = []
    names = NameService(hosts=HostsFile(str(hosts)))
    table = N.NameTableFile(str(tmp_path / "names"), str(hosts))
    pub = NameTablePublisher(table, names, log=said.append)
    pub.publish()
    assert table.held == N.MAX_RECORDS and len(said) == 1 and "holds 8192" in said[0]
    assert read(table.path, "h0", 0) is not None                # the file's first names
    assert read(table.path, "h2999", 0) is None                 # the name service answers it
    hosts.write_text(hosts.read_text() + "10.1.1.1 one-more\n")
    pub.publish()
    assert len(said) == 1
    table.close()


def test_a_hosts_path_too_long_for_the_header_answers_nothing(tmp_path):
    os.chmod(tmp_path, 0o700)
    table = N.NameTableFile(str(tmp_path / "names"), "/" + "x" * N.PATH_MAX)
    data = open(table.path, "rb").read(N.HEADER_SIZE)
    assert struct.unpack_from("=H", data, 32)[0] == 0           # the reader then believes none
    table.close()


def test_start_and_stop(tmp_path, hosts):
    os.chmod(tmp_path, 0o700)

    async def main():
        import contextlib
        names = NameService(hosts=HostsFile(hosts))
        async with contextlib.AsyncExitStack() as parts:
            path = await start_name_table(parts, names, str(tmp_path), lambda m: None)
            assert read(path, "myhost", 4) is not None
        names.hosts.on_change()                     # stopped: no publish into a closed file
        names.on_change()
        assert await start_name_table(parts, None, str(tmp_path), print) is None
        said = []
        assert await start_name_table(parts, names, str(tmp_path), said.append) is None
        assert "no name table" in said[0]           # the file exists already: O_EXCL
    asyncio.run(main())

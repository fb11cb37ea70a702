"""The name table (TAILPROXY_NAMES): the reader answers exactly what the table holds, only whole
answers, and asks the name service for everything else — no table, a bad one, a name it does
not hold, a hosts file edited since (preload/tests/test_nametable.c; the writer is the proxy's,
tailproxy.resolver.nametable). The hooks' results with the table are test_preload_resolve.py's
(run with and without it)."""
import os
import re
import struct
import sys
import threading

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
from tailproxy.proxy import channel_proto as cp  # noqa: E402
from tailproxy.resolver import nametable as N  # noqa: E402

PEER4, PEER6 = "100.64.0.2", "fd7a:115c:a1e0::2"


def hosts_sig(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@pytest.fixture
def hosts(tmp_path):
    p = tmp_path / "hosts"
    p.write_text("10.1.2.3 myhost.example myhost alias2\n")
    return str(p)


@pytest.fixture
def table(tmp_path, hosts):
    os.chmod(tmp_path, 0o700)
    t = N.NameTableFile(str(tmp_path / "names"), hosts)
    yield t
    t.close()


ANSWERS = [
    N.Answer("myhost", 0, cp.RES_HOSTS, "myhost.example", ("10.1.2.3",), ("myhost", "alias2")),
    N.Answer("myhost", 4, cp.RES_HOSTS, "myhost.example", ("10.1.2.3",), ("myhost", "alias2")),
    N.Answer("myhost", 6, cp.RES_HOSTS, "myhost.example", ()),
    N.Answer("peer", 0, cp.RES_TAILNET, "peer.ts.test", (PEER4, PEER6)),
    N.Answer("peer", 6, cp.RES_TAILNET, "peer.ts.test", (PEER6,)),
]


def lookup(run, path, name, family=0):
    r = run.run("test_nametable", "lookup", name, family, env={"TAILPROXY_NAMES": path},
                channel=False)
    return r.stdout.strip()


def test_reader_answers_what_the_table_holds(run, table, hosts):
    table.publish(hosts_sig(hosts), ANSWERS)
    assert lookup(run, table.path, "myhost") == \
        "table err=0 flags=4 name=myhost.example addrs=10.1.2.3 aliases=myhost,alias2"
    assert lookup(run, table.path, "MyHost.", 4) == \
        "table err=0 flags=4 name=myhost.example addrs=10.1.2.3 aliases=myhost,alias2"
    # the name exists, not for IPv6: ENODATA, as the name service says it
    assert lookup(run, table.path, "myhost", 6) == "table err=61 flags=4 name= addrs= aliases="
    assert lookup(run, table.path, "peer") == \
        f"table err=0 flags=2 name=peer.ts.test addrs={PEER4},{PEER6} aliases="
    assert lookup(run, table.path, "PEER", 6) == \
        f"table err=0 flags=2 name=peer.ts.test addrs={PEER6} aliases="


def test_everything_else_goes_to_the_name_service(run, table, hosts):
    table.publish(hosts_sig(hosts), ANSWERS)
    for name, family in [("peer", 4),               # not published for that family
                         ("other", 0), ("peer..", 0), ("peer.ts.test", 0),
                         ("p\u00e9er", 0),           # not ASCII: the service lowers it
                         ("x" * 300, 0)]:
        assert lookup(run, table.path, name, family).startswith("service "), (name, family)


def test_verbose_says_which_answered(run, table, hosts):
    table.publish(hosts_sig(hosts), ANSWERS)
    r = run.run("test_nametable", "lookup", "peer", 0, env={"TAILPROXY_NAMES": table.path},
                channel=False)
    assert "tailproxy: lookup peer: answered from the name table" in r.stderr, r.stderr


def test_a_hosts_file_edited_since_is_asked_again(run, table, hosts):
    table.publish(hosts_sig(hosts), ANSWERS)
    assert lookup(run, table.path, "myhost").startswith("table ")
    with open(hosts, "a") as f:
        f.write("10.9.9.9 peer\n")                  # now the hosts file has "peer" too
    assert lookup(run, table.path, "peer").startswith("service ")
    assert lookup(run, table.path, "myhost").startswith("service ")
    table.publish(hosts_sig(hosts), ANSWERS)        # the proxy read it again
    assert lookup(run, table.path, "myhost").startswith("table ")
    os.unlink(hosts)
    assert lookup(run, table.path, "myhost").startswith("service ")
    table.publish(None, ANSWERS)                    # no hosts file: believed while there is none
    assert lookup(run, table.path, "myhost").startswith("table ")


def test_no_or_bad_table_asks_the_name_service(run, table, hosts, tmp_path):
    assert run.run("test_nametable", "lookup", "peer", 0, channel=False).stdout.startswith(
        "service ")                                  # no TAILPROXY_NAMES
    assert lookup(run, str(tmp_path / "missing"), "peer").startswith("service ")
    assert lookup(run, table.path, "peer").startswith("service ")     # nothing published yet
    table.publish(hosts_sig(hosts), ANSWERS)
    assert lookup(run, table.path, "peer").startswith("table ")
    link = tmp_path / "link"
    os.symlink(table.path, link)
    assert lookup(run, str(link), "peer").startswith("service ")      # O_NOFOLLOW
    os.chmod(table.path, 0o620)
    assert lookup(run, table.path, "peer").startswith("service ")     # writable by others
    os.chmod(table.path, 0o600)
    # a record changed behind the checksum's back
    slot = N.HEADER_SIZE + (table.gen & 1) * N.SLOT_SIZE
    pool = slot + N.SLOT_HEADER + 4 * N.NBUCKETS + N.ENTRY_SIZE * N.MAX_RECORDS
    data = open(table.path, "rb").read()
    at = data.index(b"peer.ts.test", pool)
    with open(table.path, "r+b") as f:
        f.seek(at)
        f.write(b"PEER")
    assert lookup(run, table.path, "peer").startswith("service ")
    table.publish(hosts_sig(hosts), ANSWERS)
    with open(table.path, "r+b") as f:              # the slot header changed
        f.seek(N.HEADER_SIZE + (table.gen & 1) * N.SLOT_SIZE + 40)
        f.write(struct.pack("=I", 7))
    assert lookup(run, table.path, "peer").startswith("service ")
    table.publish(hosts_sig(hosts), ANSWERS)
    with open(table.path, "r+b") as f:              # another version of the format
        f.seek(4)
        f.write(struct.pack("=I", 99))
    assert lookup(run, table.path, "peer").startswith("service ")


def test_a_full_table_holds_what_fits_and_the_rest_is_asked(run, table, hosts):
    many = [N.Answer(f"n{i}", 4, cp.RES_TAILNET, f"n{i}.ts.test", ("100.64.1.1",))
            for i in range(N.MAX_RECORDS + 10)]
    table.publish(hosts_sig(hosts), many)
    assert table.held == N.MAX_RECORDS
    assert lookup(run, table.path, "n0", 4).startswith("table ")
    assert lookup(run, table.path, f"n{N.MAX_RECORDS - 1}", 4).startswith("table ")
    assert lookup(run, table.path, f"n{N.MAX_RECORDS}", 4).startswith("service ")


def stress_answers(gen: int) -> list:
    """Table `gen` of the stress test (see test_nametable.c), among 2,000 other names."""
    n = 1 + gen % 16
    x = gen % 65536
    addrs = tuple(f"10.{x >> 8}.{x & 255}.{i}" for i in range(n))
    fill = [N.Answer(f"filler{i}", 4, cp.RES_TAILNET, f"filler{i}.ts.test", ("100.64.0.7",))
            for i in range(2000)]
    return fill[:1000] + [N.Answer("stress", 4, cp.RES_TAILNET, f"g{gen}.example", addrs,
                                   (f"a{gen}",))] + fill[1000:]


def test_200_threads_read_only_whole_answers_while_it_is_republished(run, table, hosts):
    stop = threading.Event()
    sig = hosts_sig(hosts)

    def republish():
        while not stop.is_set():
            table.publish(sig, stress_answers(table.gen + 1))

    table.publish(sig, stress_answers(1))
    writer = threading.Thread(target=republish)
    writer.start()
    try:
        # niced: 200 spinning readers on a small machine would starve the one writer
        r = run.run_cmd(["nice", "-n", "19", os.path.join(run.testbin, "test_nametable"),
                         "stress", "200", "5"], env={"TAILPROXY_NAMES": table.path},
                        channel=False, timeout=120)
    finally:
        stop.set()
        writer.join()
    m = re.search(r"ok: 200 threads, (\d+) whole answers, (\d+) changes seen", r.stdout)
    assert m, r.stdout + r.stderr
    assert table.gen > 50, f"the writer republished {table.gen} times only: proved nothing"
    assert int(m.group(2)) > 50, r.stdout           # the readers did see it change under them
    print(r.stdout, f"writer: {table.gen} tables")


FORK_EXEC = """
import os, socket, subprocess, sys
def lookup():
    return sorted({a[4][0] for a in socket.getaddrinfo("peer", 80, type=socket.SOCK_STREAM)})
assert lookup() == sys.argv[1:], lookup()
pid = os.fork()                     # the child uses the mapping it inherited
if pid == 0:
    os._exit(0 if lookup() == sys.argv[1:] else 1)
assert os.waitpid(pid, 0)[1] == 0
subprocess.run([sys.executable, "-c",   # a new image maps the table again
                "import socket; socket.getaddrinfo('peer', 80)"], check=True)
"""


def test_fork_and_exec_keep_answering_from_the_table(run, table, hosts):
    table.publish(hosts_sig(hosts), ANSWERS)
    r = run.run_cmd([sys.executable, "-c", FORK_EXEC, PEER4, PEER6],
                    env={"TAILPROXY_NAMES": table.path, "TAILPROXY_RESOLVE": "1",
                         "TAILPROXY_VERBOSE": "1"})
    lines = [l for l in r.stderr.splitlines() if "lookup peer" in l]
    assert lines == ["tailproxy: lookup peer: answered from the name table"] * 3, r.stderr

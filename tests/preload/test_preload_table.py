"""The routing table (TAILPROXY_TABLE): the reader sees only whole tables, decides as the proxy
would, falls back to handing over, and connect() follows it (preload/tests/test_table.c,
test_connect.c; the writer is the proxy's, tailproxy.policy.table)."""
import ipaddress
import os
import re
import struct
import sys
import threading
import time

import pytest

from preload_env import BYPASSED, V4, V6

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
from tailproxy.policy import table as T  # noqa: E402

TAILNET = [("100.64.0.0/10", T.PROXY), ("fd7a:115c:a1e0::/48", T.PROXY)]


@pytest.fixture
def table(tmp_path):
    os.chmod(tmp_path, 0o700)
    t = T.RouteTableFile(str(tmp_path / "routes"))
    yield t
    t.close()


def read(run, path):
    return run.run("test_table", "read", env={"TAILPROXY_TABLE": path}, channel=False).stdout


def decide(run, path, ip):
    return run.run("test_table", "direct", ip, env={"TAILPROXY_TABLE": path},
                   channel=False).stdout.strip()


def whole_table(gen: int) -> tuple[int, list]:
    """Table `gen` of the stress test: see test_table.c."""
    routes = []
    for i in range(1 + gen % 64):
        packed = gen.to_bytes(8, "little") + bytes([i]) + bytes(7)
        routes.append((f"{ipaddress.IPv6Address(packed)}/128", T.PROXY))
    return gen % 8, routes


def test_200_threads_read_only_whole_tables_while_it_is_republished(run, table):
    stop = threading.Event()

    def republish():
        while not stop.is_set():
            table.publish(*whole_table(table.gen + 1))

    table.publish(*whole_table(1))
    writer = threading.Thread(target=republish)
    writer.start()
    try:
        # niced: 200 spinning readers on a small machine would starve the one writer
        r = run.run_cmd(["nice", "-n", "19", os.path.join(run.testbin, "test_table"), "stress",
                         "200", "5"], env={"TAILPROXY_TABLE": table.path}, channel=False,
                        timeout=120)
    finally:
        stop.set()
        writer.join()
    m = re.search(r"ok: 200 threads, (\d+) whole reads, (\d+) changes seen", r.stdout)
    assert m, r.stdout + r.stderr
    # on a loaded machine the writer may get little CPU: enough that readers overlapped writes
    assert table.gen > 100, f"the writer republished {table.gen} times only: proved nothing"
    assert int(m.group(2)) > 100, r.stdout      # the readers did see it change under them


def test_reader_sees_the_published_table(run, table):
    assert read(run, table.path) == "none\n"        # created, nothing published yet
    table.publish(0, TAILNET + [(f"{BYPASSED}/32", T.BYPASS)])
    assert read(run, table.path) == ("gen 1 flags 0\nroute 1 100.64.0.0/10\n"
                                     "route 1 fd7a:115c:a1e0::/48\nroute 2 198.18.0.2/32\n")


def test_decisions_follow_the_mode(run, table):
    routes = TAILNET + [("198.18.7.0/24", T.PROXY), (f"{BYPASSED}/32", T.BYPASS)]
    table.publish(0, routes)
    assert decide(run, table.path, V4) == "direct"
    assert decide(run, table.path, V6) == "direct"
    assert decide(run, table.path, "100.100.1.2") == "proxy"        # tailnet
    assert decide(run, table.path, "fd7a:115c:a1e0::5") == "proxy"
    assert decide(run, table.path, "198.18.7.9") == "proxy"         # an accepted route
    for flags in (T.EXIT_NODE, T.TAILNET_ONLY, T.HAND_OVER_ALL, 16):  # 16: unknown here
        table.publish(flags, routes)
        assert decide(run, table.path, V4) == "proxy", flags
        assert decide(run, table.path, BYPASSED) == "direct", flags  # bypass: every mode


def test_no_or_bad_table_hands_everything_over(run, table, tmp_path):
    assert run.run("test_table", "direct", V4, channel=False).stdout.strip() == "proxy"  # no env
    assert decide(run, str(tmp_path / "missing"), V4) == "proxy"
    assert decide(run, table.path, V4) == "proxy"          # nothing published yet
    table.publish(0, TAILNET)
    assert decide(run, table.path, V4) == "direct"
    link = tmp_path / "link"
    os.symlink(table.path, link)
    assert decide(run, str(link), V4) == "proxy"            # O_NOFOLLOW
    os.chmod(table.path, 0o620)
    assert decide(run, table.path, V4) == "proxy"           # writable by others: not believed
    os.chmod(table.path, 0o600)
    slot = T.HEADER_SIZE + (table.gen & 1) * T.SLOT_SIZE
    with open(table.path, "r+b") as f:                      # a route changed, checksum not
        f.seek(slot + 24 + 4)
        f.write(b"\x0a")
    assert decide(run, table.path, V4) == "proxy"
    table.publish(0, TAILNET)
    assert decide(run, table.path, V4) == "direct"
    with open(table.path, "r+b") as f:                      # another version of the format
        f.seek(4)
        f.write(struct.pack("=I", 99))
    assert decide(run, table.path, V4) == "proxy"
    short = tmp_path / "short"
    with open(table.path, "rb") as f, open(short, "wb") as g:
        g.write(f.read(T.FILE_SIZE - 1))
    os.chmod(short, 0o600)
    assert decide(run, str(short), V4) == "proxy"


def test_connect_goes_direct_by_the_table(run, table, proxy):
    table.publish(0, TAILNET)
    before = os.path.getsize(proxy.log_path)
    env = {"TAILPROXY_TABLE": table.path, "TAILPROXY_VERBOSE": "1"}
    for ip in (V4, V6):
        r = run.run("test_connect", "direct", ip, env=env)  # the kernel's peer is ip itself
        assert re.search(r"tailproxy: connect fd \d+ to \S+: direct \(not routed by the proxy\)",
                         r.stderr), r.stderr
    time.sleep(0.2)
    with open(proxy.log_path, errors="replace") as f:
        f.seek(before)
        logged = f.read()
    assert V4 not in logged and V6 not in logged, logged    # the proxy never heard of them


def test_connect_hands_over_what_the_table_routes(run, table):
    env = {"TAILPROXY_TABLE": table.path, "TAILPROXY_VERBOSE": "1"}
    table.publish(0, TAILNET + [(f"{V4}/32", T.PROXY)])     # as if an accepted route
    r = run.run("test_connect", "ok", V4, env=env)          # checks the relay is in between
    assert "connected" in r.stderr and "direct" not in r.stderr
    table.publish(T.EXIT_NODE, TAILNET)
    r = run.run("test_connect", "ok", V6, env=env)
    assert "connected" in r.stderr and "direct" not in r.stderr


def test_udp_to_a_direct_destination_is_untouched_and_silent(run, table):
    table.publish(0, TAILNET)
    r = run.run("test_connect", "udp", V4, env={"TAILPROXY_TABLE": table.path,
                                                "TAILPROXY_VERBOSE": "1"})
    assert "tailproxy:" not in r.stderr, r.stderr


FORK_EXEC = """
import os, socket, subprocess, sys
srv = socket.create_server((sys.argv[1], 0))
port = srv.getsockname()[1]
def connect():
    socket.create_connection((sys.argv[1], port)).close()
pid = os.fork()                     # the child uses the mapping it inherited
if pid == 0:
    connect()
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
subprocess.run([sys.executable, "-c",   # a new image maps the table again
                f"import socket; socket.create_connection(({sys.argv[1]!r}, {port})).close()"],
               check=True)
"""


def test_fork_and_exec_keep_following_the_table(run, table):
    table.publish(0, TAILNET)
    r = run.run_cmd([sys.executable, "-c", FORK_EXEC, V4],
                    env={"TAILPROXY_TABLE": table.path, "TAILPROXY_VERBOSE": "1"})
    direct = [l for l in r.stderr.splitlines() if "direct (not routed by the proxy)" in l]
    assert len(direct) == 2 and "connected" not in r.stderr, r.stderr


def test_a_connect_pending_when_the_table_turns_direct_still_waits_for_the_proxy(run, table,
                                                                                  tmp_path):
    """A blocking connect handed over and interrupted (EINTR) is still the proxy's when the
    table then says "direct": connect() again waits for its outcome (the kernel's connect on
    the parked socket would answer EALREADY at once, or dial a second time)."""
    table.publish(T.EXIT_NODE, TAILNET)                     # handed over
    image = T.RouteTableFile(str(tmp_path / "image"))
    image.publish(0, TAILNET)                               # then: direct
    run.run("test_connect", "eintr", V4, env={"TAILPROXY_TABLE": table.path,
                                              "TEST_TABLE_IMAGE": image.path})
    assert decide(run, table.path, V4) == "direct"          # the image did replace it
    image.close()


def test_a_failed_hand_over_keeps_its_outcome_when_the_table_turns_direct(run, table, tmp_path):
    """Non-blocking, to a closed port, handed over and failed; then the table says "direct":
    connect() again reports the proxy's outcome (ECONNREFUSED), not a new dial of the
    kernel's (EINPROGRESS)."""
    table.publish(T.EXIT_NODE, TAILNET)
    image = T.RouteTableFile(str(tmp_path / "image"))
    image.publish(0, TAILNET)
    run.run("test_nonblock", "again-refused", V4, env={"TAILPROXY_TABLE": table.path,
                                                       "TEST_TABLE_IMAGE": image.path})
    assert decide(run, table.path, V4) == "direct"
    image.close()

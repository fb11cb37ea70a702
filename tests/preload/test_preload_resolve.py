"""The resolver hooks (preload/tests/test_resolve.c) against the name service of
`python -m tailproxy.resolver` (stand-in tailnet: peer, me; a hosts file; far.test dialled at V4
when it is reached through a placeholder).

- conformance: numeric and local inputs give exactly glibc's results (same program, same calls,
  with and without the preload);
- one test per entry point for tailnet names, /etc/hosts names, placeholders and errors;
- odd input never crashes; freeaddrinfo takes either library's results;
- 200 threads at once; a placeholder from one process connects from another;
- a program's own port-53 traffic (UDP and TCP) is answered and never reaches the network.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, Runner
from preload_env import V4
from timedio import readline

PEER4, PEER6 = "100.64.0.2", "fd7a:115c:a1e0::2"
ME4 = "100.64.0.9"
# the system's own lines first, so reverse lookups of local addresses match glibc's
HOSTS = open("/etc/hosts").read() + "\n10.1.2.3 myhost.example myhost alias2\n"


class NamesProxy:
    def __init__(self, prefix, rundir, tag, extra, table=False):
        self.dir = os.path.join(rundir, f"names-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o700)
        # the name table: names the service knows answered in the program (nametable.c)
        self.table = os.path.join(self.dir, "names") if table else None
        if self.table and os.path.exists(self.table):
            os.unlink(self.table)
        self.channel = os.path.join(self.dir, "channel")
        hosts = os.path.join(self.dir, "hosts")
        with open(hosts, "w") as f:
            f.write(HOSTS)
        self.server_file = os.path.join(self.dir, "server")
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
        argv = [sys.executable, "-m", "tailproxy.resolver", "--channel", self.channel,
                "--name", f"peer={PEER4},{PEER6}", "--self", f"me={ME4}", "--hosts", hosts,
                "--upstream", f"far.test={V4}", "--server-file", self.server_file, *extra]
        if self.table:
            argv += ["--names-table", self.table]
        self.log = open(os.path.join(self.dir, "log"), "ab")
        self.proc = subprocess.Popen(prefix + argv, stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = readline(self.proc.stdout, 60)
        if b"ready" not in line:
            self.proc.kill()
            raise RuntimeError("name service proxy did not start: "
                               + open(os.path.join(self.dir, "log"), errors="replace").read())
        self.server = open(self.server_file).read().strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


class NamesRunner(Runner):
    def __init__(self, prefix, lib, testbin, proxy):
        super().__init__(prefix, lib, testbin, proxy.channel)
        self.proxy = proxy

    def env(self, extra=None, channel=True):
        e = {"TAILPROXY_RESOLVE": "1", "TAILPROXY_DNS_SERVER": self.proxy.server}
        if self.proxy.table:
            e["TAILPROXY_NAMES"] = self.proxy.table
        e.update(extra or {})
        return super().env(e, channel)

    def out(self, *args, **kw):
        return self.run("test_resolve", *args, **kw).stdout

    def glibc(self, *args):
        """The same call without the preload."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILPROXY_")}
        env.pop("LD_PRELOAD", None)
        r = subprocess.run(self.prefix + [os.path.join(self.testbin, "test_resolve"),
                                          *map(str, args)],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout


# Every test runs twice: each lookup a round trip to the name service, and with the name table
# it publishes (hosts and tailnet names answered in the program): the results must be the same.
@pytest.fixture(scope="module", params=["roundtrip", "table"])
def names(build, netns, rundir, request):
    p = NamesProxy(netns, rundir, f"auto-{request.param}", [], table=request.param == "table")
    yield NamesRunner(netns, *build, p)
    p.stop()


@pytest.fixture(scope="module", params=["roundtrip", "table"])
def exitnames(build, netns, rundir, request):
    """Names through the tailnet (as with an exit node): placeholders."""
    p = NamesProxy(netns, rundir, f"exit-{request.param}", ["--exit-node"],
                   table=request.param == "table")
    yield NamesRunner(netns, *build, p)
    p.stop()


AF_INET, AF_INET6 = 2, 10
STREAM, DGRAM, RAW = 1, 2, 3
AI_PASSIVE, AI_CANONNAME, AI_NUMERICHOST, AI_V4MAPPED, AI_ALL, AI_ADDRCONFIG = 1, 2, 4, 8, 16, 32
AI_NUMERICSERV = 0x400

# numeric and local inputs: node service family socktype protocol flags ("-" = NULL)
CONFORMANCE_GAI = [
    ("127.0.0.1", "80", "-", 0, 0, 0),
    ("127.0.0.1", "http", 0, STREAM, 0, 0),
    ("127.0.0.1", "http", 0, 0, 0, AI_CANONNAME),
    ("::1", "443", AF_INET6, 0, 0, 0),
    ("1.2.3.4", "80", AF_INET6, 0, 0, 0),
    ("1.2.3.4", "80", AF_INET6, 0, 0, AI_V4MAPPED),
    ("1.2.3.4", "80", AF_INET6, STREAM, 0, AI_V4MAPPED | AI_ALL),
    ("127.1", "80", 0, STREAM, 0, 0),
    ("0x7f000001", "80", 0, STREAM, 0, 0),
    ("fe80::1%lo", "80", AF_INET6, STREAM, 0, 0),
    ("localhost", "80", 0, 0, 0, 0),
    ("localhost", "-", 0, STREAM, 0, AI_CANONNAME),
    ("localhost", "80", AF_INET, STREAM, 0, AI_ADDRCONFIG),
    ("localhost", "80", AF_INET6, STREAM, 0, AI_V4MAPPED),
    ("localhost", "domain", 0, DGRAM, 0, AI_ADDRCONFIG),
    ("-", "80", 0, STREAM, 0, AI_PASSIVE),
    ("-", "80", AF_INET6, STREAM, 0, AI_PASSIVE),
    ("-", "80", "-", 0, 0, 0),
    ("-", "-", 0, 0, 0, 0),
    ("-", "80", 0, 0, 0, AI_CANONNAME),
    ("10.0.0.1", "no-such-service", 0, 0, 0, 0),
    ("10.0.0.1", "http", 0, RAW, 0, 0),
    ("10.0.0.1", "http", 0, STREAM, 0, AI_NUMERICSERV),
    ("10.0.0.1", "80", 0, STREAM, 17, 0),
    # names, but refused before any lookup: glibc's own errors
    ("peer", "80", 0, 0, 0, AI_NUMERICHOST),
    ("peer", "80", 12345, 0, 0, 0),
    ("peer", "80", 0, 0, 0, 0x40000),
    ("peer", "no-such-service", 0, 0, 0, 0),
    ("peer", "http", 0, RAW, 0, 0),
    ("peer", "80", 0, 12345, 0, 0),
    ("peer", "http", 0, STREAM, 0, AI_NUMERICSERV),
]


@pytest.mark.parametrize("case", CONFORMANCE_GAI, ids=lambda c: "-".join(map(str, c)))
def test_getaddrinfo_numeric_and_local_match_glibc(names, case):
    assert names.out("gai", *case) == names.glibc("gai", *case)


@pytest.mark.parametrize("args", [
    ("ghbn", "127.0.0.1"), ("ghbn", "localhost"), ("ghbn2", "::1", AF_INET6),
    ("ghbn2", "localhost", AF_INET6), ("ghbn2", "1.2.3.4", AF_INET),
    ("ghbnr", "127.0.0.1", 4096), ("ghbnr", "localhost", 8), ("ghbn2r", "::1", AF_INET6, 4096),
    ("ghba", "127.0.0.1"), ("ghbar", "127.0.0.1", 4096), ("ghbar", "127.0.0.1", 10),
    ("ghba", "::1"),
    ("gni", "127.0.0.1", 80, 0, 1025), ("gni", "127.0.0.1", 80, 1, 1025),
    ("gni", "127.0.0.1", 53, 2 | 16, 1025), ("gni", "::1", 22, 0, 1025),
    ("gni", "127.0.0.1", 80, 0, 0), ("gni", "127.0.0.1", 80, 0, 3),
    ("gni", "198.18.0.1", 80, 1, 1025),
], ids=lambda a: "-".join(map(str, a)))
def test_hostent_and_getnameinfo_local_match_glibc(names, args):
    assert names.out(*args) == names.glibc(*args)


# ---------------------------------------------------------------- one test per entry point

def test_getaddrinfo_tailnet_names(names):
    for name in ("peer", "peer.ts.test", "peer.ts.test.", "PEER.ts.test"):
        out = names.out("gai", name, "80", 0, STREAM, 0, AI_CANONNAME)
        lines = out.splitlines()
        assert lines[0] == "ret=0 (ok)", out
        assert f"{PEER4} port=80" in lines[1] and "canon=peer.ts.test" in lines[1], out
        assert f"{PEER6} port=80" in lines[2], out
    out = names.out("gai", "me", "-", AF_INET, STREAM, 0, 0)
    assert f"{ME4} port=0" in out
    out = names.out("gai", "peer", "80", AF_INET6, STREAM, 0, AI_V4MAPPED | AI_ALL)
    assert PEER6 in out and f"::ffff:{PEER4}" in out
    assert "ret=-2" in names.out("gai", "nosuch.ts.test", "80", 0, 0, 0, 0)
    assert "ret=-2" in names.out("gai", "", "80", 0, 0, 0, 0)


def test_getaddrinfo_hosts_file_first(names):
    out = names.out("gai", "myhost", "80", AF_INET, STREAM, 0, AI_CANONNAME)
    assert "10.1.2.3 port=80" in out and "canon=myhost.example" in out
    # only an IPv4 line: no IPv6 answer from anywhere else
    assert "ret=-5" in names.out("gai", "myhost", "80", AF_INET6, STREAM, 0, 0)


def test_gethostbyname(names):
    assert names.out("ghbn", "peer") == f"name=peer.ts.test type=2 len=4 aliases= addrs={PEER4}\n"
    assert names.out("ghbn", "myhost") == \
        "name=myhost.example type=2 len=4 aliases=myhost,alias2 addrs=10.1.2.3\n"
    assert names.out("ghbn", "nosuch.ts.test") == "NULL h_errno=1\n"


def test_gethostbyname2(names):
    assert names.out("ghbn2", "peer", AF_INET6) == \
        f"name=peer.ts.test type=10 len=16 aliases= addrs={PEER6}\n"
    assert names.out("ghbn2", "me", AF_INET6) == "NULL h_errno=4\n"   # NO_DATA


def test_gethostbyname_r(names):
    assert names.out("ghbnr", "peer.ts.test.", 4096) == \
        f"ret=0 errno=0 name=peer.ts.test type=2 len=4 aliases= addrs={PEER4}\n"
    assert names.out("ghbnr", "peer", 16) == "ret=34 errno=34 NULL h_errno=-1\n"   # ERANGE
    assert names.out("ghbnr", "nosuch.ts.test", 4096) == "ret=0 errno=0 NULL h_errno=1\n"


def test_gethostbyname2_r(names):
    assert names.out("ghbn2r", "peer", AF_INET6, 4096) == \
        f"ret=0 errno=0 name=peer.ts.test type=10 len=16 aliases= addrs={PEER6}\n"


def test_gethostbyaddr(names):
    assert names.out("ghba", PEER4) == f"name=peer.ts.test type=2 len=4 aliases= addrs={PEER4}\n"
    assert names.out("ghba", PEER6).startswith("name=peer.ts.test type=10")
    assert names.out("ghba", "10.1.2.3").startswith("name=myhost.example type=2 len=4 "
                                                    "aliases=myhost,alias2")


def test_gethostbyaddr_r(names):
    assert names.out("ghbar", ME4, 4096) == \
        f"ret=0 errno=0 name=me.ts.test type=2 len=4 aliases= addrs={ME4}\n"
    assert names.out("ghbar", ME4, 12) == "ret=34 errno=34 NULL h_errno=-1\n"


def test_getnameinfo(names):
    assert names.out("gni", PEER4, 80, 0, 1025) == "ret=0 host=peer.ts.test serv=http\n"
    assert names.out("gni", PEER6, 443, 2, 1025) == "ret=0 host=peer.ts.test serv=443\n"
    assert names.out("gni", PEER4, 80, 0, 5) == "ret=-12 host=- serv=-\n"     # EAI_OVERFLOW


@pytest.mark.parametrize("cmd", ["resq", "ress", "resnq", "resns"])
def test_res_query_family(names, cmd):
    assert names.out(cmd, "peer.ts.test", 1) == f"len>0=1 h_errno=0 rcode=0 an=1 A={PEER4}\n"
    assert names.out(cmd, "peer", 28) == f"len>0=1 h_errno=0 rcode=0 an=1 AAAA={PEER6}\n"
    assert names.out(cmd, "nosuch.ts.test", 1) == "len>0=0 h_errno=1\n"        # HOST_NOT_FOUND
    assert names.out(cmd, "peer.ts.test", 15) == "len>0=0 h_errno=4\n"         # NO_DATA (MX)
    assert names.out(cmd, "2.0.64.100.in-addr.arpa", 12) == \
        "len>0=1 h_errno=0 rcode=0 an=1 PTR=peer.ts.test\n"


def test_res_querydomain(names):
    assert names.out("resqd", "peer", "ts.test", 1) == f"len>0=1 h_errno=0 rcode=0 an=1 A={PEER4}\n"


def test_res_send(names):
    assert names.out("ressend", "myhost", 1) == "len>0=1 h_errno=0 rcode=0 an=1 A=10.1.2.3\n"
    assert names.out("ressend", "nosuch.ts.test", 1) == "len>0=1 h_errno=0 rcode=3 an=0\n"


def test_odd_input_never_crashes(names):
    out = names.out("odd")
    assert out.endswith("ok: odd\n")
    assert out == names.glibc("odd").replace("\n", "\n") or "ok: odd" in out


def test_freeaddrinfo_takes_either_librarys_results(names):
    assert names.out("freemix", "peer") == "ok: freemix\n"


def test_inert_without_tailproxy_resolve(names):
    out = names.out("gai", "peer", "80", 0, STREAM, 0, 0, env={"TAILPROXY_RESOLVE": None})
    assert "ret=0" not in out          # the host's resolver knows no tailnet names


def test_verbose_line_per_lookup(names):
    r = names.run("test_resolve", "ghbn", "peer", env={"TAILPROXY_VERBOSE": "1"})
    how = "from the name table" if names.proxy.table else "by the name service"
    assert r.stderr == f"tailproxy: lookup peer: answered {how}\n"
    r = names.run("test_resolve", "ghbn", "nosuch.ts.test", env={"TAILPROXY_VERBOSE": "1"})
    assert r.stderr.startswith("tailproxy: lookup nosuch.ts.test: ") and \
        "table" not in r.stderr, r.stderr             # not held: the name service said so


def test_dead_proxy_is_a_temporary_failure_with_one_line(names, rundir):
    env = {"TAILPROXY_SOCKET": os.path.join(rundir, "nowhere", "channel")}
    # (a name the table does not hold: one the table holds is still answered)
    r = names.run("test_resolve", "gai", "unknown.example", "80", 0, STREAM, 0, 0, env=env)
    assert r.stdout.startswith("ret=-3 "), r.stdout               # EAI_AGAIN, no lookup elsewhere
    assert r.stderr.count("cannot reach the tailproxy proxy") == 1


# ---------------------------------------------------------------- placeholders

def test_placeholders_for_other_names(exitnames):
    out = exitnames.out("gai", "far.test", "80", 0, STREAM, 0, AI_CANONNAME)
    assert "240.0.0." in out and "canon=far.test" in out
    out6 = exitnames.out("gai", "far.test", "80", AF_INET6, STREAM, 0, 0)
    assert "fd74:7072:6f78::" in out6
    # stable for the run, and the reverse lookup gives the name back
    assert exitnames.out("gai", "far.test", "80", 0, STREAM, 0, AI_CANONNAME) == out
    ip = out.splitlines()[1].split()[5]
    assert exitnames.out("ghba", ip).startswith("name=far.test type=2")
    assert exitnames.out("gni", ip, 80, 0, 1025) == "ret=0 host=far.test serv=http\n"
    # tailnet names and hosts entries are still real addresses
    assert PEER4 in exitnames.out("gai", "peer", "80", 0, STREAM, 0, 0)
    assert "10.1.2.3" in exitnames.out("ghbn", "myhost")


def test_a_placeholder_once_given_is_answered_like_the_first_time(exitnames):
    """With the name table, from the table (published within 50 ms of the first answer)."""
    env = {"TAILPROXY_VERBOSE": "1"}
    first = exitnames.run("test_resolve", "gai", "again.test", "80", 0, STREAM, 0, AI_CANONNAME,
                          env=env)
    assert first.stderr == "tailproxy: lookup again.test: answered by the name service\n"
    time.sleep(0.5)
    again = exitnames.run("test_resolve", "gai", "again.test", "80", 0, STREAM, 0, AI_CANONNAME,
                          env=env)
    assert again.stdout == first.stdout and "240.0.0." in again.stdout
    how = "from the name table" if exitnames.proxy.table else "by the name service"
    assert again.stderr == f"tailproxy: lookup again.test: answered {how}\n"


def test_200_threads_resolve_distinct_names_at_once(exitnames):
    assert exitnames.out("threads", 200, "t") == "threads=200 ok=200 distinct=1\n"


def test_placeholder_from_one_process_connects_from_another(exitnames):
    first = exitnames.out("gai", "far.test", "-", AF_INET, STREAM, 0, 0)
    ip = first.splitlines()[1].split()[5]
    code = textwrap.dedent(f"""
        import socket, sys, threading
        lst = socket.socket(); lst.bind(({V4!r}, 0)); lst.listen(4)
        def echo():
            c, _ = lst.accept(); c.sendall(c.recv(10).upper()); c.close()
        threading.Thread(target=echo, daemon=True).start()
        s = socket.create_connection(({ip!r}, lst.getsockname()[1]), timeout=10)
        s.sendall(b"ping"); print(s.recv(10).decode())
    """)
    r = exitnames.run_cmd([sys.executable, "-c", code])
    assert r.stdout.strip() == "PING"


def test_unknown_placeholder_is_unreachable(exitnames):
    code = textwrap.dedent("""
        import errno, socket
        try:
            socket.create_connection(("240.255.0.7", 80), timeout=10)
        except OSError as e:
            print(errno.errorcode.get(e.errno))
    """)
    assert exitnames.run_cmd([sys.executable, "-c", code]).stdout.strip() == "EHOSTUNREACH"


# ---------------------------------------------------------------- port 53

UDP_CODE = textwrap.dedent("""
    import socket, struct, sys, select
    V4, mode = sys.argv[1], sys.argv[2]
    # a DNS server on the address the program asks: it must never get a packet
    trap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); trap.bind((V4, 53))
    ttrap = socket.socket(); ttrap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ttrap.bind((V4, 53)); ttrap.listen(4); ttrap.setblocking(False)
    def q(name, qid=0x1234):
        labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split("."))
        return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\\0" + struct.pack("!HH", 1, 1)
    def a_records(ans):
        return [".".join(map(str, ans[i + 12:i + 16])) for i in range(len(ans) - 15)
                if ans[i:i + 2] == b"\\xc0\\x0c" and ans[i + 2:i + 4] == b"\\0\\1"]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    if mode == "sendto":
        s.sendto(q("peer.ts.test"), (V4, 53)); ans, src = s.recvfrom(2048)
    elif mode == "connected":
        s.connect((V4, 53)); s.send(q("peer")); ans = s.recv(2048); src = (V4, 53)
    elif mode == "msg":
        s.sendmsg([q("peer")], [], 0, (V4, 53)); ans, _anc, _fl, src = s.recvmsg(2048)
    elif mode == "tcp":
        t = socket.create_connection((V4, 53), timeout=5); m = q("peer")
        t.sendall(struct.pack("!H", len(m)) + m)
        n = struct.unpack("!H", t.recv(2))[0]; ans = b""
        while len(ans) < n: ans += t.recv(n - len(ans))
        src = (V4, 53)
    r, _, _ = select.select([trap, ttrap], [], [], 0.2)
    print(src[0], src[1], ans[:2].hex(), ",".join(a_records(ans)), "trapped" if r else "clean")
""")


@pytest.mark.parametrize("mode", ["sendto", "connected", "msg", "tcp"])
def test_own_dns_queries_are_answered_locally(names, mode):
    out = names.run_cmd([sys.executable, "-c", UDP_CODE, V4, mode]).stdout.split()
    assert out == [V4, "53", "1234", PEER4, "clean"], out


@pytest.mark.skipif(not shutil.which("dig"), reason="dig is not installed")
@pytest.mark.parametrize("extra", [[], ["+tcp"]])
def test_dig_is_answered_by_the_name_service(names, extra):
    r = names.run_cmd(["dig", f"@{V4}", "+short", "+time=3", "+tries=1", *extra, "peer.ts.test"])
    assert r.stdout.split() == [PEER4]
    r = names.run_cmd(["dig", f"@{V4}", "+short", "+time=3", "+tries=1", *extra, "-x", PEER4])
    assert r.stdout.split() == ["peer.ts.test."]


def test_port_53_refused_without_a_responder(names):
    code = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" \
           "try:\n    s.sendto(b'x' * 20, ('198.18.0.1', 53))\n" \
           "except OSError as e:\n    print(e.errno)\n"
    r = names.run_cmd([sys.executable, "-c", code], env={"TAILPROXY_DNS_SERVER": ""})
    assert r.stdout.strip() == "101"          # ENETUNREACH
    assert "DNS query to 198.18.0.1:53 refused" in r.stderr


def test_other_udp_untouched(names):
    # bypassed, so not routed UDP either (without a routing table that would be an association:
    # test_preload_udp.py); not port 53, so not the name service's
    code = textwrap.dedent(f"""
        import socket
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(({V4!r}, 0))
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.sendto(b"hi", a.getsockname()); d, src = a.recvfrom(10)
        a.sendto(b"yo", src); d2, src2 = b.recvfrom(10)
        print(d.decode(), d2.decode(), src2 == a.getsockname())
    """)
    assert names.run_cmd([sys.executable, "-c", code], env={"TAILPROXY_BYPASS": f"{V4}/32"}
                         ).stdout.split() == ["hi", "yo", "True"]

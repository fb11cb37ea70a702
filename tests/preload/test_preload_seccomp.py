"""tailproxy-exec (preload/exec/): the preload's own connect() test programs run with no
LD_PRELOAD at all, their calls caught by the seccomp filter and handed over by the supervisor
through the same channel and proxy. Also: exit status and signals pass through, the probe,
fail-safe start, and port-53 traffic going to a responder. Under `make -C preload asan` the
supervisor is an ASan build."""
import os
import shutil
import subprocess

import pytest

from conftest import Runner, _sanitizer
from preload_env import UNREACH4, UNREACH6, V4, V6

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def exec_helper(build):
    path = os.environ.get("TAILPROXY_EXEC") or os.path.join(os.path.dirname(build[0]),
                                                            "tailproxy-exec")
    assert os.path.exists(path), f"{path} missing (make -C preload progs builds it)"
    return path


class SeccompRunner(Runner):
    """A test program under tailproxy-exec, with no LD_PRELOAD."""

    def __init__(self, helper, *a, **kw):
        super().__init__(*a, **kw)
        self.helper = helper

    def env(self, extra=None, channel=True):
        env = super().env(extra, channel)
        env.pop("LD_PRELOAD", None)
        env["TPTEST_SECCOMP"] = "1"     # tptest.h: how a relayed socket is recognised
        if _sanitizer() == "address":   # the programs' own leak checks are not ours
            env["ASAN_OPTIONS"] = "detect_leaks=0:exitcode=99:abort_on_error=0"
        return env

    def argv(self, prog, *args):
        path = os.path.join(self.testbin, prog)
        return self.prefix + [self.helper, path, path, *map(str, args)]

    def wrap(self, argv):
        return [self.helper, argv[0], *argv]


@pytest.fixture(scope="module", params=["parked", "full"])
def srun(request, exec_helper, build, netns, proxy):
    """parked: the fast path (TAILPROXY_PARK); full: the proxy parks and replies."""
    lib, testbin = build
    return SeccompRunner(exec_helper, netns, lib, testbin, proxy.channel,
                         proxy.park if request.param == "parked" else None)


@pytest.mark.parametrize("ip", [V4, V6])
def test_blocking_success(srun, ip):
    srun.run("test_connect", "ok", ip)


@pytest.mark.parametrize("ip", [V4, V6])
def test_blocking_refused(srun, ip):
    srun.run("test_connect", "refused", ip)


@pytest.mark.parametrize("ip", [UNREACH4, UNREACH6])
def test_blocking_unreachable_gives_the_real_errno(srun, ip):
    srun.run("test_connect", "unreach", ip, 80)


def test_v4_mapped_destination(srun):
    srun.run("test_connect", "mapped", V4)


@pytest.mark.parametrize("ip", [V4, V6])
def test_socket_stays_the_programs(srun, ip):
    srun.run("test_connect", "opts", ip)


def test_udp_connect_untouched(srun):
    srun.run("test_connect", "udp", V4)


@pytest.mark.parametrize("ip", [V4, V6])
@pytest.mark.parametrize("how", ["poll", "epoll"])
def test_nonblocking_in_progress_then_connected(srun, ip, how):
    srun.run("test_nonblock", "ok", ip, how)


@pytest.mark.parametrize("how", ["poll", "epoll"])
def test_nonblocking_refused(srun, how):
    srun.run("test_nonblock", "refused", V4, how)


@pytest.mark.parametrize("ip", [UNREACH4, UNREACH6])
@pytest.mark.parametrize("how", ["poll", "epoll"])
def test_nonblocking_unreachable_so_error_is_the_real_errno(srun, ip, how):
    """The kernel shows ECONNREFUSED; getsockopt(SO_ERROR), trapped, gives EHOSTUNREACH."""
    srun.run("test_nonblock", "unreach", ip, how)


def test_nonblocking_ealready_while_parked(srun):
    srun.run("test_nonblock", "again", V4)


def test_nonblocking_stress(srun):
    srun.run("test_nonblock", "stress", V4, 40, timeout=120)


def test_no_proxy_gives_enetdown(exec_helper, build, netns, rundir):
    lib, testbin = build
    r = SeccompRunner(exec_helper, netns, lib, testbin,
                      os.path.join(rundir, "no-such-dir", "channel"))
    r.run("test_connect", "netdown", V4)


# ---- the helper itself ----------------------------------------------------------------------

def test_probe_says_available(exec_helper):
    assert subprocess.run([exec_helper, "--probe"]).returncode == 0


def test_exit_status_and_signal_pass_through(exec_helper):
    assert subprocess.run([exec_helper, "/bin/sh", "sh", "-c", "exit 7"]).returncode == 7
    cp = subprocess.run([exec_helper, "/bin/sh", "sh", "-c", "kill -TERM $$"])
    assert cp.returncode == -15      # died of the same signal, as the program did
    cp = subprocess.run([exec_helper, "/no/such/program", "x"], capture_output=True, text=True)
    assert cp.returncode == 127 and "command not found" in cp.stderr


def test_signal_to_the_helper_reaches_the_program(exec_helper, tmp_path):
    mark = tmp_path / "got"
    p = subprocess.Popen([exec_helper, "/bin/sh", "sh", "-c",
                          f"trap 'echo term > {mark}; exit 3' TERM; echo up; "
                          f"while :; do sleep 0.05; done"],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert p.stdout.readline() == b"up\n"
    p.terminate()
    assert p.wait(10) == 3
    assert mark.read_text() == "term\n"


def test_no_filter_runs_the_program_with_one_line(exec_helper, build, netns):
    """Where seccomp() is refused the program still runs (unintercepted), after one line."""
    deny = os.path.join(build[1], "..", "deny_seccomp")
    src = os.path.join(ROOT, "tests", "e2e", "seccomp_src", "deny_seccomp.c")
    subprocess.run([os.environ.get("CC", "gcc"), "-o", deny, src], check=True)
    cp = subprocess.run([deny, exec_helper, "/bin/sh", "sh", "-c", "echo ran"],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and cp.stdout == "ran\n"
    assert cp.stderr.count("seccomp user notification unavailable") == 1, cp.stderr
    assert subprocess.run([deny, exec_helper, "--probe"], capture_output=True).returncode == 1


def test_port_53_goes_to_the_responder(exec_helper, build, netns, proxy):
    """A UDP query to port 53 of any address (connect()+send() and sendto()) reaches
    TAILPROXY_DNS_SERVER instead; nothing is sent to the address the program named."""
    code = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b"query-sendto", ("198.18.0.1", 53)); print(s.recv(100).decode())
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(5)
c.connect(("198.18.0.1", 53)); c.send(b"query-connect"); print(c.recv(100).decode())
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); m.settimeout(5)
m.sendmsg([b"query-", b"sendmsg"], [], 0, ("198.18.0.1", 53)); print(m.recv(100).decode())
"""
    responder = subprocess.Popen(netns + ["python3", "-c", r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
for _ in range(3):
    data, addr = s.recvfrom(100); s.sendto(b"answer:" + data, addr)
"""], stdout=subprocess.PIPE, text=True)
    try:
        port = int(responder.stdout.readline())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILPROXY_")}
        env.pop("LD_PRELOAD", None)
        env.update(TAILPROXY_SOCKET=proxy.channel, TAILPROXY_RESOLVE="1",
                   TAILPROXY_DNS_SERVER=f"127.0.0.1:{port}")
        cp = subprocess.run(netns + [exec_helper, "/usr/bin/python3", "python3", "-c", code],
                            env=env, capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.split() == ["answer:query-sendto", "answer:query-connect",
                                     "answer:query-sendmsg"]
    finally:
        responder.kill()
        responder.wait()


# ---- the preload's exec hook (execstatic.c) -------------------------------------------------

SECCOMP_STATUS_C = r"""
#include <stdio.h>
#include <string.h>
int main(void) {
	char b[256]; FILE *f = fopen("/proc/self/status", "r");
	while (f && fgets(b, sizeof(b), f))
		if (!strncmp(b, "Seccomp:", 8)) { printf("%d\n", atoi(b + 8)); return 0; }
	return 1;
}
"""


@pytest.fixture(scope="module")
def status_progs(tmp_path_factory):
    """A static and a dynamic program that print their seccomp mode (2: filtered)."""
    d = tmp_path_factory.mktemp("seccomp-status")
    src = d / "status.c"
    src.write_text("#include <stdlib.h>\n" + SECCOMP_STATUS_C)
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, "-static", "-o", str(d / "static"), str(src)], check=True)
    subprocess.run([cc, "-o", str(d / "dynamic"), str(src)], check=True)
    return str(d / "static"), str(d / "dynamic")


def test_preload_runs_static_children_under_the_helper(run, exec_helper, status_progs):
    static, dynamic = status_progs
    env = {"TAILPROXY_EXEC": exec_helper}
    cp = run.run_cmd(["sh", "-c", f"{static}; {dynamic}; exec {static}"], env=env)
    assert cp.stdout.split() == ["2", "0", "2"]         # static: filtered; dynamic: preload only
    cp = run.run_cmd(["python3", "-c", "import subprocess, sys; "
                      f"subprocess.run([{static!r}]); subprocess.run({static!r}, shell=True); "
                      f"import os; os.execvp({os.path.basename(static)!r}, ['x'])"],
                     env=dict(env, PATH=os.path.dirname(static) + ":/usr/bin:/bin"))
    assert cp.stdout.split() == ["2", "2", "2"]
    cp = run.run_cmd(["sh", "-c", static])              # no TAILPROXY_EXEC: as before
    assert cp.stdout.split() == ["0"]


def test_exec_hook_leaves_setuid_programs_alone(run, exec_helper, status_progs, tmp_path):
    """no_new_privs would strip a setuid program's privileges: it is run as it is."""
    suid = tmp_path / "suid-static"
    shutil.copy(status_progs[0], suid)
    os.chmod(suid, 0o4755)
    cp = run.run_cmd(["sh", "-c", str(suid)], env={"TAILPROXY_EXEC": exec_helper})
    assert cp.stdout.split() == ["0"]


def test_bad_pointers_get_the_kernels_efault(exec_helper, netns, proxy):
    """Addresses the supervisor cannot read: connect() and a port-53 sendto() fail with EFAULT,
    as without the filter; nothing hangs."""
    code = r"""
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket()
r = libc.syscall(42, s.fileno(), ctypes.c_void_p(8), 16)              # connect(fd, bad, 16)
print(r, ctypes.get_errno())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
addr = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(53), socket.inet_aton("198.18.0.1"))
r = libc.syscall(44, u.fileno(), ctypes.c_void_p(8), 12, 0, addr, 16)  # sendto(bad buf)
print(r, ctypes.get_errno())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILPROXY_")}
    env.pop("LD_PRELOAD", None)
    env.update(TAILPROXY_SOCKET=proxy.channel, TAILPROXY_RESOLVE="1",
               TAILPROXY_DNS_SERVER="127.0.0.1:9")
    cp = subprocess.run(netns + [exec_helper, "/usr/bin/python3", "python3", "-c", code],
                        env=env, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["-1", "14", "-1", "14"]       # EFAULT


# ---- static resolvers: answers show the nameserver they asked (dnsrecv.c) -------------------

# glibc: res_query() and getaddrinfo() of NAME, the one nameserver 198.18.0.1:53 (whatever
# resolv.conf says). glibc's res_send connects its socket and reads with recvfrom(&from).
GLIBC_RESOLVER_C = r"""
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <resolv.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
	unsigned char ans[512]; char ip[64]; struct addrinfo hints, *ai; int n;
	if (argc != 2 || res_init() != 0) return 2;
	_res.nscount = 1;
	_res.nsaddr_list[0].sin_family = AF_INET;
	_res.nsaddr_list[0].sin_port = htons(53);
	inet_pton(AF_INET, "198.18.0.1", &_res.nsaddr_list[0].sin_addr);
	n = res_query(argv[1], ns_c_in, ns_t_a, ans, sizeof(ans));
	if (n < 16) { printf("res_query failed\n"); return 1; }
	inet_ntop(AF_INET, ans + n - 4, ip, sizeof(ip));          /* the last answer's rdata */
	printf("%s\n", ip);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_INET; hints.ai_socktype = SOCK_STREAM;
	if ((n = getaddrinfo(argv[1], "80", &hints, &ai)) != 0) { printf("gai: %s\n", gai_strerror(n)); return 1; }
	inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ip, sizeof(ip));
	printf("%s\n", ip);
	freeaddrinfo(ai);
	return 0;
}
"""

# musl: getaddrinfo() of NAME through resolv.conf (RES_CONF: musl reads only /etc/resolv.conf,
# so the nameserver is the host's). musl's res_msend sends with sendto() on an unconnected
# socket and drops any answer whose source is not a nameserver it asked.
MUSL_RESOLVER_C = r"""
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
	struct addrinfo hints, *ai; char ip[64]; int n;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_INET; hints.ai_socktype = SOCK_STREAM;
	if (argc != 2) return 2;
	if ((n = getaddrinfo(argv[1], "80", &hints, &ai)) != 0) { printf("gai: %s\n", gai_strerror(n)); return 1; }
	inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, ip, sizeof(ip));
	printf("%s\n%s\n", ip, ip);
	freeaddrinfo(ai);
	return 0;
}
"""

# The check such resolvers make, spelled out for both calls: an A query for NAME sent with
# sendto() to 198.18.0.1:53 on an unconnected socket, the answer read with recvfrom() (a
# blocking socket, SO_RCVTIMEO) and then recvmsg() (non-blocking, poll()), each refused unless
# its source is 198.18.0.1:53; prints the answer's address each time.
CHECKING_RESOLVER_C = r"""
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <fcntl.h>
#include <poll.h>
#include <resolv.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
static int ask(const char *name, int use_recvmsg) {
	unsigned char q[512], ans[512]; char ip[64];
	struct sockaddr_in ns = {.sin_family = AF_INET, .sin_port = htons(53)}, from;
	socklen_t fl = sizeof(from); struct timeval tv = {5, 0}; ssize_t n;
	int s = socket(AF_INET, SOCK_DGRAM, 0), qn = res_mkquery(ns_o_query, name, ns_c_in, ns_t_a, NULL, 0, NULL, q, sizeof(q));
	inet_pton(AF_INET, "198.18.0.1", &ns.sin_addr);
	if (s < 0 || qn < 0 || sendto(s, q, qn, 0, (struct sockaddr *)&ns, sizeof(ns)) != qn) return 1;
	memset(&from, 0, sizeof(from));
	if (!use_recvmsg) {
		setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		n = recvfrom(s, ans, sizeof(ans), 0, (struct sockaddr *)&from, &fl);
	} else {
		struct iovec iov[2] = {{ans, 12}, {ans + 12, sizeof(ans) - 12}};
		struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = iov, .msg_iovlen = 2};
		struct pollfd p = {.fd = s, .events = POLLIN};
		fcntl(s, F_SETFL, O_NONBLOCK);
		poll(&p, 1, 5000);
		n = recvmsg(s, &mh, 0);
		fl = mh.msg_namelen;
	}
	if (n < 16) { printf("no answer\n"); return 1; }
	if (fl != sizeof(from) || from.sin_family != AF_INET || from.sin_port != htons(53) ||
	    from.sin_addr.s_addr != ns.sin_addr.s_addr) {
		inet_ntop(AF_INET, &from.sin_addr, ip, sizeof(ip));
		printf("answer from %s:%d: dropped\n", ip, ntohs(from.sin_port));
		return 1;
	}
	inet_ntop(AF_INET, ans + n - 4, ip, sizeof(ip));
	printf("%s\n", ip);
	return 0;
}
int main(int argc, char **argv) {
	return argc != 2 || ask(argv[1], 0) || ask(argv[1], 1);
}
"""

# A fake DNS server: every A question gets 100.64.0.7; others, no answer.
FAKE_DNS = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    q, addr = s.recvfrom(2048)
    end = 12
    while q[end]:
        end += 1 + q[end]
    qtype = struct.unpack("!H", q[end + 1:end + 3])[0]
    hdr = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if qtype == 1 else 0, 0, 0)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("100.64.0.7") if qtype == 1 else b""
    s.sendto(hdr + q[12:end + 5] + rr, addr)
"""

RESOLVERS = {"glibc": ("gcc", GLIBC_RESOLVER_C), "musl": ("musl-gcc", MUSL_RESOLVER_C),
             "checking": ("gcc", CHECKING_RESOLVER_C)}


@pytest.fixture(scope="module", params=sorted(RESOLVERS))
def static_resolver(request, tmp_path_factory):
    """A static resolver program (musl: musl-gcc, from Debian's musl-tools, is required)."""
    cc, code = RESOLVERS[request.param]
    assert shutil.which(cc), f"{cc} missing (apt-get install musl-tools)"
    d = tmp_path_factory.mktemp("static-resolver")
    (d / "resolver.c").write_text(code)
    cp = subprocess.run([cc, "-static", "-o", str(d / "resolver"), str(d / "resolver.c")],
                        capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    return str(d / "resolver")


def test_static_resolver_accepts_the_responders_answers(exec_helper, netns, proxy,
                                                        static_resolver):
    """The answers come from the responder's loopback port; a static resolver is shown the
    nameserver it asked, so it resolves (without the rewrite, musl's getaddrinfo() and the
    checking program drop every answer; glibc 2.36 happens not to check)."""
    responder = subprocess.Popen(netns + ["python3", "-c", FAKE_DNS], stdout=subprocess.PIPE,
                                 text=True)
    try:
        port = int(responder.stdout.readline())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILPROXY_")}
        env.pop("LD_PRELOAD", None)
        env.update(TAILPROXY_SOCKET=proxy.channel, TAILPROXY_RESOLVE="1",
                   TAILPROXY_DNS_SERVER=f"127.0.0.1:{port}", LOCALDOMAIN="")
        cp = subprocess.run(netns + [exec_helper, static_resolver, "resolver", "peer.example."],
                            env=env, capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert cp.stdout.split() == ["100.64.0.7", "100.64.0.7"]
    finally:
        responder.kill()
        responder.wait()


# No answer: a blocking recvfrom() on a redirected socket gives EAGAIN once SO_RCVTIMEO passes,
# and EINTR when a signal (no SA_RESTART) interrupts it, as the kernel's would; then a
# non-blocking recvmsg() gives EAGAIN at once. Prints the three errnos.
WAITING_RESOLVER_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
static void on_alarm(int sig) { (void)sig; }
int main(void) {
	struct sockaddr_in ns = {.sin_family = AF_INET, .sin_port = htons(53)}, from;
	socklen_t fl = sizeof(from); struct timeval tv = {1, 0}, none = {0, 0}; char b[512];
	struct iovec iov = {b, sizeof(b)};
	struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1};
	struct sigaction sa; int s = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&sa, 0, sizeof(sa)); sa.sa_handler = on_alarm; sigaction(SIGALRM, &sa, NULL);
	inet_pton(AF_INET, "198.18.0.1", &ns.sin_addr);
	if (sendto(s, "no answer", 9, 0, (struct sockaddr *)&ns, sizeof(ns)) != 9) return 1;
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	printf("%d\n", recvfrom(s, b, sizeof(b), 0, (struct sockaddr *)&from, &fl) < 0 ? errno : 0);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
	alarm(1);
	printf("%d\n", recvfrom(s, b, sizeof(b), 0, (struct sockaddr *)&from, &fl) < 0 ? errno : 0);
	printf("%d\n", recvmsg(s, &mh, MSG_DONTWAIT) < 0 ? errno : 0);
	return 0;
}
"""


def test_redirected_receive_times_out_and_is_interrupted(exec_helper, netns, proxy, tmp_path):
    src = tmp_path / "waiting.c"
    src.write_text(WAITING_RESOLVER_C)
    subprocess.run(["gcc", "-static", "-o", str(tmp_path / "waiting"), str(src)], check=True,
                   capture_output=True)
    silent = subprocess.Popen(netns + ["python3", "-c", r"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        port = int(silent.stdout.readline())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILPROXY_")}
        env.pop("LD_PRELOAD", None)
        env.update(TAILPROXY_SOCKET=proxy.channel, TAILPROXY_RESOLVE="1",
                   TAILPROXY_DNS_SERVER=f"127.0.0.1:{port}")
        cp = subprocess.run(netns + [exec_helper, str(tmp_path / "waiting"), "waiting"],
                            env=env, capture_output=True, text=True, timeout=30)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert cp.stdout.split() == ["11", "4", "11"]          # EAGAIN, EINTR, EAGAIN
    finally:
        silent.kill()
        silent.wait()

"""Drivers for the libtailproxy.so test programs (preload/tests/*.c).

Everything runs inside a network namespace of its own (never the host's network):
a `unshare --net` holder process, entered with nsenter for the proxy and every
test program. Inside it:

- lo up, plus non-loopback addresses on lo: 198.18.0.1 and 2001:db8::1 (proxied
  destinations the direct dialer reaches), 198.18.0.2 (a TAILPROXY_BYPASS target);
- 198.18.99.0/24 and 2001:db8:99::/48 are `unreachable` routes (EHOSTUNREACH).

The proxy is the real one, `python -m tailproxy.proxy --no-tailnet --channel PATH`
(TAILPROXY_TEST_PROXY overrides the command; `{channel}` in it is replaced).

Environment (set by `make -C preload test|asan|valgrind`, else built here):
TAILPROXY_LIB, TAILPROXY_TESTBIN, TAILPROXY_SAN=address, TAILPROXY_VALGRIND=1.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preload_env import SETUP  # noqa: E402
from timedio import readline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRELOAD = os.path.join(ROOT, "preload")


def _sanitizer() -> str:
    return os.environ.get("TAILPROXY_SAN", "")


def _valgrind() -> bool:
    return os.environ.get("TAILPROXY_VALGRIND") == "1"


@pytest.fixture(scope="session")
def build():
    """(lib path, test program dir): from make, or built here into a temp dir."""
    lib, testbin = os.environ.get("TAILPROXY_LIB"), os.environ.get("TAILPROXY_TESTBIN")
    if lib and testbin:
        yield lib, testbin
        return
    if not shutil.which(os.environ.get("CC", "gcc")):
        pytest.skip("no C compiler to build libtailproxy.so")
    out = tempfile.mkdtemp(prefix="tailproxy-preload-build-")
    try:
        subprocess.run(["make", "-s", "-C", PRELOAD, f"OUT={out}", "progs"], check=True)
        yield os.path.join(out, "libtailproxy.so"), os.path.join(out, "tests")
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def netns():
    """A fresh network namespace; yields the nsenter prefix for commands in it."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root with unshare/nsenter for a private network namespace")
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "100000"])
    try:
        ns = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):       # unshare execs sleep once the namespace exists
            try:
                if os.readlink(ns) != os.readlink("/proc/self/ns/net"):
                    break
            except OSError:
                pass
            time.sleep(0.01)
        prefix = ["nsenter", f"--net={ns}", "--"]
        for cmd in SETUP:
            subprocess.run(prefix + shlex.split(cmd), check=True)
        yield prefix
    finally:
        holder.kill()
        holder.wait()


class Proxy:
    def __init__(self, prefix, channel, log):
        self.prefix, self.channel, self.log_path = prefix, channel, log
        self.proc = None

    def start(self):
        cmd = os.environ.get("TAILPROXY_TEST_PROXY")
        if cmd:
            argv = [a.replace("{channel}", self.channel) for a in shlex.split(cmd)]
        else:
            argv = [sys.executable, "-m", "tailproxy.proxy", "--no-tailnet",
                    "--channel", self.channel, "--verbose"]
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.prefix + argv, stdout=subprocess.PIPE, stderr=self.logf,
                                     env=env)
        line = readline(self.proc.stdout, 60)
        # "ready park=P4,P6": the parking ports for the preload's non-blocking fast path
        self.park = line.split(b"park=", 1)[1].strip().decode() if b"park=" in line else None
        if b"ready" not in line:
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r}; see {self.log_path}:\n"
                               + open(self.log_path, errors="replace").read()[-3000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.proc.stdout.close()
            self.logf.close()


def _proxy_available() -> bool:
    if os.environ.get("TAILPROXY_TEST_PROXY"):
        return True
    sys.path.insert(0, os.path.join(ROOT, "src"))
    try:
        return importlib.util.find_spec("tailproxy.proxy") is not None
    except ImportError:
        return False
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="session")
def rundir():
    d = tempfile.mkdtemp(prefix="tailproxy-preload-")
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def proxy(netns, rundir):
    if not _proxy_available():
        pytest.skip("the proxy (tailproxy.proxy) is not available")
    p = Proxy(netns, os.path.join(rundir, "channel"), os.path.join(rundir, "proxy.log"))
    p.start()
    yield p
    p.stop()


class Runner:
    """Runs one test program in the namespace with the preload."""

    def __init__(self, prefix, lib, testbin, channel, park=None):
        self.prefix, self.lib, self.testbin, self.channel = prefix, lib, testbin, channel
        self.park = park

    def preload_value(self) -> str:
        if _sanitizer() == "address":
            asan = subprocess.run([os.environ.get("CC", "gcc"), "-print-file-name=libasan.so"],
                                  capture_output=True, text=True).stdout.strip()
            return f"{asan}:{self.lib}"
        return self.lib

    def env(self, extra=None, channel=True):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILPROXY_")}
        env["LD_PRELOAD"] = self.preload_value()
        if channel:
            env["TAILPROXY_SOCKET"] = self.channel
            if self.park:
                env["TAILPROXY_PARK"] = self.park
        if _sanitizer() == "address":
            env["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=99:abort_on_error=0"
        env.update(extra or {})
        return {k: v for k, v in env.items() if v is not None}

    def argv(self, prog, *args):
        argv = [os.path.join(self.testbin, prog), *map(str, args)]
        if _valgrind():
            argv = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                    "--errors-for-leak-kinds=definite", "--trace-children=yes",
                    "--child-silent-after-fork=no"] + argv
        return self.prefix + argv

    def wrap(self, argv):
        """argv as this runner intercepts any program (the preload: through the environment)."""
        return list(argv)

    def run_cmd(self, argv, env=None, channel=True, timeout=60, check=True):
        """Any program (no valgrind wrapping), e.g. python3 -c ..."""
        env = self.env(env, channel)
        if "ASAN_OPTIONS" in env:
            env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0")
        r = subprocess.run(self.prefix + list(argv), env=env, capture_output=True, text=True,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, (f"{argv}: exit {r.returncode}\n"
                                       f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r

    def run(self, prog, *args, env=None, channel=True, timeout=60, check=True):
        r = subprocess.run(self.argv(prog, *args), env=self.env(env, channel), capture_output=True,
                           text=True, timeout=timeout * (5 if _valgrind() else 1))
        if check:
            assert r.returncode == 0, (f"{prog} {' '.join(map(str, args))}: exit {r.returncode}\n"
                                       f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r


@pytest.fixture(scope="session")
def run(build, netns, proxy):
    lib, testbin = build
    return Runner(netns, lib, testbin, proxy.channel, proxy.park)


@pytest.fixture(scope="session")
def run_noproxy(build, netns, rundir):
    """A runner whose channel path has no proxy behind it."""
    lib, testbin = build
    return Runner(netns, lib, testbin, os.path.join(rundir, "no-such-dir", "channel"))

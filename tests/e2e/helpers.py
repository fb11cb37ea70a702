"""Running tailproxy and test programs from end-to-end tests."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

from timedio import readline  # noqa: F401  (tests/timedio.py; re-exported for the e2e tests)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tailproxy_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tailproxy", *args]


def run_tp(*args: str, input: str | None = None, timeout: float = 120, env: dict | None = None,
           check: bool = False) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    if env:
        e.update(env)
    cp = subprocess.run(tailproxy_argv(*args), input=input, capture_output=True, text=True,
                        timeout=timeout, env=e)
    if check and cp.returncode != 0:
        raise AssertionError(f"tailproxy {' '.join(args)} exited {cp.returncode}\n"
                             f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
    return cp


def py(code: str) -> list[str]:
    """argv running a Python snippet (dedented)."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def procs_mentioning(text: str) -> list[int]:
    """pids of the processes whose command line contains `text`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def in_netns(netns: str, argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", netns, *argv], **kw)


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@contextlib.contextmanager
def direct_link_to_the_internet(testnet, local="198.19.0.9"):
    """For the length of the block, a point-to-point link from this (client) host to the
    internet host, so that a direct dial from here reaches it too and the server can tell the
    two paths apart by the client address it sees. Only in the testnet's namespaces."""
    inet_ns, inet_ip = testnet["internet"]["netns"], testnet["internet"]["ipv4"]
    _ip("link", "add", "tprt0", "type", "veth", "peer", "name", "tprt1", "netns", inet_ns)
    try:
        _ip("addr", "add", local, "peer", inet_ip, "dev", "tprt0")
        _ip("link", "set", "tprt0", "up")
        _ip("-n", inet_ns, "addr", "add", inet_ip, "peer", local, "dev", "tprt1")
        _ip("-n", inet_ns, "link", "set", "tprt1", "up")
        yield local
    finally:
        _ip("link", "del", "tprt0", check=False)      # takes its peer in the internet host along

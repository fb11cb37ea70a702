"""Network namespaces and links for the testnet, via iproute2.

All links are created with `ip -n NS link add ... peer ... netns OTHER`, so no interface ever
exists in the root namespace, and no namespace gets a default route. Namespace names are
`<run id>-<host>` with run id `tn<pid>`, which lets a later run find and remove the leftovers
of a run that was SIGKILLed (its pid is gone).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

from .procs import PartFailed, run

_STALE_RE = re.compile(r"^tn(\d+)-[a-z0-9]+$")


def list_netns() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def kill_netns_pids(ns: str, grace: float = 2.0) -> None:
    """SIGTERM then SIGKILL every process still inside ns (e.g. daemons the user's command left)."""
    pids = [p for p in netns_pids(ns) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in netns_pids(ns) if p != os.getpid()]
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_stale() -> list[str]:
    """Delete namespaces of earlier runs whose testnet process no longer exists."""
    removed = []
    for ns in list_netns():
        m = _STALE_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            kill_netns_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            removed.append(ns)
    return removed


def prune_stale_dirs(tmp_root: str) -> list[str]:
    """Remove run folders (tn<pid>-*) of dead runs; only ones that look like ours (logs/ inside)."""
    removed = []
    try:
        names = os.listdir(tmp_root)
    except OSError:
        return removed
    for name in names:
        m = re.match(r"^tn(\d+)-[a-z0-9_]+$", name)
        path = os.path.join(tmp_root, name)
        if m and not _pid_alive(int(m.group(1))) and os.path.isdir(os.path.join(path, "logs")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def current_is(ns: str) -> bool:
    """True if this process runs in network namespace `ns` (e.g. a test's guard that it really is
    on the testnet's client host before it sends anything)."""
    try:
        a, b = os.stat(f"/run/netns/{ns}"), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def wrap(ns: str, binds: dict[str, str], argv: list[str]) -> list[str]:
    """argv to run `argv` in netns `ns` inside a private mount namespace where each
    target path in binds (e.g. /etc/resolv.conf) is overlaid by its source file."""
    n = len(binds)
    script = " && ".join(f'mount --bind "${{{i + 1}}}" "${{{n + i + 1}}}"' for i in range(n))
    script = (script + " && " if script else "") + f'shift {2 * len(binds)} && exec "$@"'
    return (["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
             "sh", "-c", script, "sh"] + list(binds.values()) + list(binds.keys()) + list(argv))


class Netns:
    """Creates namespaces and links for one run; delete_all() undoes everything."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.created: list[str] = []

    def name(self, host: str) -> str:
        return f"{self.run_id}-{host}"

    def add(self, host: str) -> str:
        ns = self.name(host)
        run(f"netns {host}", ["ip", "netns", "add", ns])
        self.created.append(ns)
        self.ip(ns, "link", "set", "lo", "up")
        return ns

    def ip(self, ns: str, *args: str) -> None:
        run(f"netns {ns}", ["ip", "-n", ns, *args])

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair born inside ns_a with its peer moved straight into ns_b."""
        self.ip(ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)

    def bridge(self, ns: str, name: str) -> None:
        self.ip(ns, "link", "add", name, "type", "bridge")
        self.ip(ns, "link", "set", name, "up")

    def up(self, ns: str, dev: str, master: str | None = None) -> None:
        if master:
            self.ip(ns, "link", "set", dev, "master", master)
        self.ip(ns, "link", "set", dev, "up")

    def addr(self, ns: str, dev: str, addr: str, peer: str | None = None) -> None:
        args = ["addr", "add", addr] + (["peer", peer] if peer else []) + ["dev", dev]
        self.ip(ns, *args)

    def delete_all(self) -> list[str]:
        """Kill what is left inside, delete the namespaces; returns names that would not go."""
        failed = []
        for ns in reversed(self.created):
            kill_netns_pids(ns)
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if r.returncode != 0 and ns in list_netns():
                failed.append(ns)
        self.created = [ns for ns in self.created if ns in failed]
        return failed


def check_tools() -> None:
    for tool in ("ip", "unshare", "mount", "openssl"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            raise PartFailed("setup", f"`{tool}` is not on PATH")
    if os.geteuid() != 0:
        raise PartFailed("setup", "must run as root (network namespaces)")

"""How long the agent lives: while a launcher is attached, `up` holds it, or a process that ran
under tailproxy is alive; then `linger` seconds more.

Processes are tracked by pidfd. The preload sends one datagram to the agent's registration
socket when it loads into a process image and in every fork child (preload/src/register.c);
that socket has SO_PASSCRED, so the kernel attaches the sender's real pid and uid
(SCM_CREDENTIALS) and nothing in the datagram is trusted. The agent opens a pidfd for the pid,
which becomes readable when the process ends, even after the pid is reused. Why this over a
cgroup or a seccomp listener: it needs no cgroup delegation, no filter slot (one per task, which
a nested tailproxy or a sandbox may already hold), and it covers daemonized descendants, which
keep the preload through fork and exec.
"""
from __future__ import annotations

import asyncio
import math
import os
import socket
import struct
from typing import Callable

MAX_TRACKED = 4096          # pidfds per agent: a fork bomb must not exhaust the agent's fds
SETTLE_S = 0.25             # a fork child registers itself after fork() returns in the parent,
                            # which may exit first: the agent waits this long even with linger 0
_UCRED = struct.Struct("=iII")   # struct ucred: pid, uid, gid


def decode_credentials(ancdata: list) -> tuple[int, int] | None:
    """(pid, uid) from the SCM_CREDENTIALS of a received datagram, None without them."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and \
                len(data) >= _UCRED.size:
            pid, uid, _gid = _UCRED.unpack_from(data)
            return pid, uid
    return None


class PidfdBudget:
    """The pidfds every program's Lifetime on one agent may hold together (MAX_TRACKED)."""

    def __init__(self, limit: int = MAX_TRACKED):
        self.limit, self.used = limit, 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used = max(0, self.used - 1)


class Lifetime:
    """Holds, tracked processes and the linger timer; calls `on_idle` once when it expires."""

    def __init__(self, linger: float, on_idle: Callable[[], None],
                 log: Callable[[str], None] = lambda m: None, max_tracked: int = MAX_TRACKED,
                 settle: float = SETTLE_S, budget: PidfdBudget | None = None):
        self.linger = linger
        self.on_idle = on_idle
        self.log = log
        self.max_tracked = max_tracked
        self.budget = budget or PidfdBudget(max_tracked)    # shared by an agent's programs
        self.settle = settle
        self.holds: set[object] = set()
        self.tracked: dict[int, int] = {}       # pid -> pidfd
        self._timer: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        self._warned_full = False
        self.idle_fired = False

    # -- holds ---------------------------------------------------------------------------
    def hold(self, token: object) -> None:
        self.holds.add(token)
        self._changed()

    def release(self, token: object) -> None:
        self.holds.discard(token)
        self._changed()

    def set_linger(self, seconds: float) -> None:
        """`tailproxy up --linger`: a new linger for a running agent, counted from now."""
        self.linger = seconds
        if self._timer:
            self._timer.cancel()
            self._timer = None
        self._changed()

    @property
    def busy(self) -> bool:
        return bool(self.holds or self.tracked)

    # -- processes -----------------------------------------------------------------------
    def track(self, pid: int) -> bool:
        """Watch `pid` until it ends; False when it is gone already or the table is full."""
        if pid in self.tracked:
            return True
        full = len(self.tracked) >= self.max_tracked
        if full or not self.budget.take():
            if not self._warned_full:
                limit = self.max_tracked if full else self.budget.limit
                self.log(f"tracking {limit} processes already; pid {pid} and later "
                         "ones do not keep the agent up")
                self._warned_full = True
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:         # gone already, or out of fds
            self.budget.give()
            return False
        self.tracked[pid] = fd
        asyncio.get_running_loop().add_reader(fd, self._ended, pid)
        self._changed()
        return True

    def _ended(self, pid: int) -> None:
        fd = self.tracked.pop(pid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
            self.budget.give()
            self._warned_full = False
        self._changed()

    def open_registration(self, path: str) -> None:
        """The datagram socket the preload registers processes on (0600 in the run dir)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK |
                          socket.SOCK_CLOEXEC)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        old = os.umask(0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        self._sock = s
        asyncio.get_running_loop().add_reader(s.fileno(), self.read_registrations)

    def read_registrations(self) -> None:
        """Every datagram waiting: each one tracks its sender, if it runs as our uid."""
        while self._sock is not None:
            try:
                _data, anc, _flags, _addr = self._sock.recvmsg(64, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            cred = decode_credentials(anc)
            if cred and cred[1] == os.getuid() and cred[0] > 0:
                self.track(cred[0])

    # -- the timer -----------------------------------------------------------------------
    def _changed(self) -> None:
        if self.busy or self.idle_fired:
            if self._timer:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is None and not math.isinf(self.linger):
            delay = max(self.linger, self.settle)
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.read_registrations()    # a child that registered meanwhile keeps the agent
        if self.busy or self.idle_fired:
            return
        self.idle_fired = True
        self.on_idle()

    def start(self) -> None:
        """Start counting: an agent nobody attaches to lingers, then stops."""
        self._changed()

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer:
            self._timer.cancel()
            self._timer = None
        for fd in self.tracked.values():
            loop.remove_reader(fd)
            os.close(fd)
            self.budget.give()
        self.tracked.clear()
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

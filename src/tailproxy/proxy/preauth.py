"""Admission of connections that have not authenticated yet (SOCKS5/HTTP port, DNS over TCP).

Any local user can find these ports (their owner shows in /proc/net/tcp) and open connections
that never authenticate; 1,021 of them once used up every fd and the program's own connections
timed out. So, per listener:

- another uid (or a peer that is not on this host) may hold at most `per_uid` connections that
  have not authenticated; our own uid is trusted (threat model) and not capped;
- nothing is admitted when the fds left are within `headroom` of the limit: those stay for the
  program's own channel connections, which must never starve;
- each admitted connection gets a deadline to authenticate (the callers apply `deadline`).

The owner lookup (one sock_diag query) is only done once `per_uid` connections are pending at
all: below that no uid can be over the cap. (Connections admitted unlooked-up are
not attributed, so one uid can briefly hold up to twice the cap.)
"""
from __future__ import annotations

import os
import resource
import socket
from typing import Callable

from ..peeruid import tcp_peer_uid

AUTH_DEADLINE_S = 5.0
PER_UID = 64
_UNATTRIBUTED = "unattributed"


def _default_headroom() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(64, soft // 8)


class Ticket:
    """One admitted connection's place in the count; release() once it authenticated or ended
    (idempotent)."""
    __slots__ = ("_gate", "_key")

    def __init__(self, gate: "PreAuthGate", key):
        self._gate, self._key = gate, key

    def release(self) -> None:
        if self._gate is not None:
            self._gate._release(self._key)
            self._gate = None


class PreAuthGate:
    def __init__(self, *, per_uid: int = PER_UID, headroom: int | None = None,
                 deadline: float = AUTH_DEADLINE_S, own_uid: int | None = None,
                 uid_of: Callable[[tuple, tuple], int | None] | None = None):
        self.per_uid = per_uid
        self.headroom = _default_headroom() if headroom is None else headroom
        self.deadline = deadline
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self._uid_of = uid_of or tcp_peer_uid
        self._pending: dict = {}
        self._total = 0
        self.refused = 0

    def admit(self, conn: socket.socket) -> Ticket | None:
        """A ticket, or None: close `conn` at once (the client sees the connection end)."""
        if conn.fileno() >= resource.getrlimit(resource.RLIMIT_NOFILE)[0] - self.headroom:
            self.refused += 1
            return None
        key = _UNATTRIBUTED
        if self._total >= self.per_uid:
            key = self._owner(conn)
            if key != self.own_uid and self._pending.get(key, 0) >= self.per_uid:
                self.refused += 1
                return None
        self._pending[key] = self._pending.get(key, 0) + 1
        self._total += 1
        return Ticket(self, key)

    def _owner(self, conn: socket.socket):
        try:
            return self._uid_of(conn.getpeername(), conn.getsockname())
        except (OSError, ValueError):
            return None         # gone already, or not on this host: one shared bucket

    def _release(self, key) -> None:
        n = self._pending.get(key, 0) - 1
        if n > 0:
            self._pending[key] = n
        else:
            self._pending.pop(key, None)
        self._total -= 1

    @property
    def pending(self) -> int:
        return self._total

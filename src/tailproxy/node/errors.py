"""Errors raised by the node binding."""
from __future__ import annotations

import errno as _errno


class NodeError(Exception):
    """Something the node could not do; the message is meant for the user."""


class NodeStateError(NodeError):
    """A call made in the wrong order (e.g. dial before up, anything after close)."""


class UpTimeout(NodeError):
    """up() did not reach the Running state within its timeout."""


class LoginRequired(NodeError):
    """The node needs an interactive login (or an auth key) to join the tailnet."""


class LocalAPIError(NodeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class DialFailed(NodeError):
    """A dial through the node failed; `errno` is the closest socket error."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


# Dial error texts from tailscaled (Go net errors and gVisor), mapped to what a socket would say.
_DIAL_ERRNOS = [
    ("connection refused", _errno.ECONNREFUSED),
    ("connection was refused", _errno.ECONNREFUSED),
    ("no route to host", _errno.EHOSTUNREACH),
    ("host is unreachable", _errno.EHOSTUNREACH),
    ("network is unreachable", _errno.ENETUNREACH),
    ("no such host", _errno.EHOSTUNREACH),
    ("unknown peer", _errno.EHOSTUNREACH),
    ("i/o timeout", _errno.ETIMEDOUT),
    ("timed out", _errno.ETIMEDOUT),
    ("deadline exceeded", _errno.ETIMEDOUT),
    ("connection reset", _errno.ECONNRESET),
    ("not allowed", _errno.EACCES),
]


def errno_for_dial_message(message: str) -> int:
    low = message.lower()
    for needle, code in _DIAL_ERRNOS:
        if needle in low:
            return code
    return _errno.EHOSTUNREACH

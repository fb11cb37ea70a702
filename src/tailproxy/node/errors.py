"""Errors raised by the node binding."""
from __future__ import annotations


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
    """A dial through the node failed; `errno` is what a socket would have said (the node
    library translates its errors, in one place: node/errno.go)."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


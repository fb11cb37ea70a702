"""A placeholder stays held (never evicted from the map) while a connection dialled through it
lives: the program will likely connect to the same placeholder again (a reconnect, a second
request), and an evicted placeholder would then stand for nothing (EHOSTUNREACH)."""
from __future__ import annotations

import socket
import weakref
from collections.abc import Awaitable
from typing import Callable

from .placeholders import PlaceholderMap


def held_while_connected(placeholders: PlaceholderMap, name: str, start: Callable[[], object]):
    """`start()` (a dial: an outbound, or an awaitable of one) with `name` held until the
    outbound is gone. A socket is watched by its lifetime, an upstream (relaying itself) until
    its relay ends or it is abandoned."""
    placeholders.hold(name)
    release = _once(lambda: placeholders.release(name))
    try:
        started = start()
    except BaseException:
        release()
        raise
    if isinstance(started, Awaitable):
        return _when_dialled(started, release)
    return _watch(started, release)


async def _when_dialled(started, release):
    try:
        outbound = await started
    except BaseException:
        release()
        raise
    return _watch(outbound, release)


def _watch(outbound, release):
    if isinstance(outbound, socket.socket):
        weakref.finalize(outbound, release)
        return outbound
    if hasattr(outbound, "join"):
        return HeldUpstream(outbound, release)
    release()               # nothing to watch: it counts as just used (recent) instead
    return outbound


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()
    return call


class HeldUpstream:
    """An Upstream (proxy/dialer.py) that releases the hold when its relay ends."""

    def __init__(self, inner, release: Callable[[], None]):
        self.inner, self._release = inner, release
        self.local_address = inner.local_address

    def join(self, local, done, initial: bytes = b""):
        def ended(*result) -> None:
            self._release()
            done(*result)
        try:
            return self.inner.join(local, ended, initial)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        self._release()
        self.inner.close()


class HeldDatagramUpstream:
    """A DatagramUpstream (proxy/dialer.py: a UDP association in the node) through a
    placeholder: the placeholder is held until the association ends or is abandoned."""

    def __init__(self, placeholders: PlaceholderMap, name: str, inner):
        placeholders.hold(name)
        self.inner = inner
        self._release = _once(lambda: placeholders.release(name))

    def relay(self, sock, done=None, initial: bytes = b"") -> None:
        def ended(end) -> None:
            self._release()
            if done is not None:
                done(end)
        try:
            self.inner.relay(sock, ended, initial)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        self._release()
        self.inner.close()

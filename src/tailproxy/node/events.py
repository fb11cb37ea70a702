"""The node library's event pipe: outcomes of dials, relays and accepts, one JSON line each.

Go never calls into Python; it writes events to a pipe, and the event loop reads them here and
hands each to the handler registered for its id.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
from typing import Callable

_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20        # room for a burst of events while the loop is busy


class EventRouter:
    def __init__(self):
        self._read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._read_fd, False)
        try:
            fcntl.fcntl(self._read_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass            # the default 64 KiB still works; Go waits when it is full
        self._handlers: dict[int, Callable[[dict], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partial = b""
        self._closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver events on `loop` (a library user may run several loops in turn)."""
        if self._loop is loop or self._closed:
            return
        self._detach()
        loop.add_reader(self._read_fd, self._on_readable)
        self._loop = loop

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._read_fd)
        self._loop = None

    def register(self, ident: int, handler: Callable[[dict], None]) -> None:
        self._handlers[ident] = handler

    def unregister(self, ident: int) -> None:
        self._handlers.pop(ident, None)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._read_fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:                 # the node closed its end
            self._detach()
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._dispatch(line)

    def _dispatch(self, line: bytes) -> None:
        """One event to its handler. A bad line or a failing handler must not cost the events
        after it (a lost "dialed" event would leave a connect waiting)."""
        try:
            ev = json.loads(line)
            handler = self._handlers.get(ev.get("id"))
            if handler is not None:
                handler(ev)
        except Exception as e:      # noqa: BLE001 -- reported, then the next event
            self._loop.call_exception_handler({"message": f"node event {line[:200]!r}",
                                               "exception": e})

    def close(self) -> None:
        """After the node stopped: anything still waiting learns that it did."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        os.close(self._read_fd)
        handlers, self._handlers = self._handlers, {}
        for ident, handler in handlers.items():
            handler({"id": ident, "ev": "stopped", "errno": errno.ENETDOWN,
                     "err": "the tailnet node stopped"})

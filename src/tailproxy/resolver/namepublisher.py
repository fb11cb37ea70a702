"""Keeps the name table the preload reads (nametable.py) equal to what the name service answers
from memory: /etc/hosts names, the MagicDNS names of known peers and, while names go through the
tailnet (exit node), the placeholders names already have — by the service's own order rules
(NameService.known_answers), so the program gets them without a round trip.

Republished whenever an input changes: the hosts file was read again (a lookup or this
publisher's own check noticed it changed), a new tailnet snapshot was loaded (peers joined or
left; the exit node changed: the control command reloads it, and a table without placeholders
follows a clear at once), a name got a placeholder (batched: at most every BATCH_S). The preload
also stats the hosts file itself on every lookup and asks the name service when the file is not
the one the table was taken from, so an edit is followed at the next lookup, as glibc does.

A placeholder the table answers is pinned in the map (never evicted, so its address is never
given to another name while a program can still read it from the table); a name leaving the
table counts as just used, like an answer the service gave."""
from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Callable

from ..proxy import channel_proto as cp
from .nametable import NameTableFile
from .service import NameService

PLACEHOLDERS = 2048     # names whose placeholders the table holds (the most recently used)
BATCH_S = 0.05          # new placeholders are published together, at most this often


class NameTablePublisher:
    def __init__(self, table: NameTableFile, names: NameService, *, interval: float = 2.0,
                 log: Callable[[str], None] = lambda msg: None):
        self.table, self.names, self.interval, self.log = table, names, interval, log
        self._publishing = False
        self._said_full = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._soon: asyncio.TimerHandle | None = None
        names.on_change = self.publish
        names.hosts.on_change = self.publish
        names.placeholders.on_new = self.publish_soon

    def publish(self) -> None:
        """Publish the answers known now (nothing if unchanged)."""
        if self._publishing:
            return          # the hosts file, read again while answers are taken: this call
        self._publishing = True     # goes on with the new contents
        try:
            answers = self.names.known_answers(PLACEHOLDERS)
            sig = self.names.hosts.signature
            if self.table.published != (sig, tuple(answers)):
                pinned = {a.key for a in answers if a.flags & cp.RES_PLACEHOLDER}
                before = {a.key for a in (self.table.published or (None, ()))[1]
                          if a.flags & cp.RES_PLACEHOLDER}
                self.names.placeholders.pin(before | pinned)    # both, while the switch is made
                self.table.publish(sig, answers)
                self.names.placeholders.pin(pinned)
                if self.table.held < len(answers) and not self._said_full:
                    self.log(f"{len(answers)} known answers, the preload's name table holds "
                             f"{self.table.held}: the others are asked of the name service")
                    self._said_full = True
        finally:
            self._publishing = False

    def publish_soon(self) -> None:
        """A name got a placeholder: publish within BATCH_S (a program resolving many new
        names makes one republish per batch, not one per name). Any thread."""
        if self._loop is None:
            self.publish()
            return

        def schedule():
            if self._soon is None:
                self._soon = self._loop.call_later(BATCH_S, self._publish_batch)
        self._loop.call_soon_threadsafe(schedule)

    def _publish_batch(self) -> None:
        self._soon = None
        self.publish()

    async def start(self) -> None:
        """Publish now, then keep it current in the background."""
        self._loop = asyncio.get_running_loop()
        self.publish()
        self._task = asyncio.create_task(self._keep_current())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        self.names.on_change = self.names.hosts.on_change = lambda: None
        self.names.placeholders.on_new = lambda: None
        self.names.placeholders.pin(())
        self.table.close()

    async def _keep_current(self) -> None:
        """Every `interval` seconds: a new snapshot (peers join and leave; lookups answered by
        the table no longer make the service refresh it) and the hosts file checked."""
        while True:
            await asyncio.sleep(self.interval)
            await self.names.refresh()
            self.publish()


async def start_name_table(parts: contextlib.AsyncExitStack, names: NameService | None,
                           rundir: str, log: Callable[[str], None]) -> str | None:
    """The name table the preloads read (TAILPROXY_NAMES), published and kept current; its
    path, or None (then every lookup is a round trip to the name service, as before)."""
    if names is None:
        return None
    try:
        table = NameTableFile(os.path.join(rundir, "names"), names.hosts.path)
    except OSError as e:
        log(f"warning: no name table ({e}); every lookup goes to the name service")
        return None
    publisher = NameTablePublisher(table, names, log=log)
    await publisher.start()
    parts.push_async_callback(publisher.stop)
    return table.path

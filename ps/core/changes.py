"""Waiting on a shard's state: one event per change, and the restore that ends every wait.

A shard runs on one event loop with no locks: a coroutine that must wait (for
the consistency bound, a checkpoint's gate, a cut's pushes) re-checks its
condition each time the state changes. ``notify`` wakes them all; a restore
from a checkpoint moves ``generation`` on, and a wait that began before it ends
with ``RolledBackError``: what it waited for is gone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ...errors import RolledBackError


class Changes:
    def __init__(self, where: str = ""):
        self.where = where
        self.generation = 0  # one more per restore
        self._event: asyncio.Event | None = None  # made lazily, inside the running event loop

    def notify(self) -> None:
        """The state changed: wake every waiter to re-check its condition."""
        if self._event is not None:
            self._event.set()
            self._event = None

    def restored(self) -> None:
        """The state was replaced by a checkpoint's: waits that began before end."""
        self.generation += 1
        self.notify()

    async def next(self, timeout: float | None = None) -> bool:
        """Wait for the next change; False if ``timeout`` passed first."""
        if self._event is None:
            self._event = asyncio.Event()
        if timeout is None:
            await self._event.wait()
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def until(self, ready: Callable[[], bool], worker_id: int, what: str) -> float:
        """Wait until ``ready()``; the seconds waited. A restore meanwhile raises RolledBackError."""
        if ready():
            return 0.0
        generation, began = self.generation, time.monotonic()
        while not ready():
            await self.next()
            if self.generation != generation:
                raise RolledBackError(f"{self.where} was restored from a checkpoint while worker {worker_id}"
                                      f" waited for {what}; it must register again")
        return time.monotonic() - began

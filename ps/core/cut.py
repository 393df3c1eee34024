"""The checkpoint cut on one shard: hold pushes at a gate while every shard is lined up at the same clocks.

The controller (launcher/job/checkpointing.py) freezes every shard, takes the
highest completed clock each one saw per worker as the cut, lets each shard
through exactly the held pushes up to it, copies the states, then thaws. A
push waits at ``gate`` while the shard is frozen, unless the cut still needs
it; ``cut`` waits until the shard has every push up to the cut (``reached``,
which the shard answers for its dense range and its tables).
"""

from __future__ import annotations

import time
from typing import Callable

from .changes import Changes


class CheckpointCut:
    def __init__(self, changes: Changes):
        self._changes = changes
        self.frozen = False
        self.barrier: dict[int, int] | None = None  # while frozen: the clocks the cut still lets through

    async def gate(self, worker_id: int, clock: int) -> None:
        """Hold a push while a cut is being taken, unless it is one the cut still needs."""
        while self.frozen and (self.barrier is None or clock > self.barrier.get(worker_id, 0)):
            await self._changes.next()

    def freeze(self) -> None:
        """Begin a cut: hold every push from now on."""
        self.frozen, self.barrier = True, None

    async def cut(self, clocks: dict[int, int], reached: Callable[[dict[int, int]], bool],
                  timeout_s: float = 5.0) -> bool:
        """Let through the held pushes up to ``clocks`` and wait until ``reached(clocks)``. False if a
        worker's push never came (it died mid-push) within ``timeout_s``."""
        self.barrier = {int(w): int(c) for w, c in clocks.items()}
        self._changes.notify()
        deadline = time.monotonic() + timeout_s
        while not reached(self.barrier):
            left = deadline - time.monotonic()
            if left <= 0 or not await self._changes.next(left):
                return False
        return True

    def thaw(self) -> None:
        """End a cut: the held pushes go on."""
        self.frozen, self.barrier = False, None
        self._changes.notify()

"""A shard's counters every K steps: the rows of a job's history taken by work, not by the clock.

The driver polls the shards twice a second, which gives a job of one second
three rows. A shard sees every step as it happens, so it writes a row each
time the job's step count (every worker's fresh pushes, this shard's count)
reaches a multiple of ``every``; the driver collects the rows with the
stats it asks for anyway (``since``), and the shard forgets what was read.

``era`` names a life of the counters: a new process, or a restore from a
checkpoint, which puts the counters back. The driver reads the counters of
different eras against different baselines, so its step column never goes
back (launcher/job/progress.py).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Callable

#: Rows kept when nobody reads them (a shard driven directly, or a driver gone).
KEEP = 10_000


class StepSeries:
    def __init__(self, every: int = 0, keep: int = KEEP):
        """``every``: a row each time the step count reaches a multiple of it (0: no rows)."""
        self.every = int(every)
        self.process = uuid.uuid4().hex[:12]  # this life of the shard: ids start again in a new one
        self.restores = 0
        self._rows: deque[dict] = deque(maxlen=keep)
        self._next_id = 0

    @property
    def era(self) -> str:
        return f"{self.process}.{self.restores}"

    def restored(self) -> None:
        """The counters were put back to a checkpoint's: later rows belong to a new era."""
        self.restores += 1

    def stepped(self, steps: int, counters: Callable[[], dict]) -> None:
        """The step count is now ``steps``: a row of ``counters()`` if that is a multiple of ``every``."""
        if self.every and steps % self.every == 0:
            self._rows.append({"id": self._next_id, "era": self.era, "time": time.time(), **counters()})
            self._next_id += 1

    def since(self, after: tuple[str, int] | None) -> list[dict]:
        """The rows after ``after`` (``(process, id)`` of the last row read; None: all), oldest first.
        Rows up to ``after`` are dropped: they were read."""
        if after is not None and after[0] == self.process:
            while self._rows and self._rows[0]["id"] <= after[1]:
                self._rows.popleft()
        return list(self._rows)

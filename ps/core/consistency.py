"""The consistency contract: clocks, and when a worker may begin an iteration.

Pure logic with no I/O, Ray or asyncio, so every rule is unit-tested with
clocks a test sets by hand. A shard owns one ``ClockTable`` and asks its
``ConsistencyPolicy`` two questions: may this worker begin iteration t
(``admits``), and how far ahead of the slowest live worker would it be
(``lead``).

Clocks count iterations from 1. A worker's *completed* clock is the last
iteration whose gradient it pushed (0 before its first push), so the
iteration it has in progress is completed + 1.

- ``asp``: always admitted.
- ``ssp(s)``: a worker may begin iteration t only when every live worker has
  completed iteration t - s - 1. Equivalently its lead, t minus the slowest
  live worker's iteration in progress, is at most s. s = 0 is lock-step.
- ``bsp``: a worker may begin iteration t once the shard has stepped with the
  gradients of clock t - 1 (all live workers', or the first ``quorum`` of
  them); the shard, not the clock table, tracks that.

Workers that finish or die leave the table, so nobody waits for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ...errors import PSError
from ...settings import number, require

MODES = ("asp", "ssp", "bsp")


@dataclass(frozen=True)
class ConsistencyConfig:
    """How workers are kept in step. See the module docstring for the rules."""

    mode: str = "ssp"
    staleness: int = 2  # ssp only: the bound s
    quorum: int | None = None  # bsp only: step after the first k gradients (backup workers)
    staleness_aware_lr: bool = False  # scale each update's step by 1 / max(1, staleness)

    def __post_init__(self) -> None:
        require(self.mode in MODES, f"mode ({self.mode!r}) must be one of {', '.join(MODES)}")
        number(self.staleness, "staleness", minimum=0, integer=True)
        if self.quorum is not None:
            number(self.quorum, "quorum", minimum=1, integer=True)
            require(self.mode == "bsp", f"quorum ({self.quorum}) applies to mode 'bsp' only, not {self.mode!r}")
        require(isinstance(self.staleness_aware_lr, bool),
                f"staleness_aware_lr ({self.staleness_aware_lr!r}) must be true or false")

    @property
    def bound(self) -> int | None:
        """The staleness bound the mode guarantees: s for ssp, 0 for bsp, None for asp."""
        return {"asp": None, "ssp": self.staleness, "bsp": 0}[self.mode]


class UnknownWorkerError(PSError, KeyError):
    """A call named a worker id the shard was not told about."""


class ClockTable:
    """The completed clock of every live worker, as one shard has heard it."""

    def __init__(self, worker_ids: Iterable[int]):
        self._completed: dict[int, int] = {int(w): 0 for w in worker_ids}
        self._left: set[int] = set()

    def _check(self, worker_id: int) -> None:
        if worker_id not in self._completed and worker_id not in self._left:
            raise UnknownWorkerError(f"unknown worker id {worker_id!r}")

    def completed(self, worker_id: int) -> int:
        self._check(worker_id)
        return self._completed.get(worker_id, 0)

    def advance(self, worker_id: int, clock: int) -> None:
        """Record that ``worker_id`` completed iteration ``clock``."""
        self._check(worker_id)
        if worker_id in self._completed:
            self._completed[worker_id] = max(self._completed[worker_id], clock)

    def join(self, worker_id: int, clock: int) -> None:
        """(Re)enter the table as live, with ``clock`` completed: a replacement or a worker added mid-job."""
        self._completed[worker_id] = clock
        self._left.discard(worker_id)

    def leave(self, worker_id: int) -> None:
        """Drop a finished or dead worker from the table."""
        self._check(worker_id)
        self._completed.pop(worker_id, None)
        self._left.add(worker_id)

    def is_live(self, worker_id: int) -> bool:
        return worker_id in self._completed

    @property
    def live(self) -> list[int]:
        return sorted(self._completed)

    def min_completed(self) -> int | None:
        """The slowest live worker's completed clock, or None when none is live."""
        return min(self._completed.values()) if self._completed else None

    def snapshot(self) -> dict[int, int]:
        return dict(self._completed)

    def state_dict(self) -> dict:
        """Every live worker's completed clock and who has left: all a restored table needs."""
        return {"completed": dict(self._completed), "left": sorted(self._left)}

    def load_state_dict(self, state: dict) -> None:
        completed = {int(w): int(c) for w, c in state["completed"].items()}
        left = {int(w) for w in state["left"]}
        if completed.keys() & left:
            raise PSError(f"clock state lists workers {sorted(completed.keys() & left)} as both live and left")
        self._completed, self._left = completed, left


class ConsistencyPolicy:
    """Admission rules for one consistency config over one clock table."""

    def __init__(self, config: ConsistencyConfig):
        self.config = config

    def lead(self, table: ClockTable, clock: int) -> int:
        """How many iterations ``clock`` is ahead of the slowest live worker's iteration in progress."""
        slowest = table.min_completed()
        return 0 if slowest is None else clock - (slowest + 1)

    def admits(self, table: ClockTable, clock: int) -> bool:
        """May a worker begin iteration ``clock`` (asp and ssp; bsp is decided by the shard)?"""
        if self.config.mode == "ssp":
            return self.lead(table, clock) <= self.config.staleness
        return True

    def quorum(self, table: ClockTable, expected: int | None = None) -> int:
        """How many gradients of a clock a bsp shard waits for before it steps.

        ``expected``: how many live workers owe this round (a worker that joined after it
        began owes none); default every live worker."""
        live = len(table.live) if expected is None else expected
        k = self.config.quorum
        return live if k is None else min(k, live)

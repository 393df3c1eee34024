"""The clock table: the completed clock of every live worker, as one table of one shard heard it.

Clocks count iterations from 1. A worker's *completed* clock is the last
iteration whose gradient it pushed (0 before its first push), so the
iteration it has in progress is completed + 1. Workers that finish or die
leave the table, so nobody waits for them. Pure data, no I/O.
"""

from __future__ import annotations

from typing import Iterable

from ...errors import PSError, UnknownWorkerError


class ClockTable:
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

    def lead(self, clock: int) -> int:
        """How many iterations ``clock`` is ahead of the slowest live worker's iteration in progress."""
        slowest = self.min_completed()
        return 0 if slowest is None else clock - (slowest + 1)

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

"""The controller's small policies: what to do on a failure, on a stall, and when to checkpoint.

Pure logic with time passed in, so each is unit-tested without Ray. The
controller (launcher/job/controller.py) tells them what it saw and does what
they answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...errors import JobError


@dataclass(frozen=True)
class Decision:
    action: str  # "restart" (a shard), "replace" (a worker), "give_up"
    message: str = ""


class RestartBudget:
    """The failure policy: restart a shard, replace a worker, until the job's budget is spent."""

    def __init__(self, max_restarts: int, can_restore: bool = True):
        self.max_restarts = max_restarts
        self.can_restore = can_restore  # without checkpoints a restarted shard has nothing to restore
        self.restarts: Counter = Counter()

    @property
    def spent(self) -> int:
        return sum(self.restarts.values())

    def on_failure(self, actor: str, cause: str) -> Decision:
        if actor.startswith("ps-shard") and not self.can_restore:
            return Decision("give_up", f"{actor} died and checkpoints are off, so it has nothing to restore"
                                       f" (checkpoint.enabled: false): {cause}")
        if self.spent >= self.max_restarts:
            return Decision("give_up", f"{actor} died and the job's restart budget is spent"
                                       f" ({self.spent} of fault.max_restarts={self.max_restarts} used): {cause}")
        self.restarts[actor] += 1
        return Decision("restart" if actor.startswith("ps-shard") else "replace")

    def give_up(self, decision: Decision) -> JobError:
        return JobError(decision.message)


class StallWatch:
    """The stall policy: a live worker whose clock has not moved for ``stall_s`` is stalled.

    ``observe`` is given every live worker's clock; it answers the workers that
    have just become stalled (each is reported once per stall) and how long
    each has been stuck. ``action`` says what the controller does with them.
    """

    def __init__(self, stall_s: float, action: str = "report"):
        self.stall_s = stall_s
        self.action = action
        self._seen: dict[int, tuple[int, float]] = {}  # worker -> (clock, when it last moved)
        self._reported: set[int] = set()
        self.stalls = 0

    def observe(self, now: float, clocks: dict[int, int]) -> dict[int, float]:
        stalled = {}
        for worker, clock in clocks.items():
            last = self._seen.get(worker)
            if last is None or clock != last[0]:
                self._seen[worker] = (clock, now)
                self._reported.discard(worker)
                continue
            stuck = now - last[1]
            if stuck >= self.stall_s and worker not in self._reported:
                self._reported.add(worker)
                stalled[worker] = stuck
        for gone in set(self._seen) - set(clocks):  # left the table (finished, died): forget it
            self._seen.pop(gone)
            self._reported.discard(gone)
        self.stalls += len(stalled)
        return stalled

    def forget(self, worker: int) -> None:
        self._seen.pop(worker, None)
        self._reported.discard(worker)


class CheckpointSchedule:
    """When to cut a checkpoint: every ``every_s`` seconds and/or every ``every_steps`` steps, a cut by
    steps no sooner than ``min_gap_s`` after the last cut."""

    def __init__(self, every_s: float | None, every_steps: int | None, start: float = 0.0,
                 min_gap_s: float = 0.0):
        self.every_s = every_s
        self.every_steps = every_steps
        self.min_gap_s = min_gap_s
        self._last_t = start
        self._last_step = 0

    def due(self, now: float, step: int) -> bool:
        by_time = self.every_s is not None and now - self._last_t >= self.every_s
        by_steps = self.every_steps is not None and step // self.every_steps > self._last_step // self.every_steps \
            and now - self._last_t >= self.min_gap_s
        return by_time or by_steps

    def taken(self, now: float, step: int) -> None:
        self._last_t, self._last_step = now, step

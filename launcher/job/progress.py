"""Where a job stands: one count of its steps and epochs, read the same way by everything that shows it.

The shards count each worker's steps (fresh pushes, applied or dropped late)
and samples (ps/shard.py); the work queue's plan says how many batches the
job has in all. Every figure the progress line, the history, the summary,
TensorBoard and the dashboard show is computed here from those two.

A rollback puts the shards' counts back to a checkpoint's, and the batches
after it go round again. ``Odometer`` reads the counts so that they never go
back: each life of a shard's counters (an ``era``: a new process, or a
restore) is read against its own baseline. So the step column is the work
the job has done, replays included, and the job's total grows by what it
replays: a finished job always reads N/N.

Steps are shown per worker: the job's steps (every worker's) divided by the
workers it was planned with. The default job (2 workers, 23 batches each per
epoch, 30 epochs) reads ``step 690/690``; ``global_step`` is the job's own
count (1,380). Epochs are where the job stands in its data: after a
rollback the epoch goes back with the model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Extent:
    """What the job's plan holds: its batches in all, per epoch, and the workers it was planned with."""

    batches: int
    per_epoch: float  # the queue's batches per epoch (under local steps, outer steps: a fraction may be one)
    workers: int


@dataclass(frozen=True)
class Progress:
    extent: Extent
    taken: int = 0  # every worker's steps so far, replays included: never goes back
    replayed: int = 0  # steps taken again after rollbacks (and those a resumed job redoes)
    position: int = 0  # the plan's batches the shards' state holds: goes back on a rollback

    @property
    def total(self) -> int:
        """Every worker's steps the job takes in all: its plan, and what it replays."""
        return self.extent.batches + self.replayed

    @property
    def step(self) -> int:
        return round(self.taken / max(1, self.extent.workers))

    @property
    def steps(self) -> int:
        return round(self.total / max(1, self.extent.workers))

    @property
    def replayed_steps(self) -> int:
        """What was replayed, in steps per worker."""
        return round(self.replayed / max(1, self.extent.workers))

    @property
    def epoch(self) -> float:
        return self.position / (self.extent.per_epoch or 1)

    @property
    def epochs(self) -> float:
        return self.extent.batches / (self.extent.per_epoch or 1)

    @property
    def fraction(self) -> float:
        return min(1.0, self.taken / max(1, self.total))

    def fields(self) -> dict:
        """The columns every history row carries."""
        return {"step": self.step, "steps": self.steps, "global_step": self.taken,
                "replayed": self.replayed_steps, "epoch": round(self.epoch, 3)}


class Odometer:
    """Counts that never go back, read from counters that do (a restore puts a shard's back).

    ``read(era, counts)``: the first reading of a new era continues from the
    last reading of the one before (less is only possible after a restore),
    or from more where ``went_back`` said how much a rollback undid.
    """

    def __init__(self, start: dict[str, int] | None = None):
        self._last: dict[str, int] = dict(start or {})  # the last reading, in never-going-back counts
        self._bases: dict[str, dict[str, int]] = {}
        self._base: dict[str, int] = {}  # the newest era's baseline
        self._undone: dict[str, int] = {}

    def went_back(self, **undone: int) -> None:
        """A rollback undid ``undone`` of these counts (measured where it happened): the next era's
        baseline is at least the current one plus that much."""
        for key, n in undone.items():
            self._undone[key] = self._undone.get(key, 0) + int(n)

    def read(self, era: str, counts: dict[str, int]) -> dict[str, int]:
        base = self._bases.get(era)
        if base is None:
            base = {k: max(0, self._last.get(k, 0) - v, self._base.get(k, 0) + self._undone.get(k, 0))
                    for k, v in counts.items()}
            self._bases[era], self._base, self._undone = base, base, {}
        out = {k: v + base.get(k, 0) for k, v in counts.items()}
        self._last.update(out)
        return out

    def baseline(self, key: str) -> int:
        """How much the newest era's ``key`` is ahead of its raw count: what went round again."""
        return self._base.get(key, 0)


def describe(progress: Progress, label: str, samples_per_s: float, row: dict) -> str:
    """The progress line: steps (with what was replayed and what is left), epoch, speed, loss, staleness."""
    p = progress
    step = f"step {p.step:,}/{p.steps:,}"
    if p.replayed:
        step += f" ({p.replayed_steps:,} replayed, {p.steps - p.step:,} left)"
    loss = f"{row['loss']:.4f}" if row.get("loss") is not None else "-"
    reported = "".join(f"  {k} {v:.4g}" for k, v in list(row.get("reported", {}).items())[:4])
    return (f"[{label}] {step}  epoch {_num(p.epoch)}/{_num(p.epochs)}  {samples_per_s:,.0f} samples/s"
            f"  loss {loss}{reported}  staleness mean {row['staleness_mean']:.2f} max {row['staleness_max']}"
            f"  clock gap {row['max_clock_gap']}")


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"

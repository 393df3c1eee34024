"""The epoch plan under local steps: each of the queue's batches is one outer step of H batches.

One push is one outer step (worker/loop/local_steps.py), and the work queue
counts pushes: a unit's batch ``lo + k`` is the push ``first_seq + k``. So
under local steps the queue's batch is an ``OuterStep``: H consecutive
batches of one worker's stream, cut from the plan the job would have without
local steps (``inner``). Exactly once, releases after a death and rollbacks
then hold per outer step, with no change to the queue.

A worker's stream is its batches of every epoch, epoch after epoch, so an
outer step is exactly H batches wherever it falls (only a worker's last one
may be shorter) and may span two epochs: the queue holds the whole job as
one epoch of outer steps. ``budgets`` says how many each worker has, so the
queue stops at ``max_steps`` batches (rounded up to a whole outer step).
Without local steps nothing here is used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ...errors import ConfigError
from .workqueue import Unit, plan_batches


class OuterStep(NamedTuple):
    """The batches one push trains: ``(epoch, indices)`` each, in the order they are trained."""

    batches: tuple[tuple[int, np.ndarray], ...]

    @property
    def examples(self) -> int:
        return sum(len(b) for _, b in self.batches)

    def __len__(self) -> int:  # what the worker counts a push's examples by
        return self.examples


class OuterSteps:
    """An epoch plan (stretches, batches, examples) of one epoch whose batches are the outer steps of
    ``inner_steps`` batches each, cut from every epoch of the plan ``inner``, for a job of ``epochs`` epochs."""

    chunk_ends = None  # a unit may end mid-chunk: an outer step is cut from the worker's stream, not the chunks
    epochs = 1

    def __init__(self, inner, epochs: int, inner_steps: int):
        if not any(inner.stretches):
            raise ConfigError("local steps need batches to train: every worker's share of an epoch is empty")
        self.inner, self.inner_steps, self.real_epochs = inner, inner_steps, epochs
        self._inner_starts = np.concatenate([[0], np.cumsum(inner.stretches)]).astype(int)
        self.stretches = [math.ceil(epochs * s / inner_steps) for s in inner.stretches]
        self.per_epoch = sum(self.stretches)
        self._starts = np.concatenate([[0], np.cumsum(self.stretches)]).astype(int)

    def budgets(self, max_steps: int | None) -> list[int]:
        """Each worker's outer steps: those that begin within its first ``max_steps`` batches (all when None)."""
        if max_steps is None:
            return list(self.stretches)
        return [min(n, math.ceil(max_steps / self.inner_steps)) for n in self.stretches]

    def _step(self, worker: int, k: int) -> OuterStep:
        """Worker ``worker``'s outer step ``k``: its batches k*H .. (k+1)*H - 1, counted over every epoch."""
        stretch, lo = self.inner.stretches[worker], int(self._inner_starts[worker])
        first, end = k * self.inner_steps, min((k + 1) * self.inner_steps, self.real_epochs * stretch)
        batches = []
        while first < end:
            epoch, j = divmod(first, stretch)
            take = min(end - first, stretch - j)
            batches += [(epoch, b) for b in self.inner.batches(Unit(epoch, lo + j, lo + j + take))]
            first += take
        return OuterStep(tuple(batches))

    def batches(self, unit: Unit) -> list[OuterStep]:
        out = []
        for position in range(unit.lo, unit.hi):
            worker = int(np.searchsorted(self._starts, position, side="right")) - 1
            out.append(self._step(worker, position - int(self._starts[worker])))
        return out

    def examples(self, unit: Unit) -> int:
        return sum(step.examples for step in self.batches(unit))

    def examples_by_epoch(self, unit: Unit) -> dict[int, int]:
        """The unit's examples, by the epoch of the batch each was trained in."""
        out: dict[int, int] = {}
        for step in self.batches(unit):
            for epoch, batch in step.batches:
                out[epoch] = out.get(epoch, 0) + len(batch)
        return out


def queue_extent(plan, epochs: int, max_steps: int | None) -> dict:
    """The WorkQueue's ``epochs``, ``max_steps`` and ``budgets`` for ``plan``: the job's own, or an outer
    plan's groups and per-worker budgets."""
    if isinstance(plan, OuterSteps):
        return {"epochs": plan.epochs, "max_steps": None, "budgets": plan.budgets(max_steps)}
    return {"epochs": epochs, "max_steps": max_steps, "budgets": None}


def job_plan(source, num_workers: int, batch_size: int, seed: int, epochs: int, inner_steps: int | None):
    """The job's epoch plan: ``plan_batches``'s, cut into outer steps of ``inner_steps`` batches when set."""
    plan = plan_batches(source, num_workers, batch_size, seed)
    return plan if inner_steps is None else OuterSteps(plan, epochs, inner_steps)


def steps_per_worker(plan, extent: dict) -> int:
    """The most pushes one worker makes in the job, as the queue plans it (``extent``: ``queue_extent``'s)."""
    if extent["budgets"] is not None:
        return max(extent["budgets"])
    steps = extent["epochs"] * max(plan.stretches)
    return steps if extent["max_steps"] is None else min(steps, extent["max_steps"])

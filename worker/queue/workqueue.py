"""The work queue: one place hands out the data in chunks and knows what each worker holds.

Pure logic (no Ray, no clocks), so every rule is unit-tested by hand; the
driver wraps it in a ``WorkCoordinator`` actor that the workers lease from.

An epoch's examples are the ``EpochSharder``'s batches, listed worker by
worker over the job's initial workers. A *unit* is a range of that list,
``[lo, hi)`` of one epoch, cut within one worker's stretch, which it is
handed first: without failures every worker trains exactly the batches, in
exactly the order, of its static shard (so bsp stays bit-for-bit
reproducible). A worker with nothing of its own left takes another's last
queued unit (a straggler's work moves to the fast; a worker added mid-job
gets work), and units handed back after a death go to whoever asks first.

Exactly once: a worker leases a unit saying which push ``seq`` will carry its
first batch, so batch ``lo + k`` is pushed as ``first_seq + k``. The shards'
push ledgers then say exactly how much of any unit was applied:

- a worker that finishes reports the last seq it pushed; its units are done;
- a worker that dies: the controller reads its last applied seq from the
  shards, the applied part of each unit it held is done, and the rest goes
  back to the front of the queue for whoever leases next;
- a rollback to a checkpoint: the queue's state at the cut, resolved against
  the ledgers at the cut the same way, so the batches lost with the rolled
  back updates are handed out again (replayed).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from .sharder import EpochSharder


@dataclass(frozen=True)
class Unit:
    """Batches ``lo .. hi - 1`` of ``epoch``'s batch list."""

    epoch: int
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo


@dataclass
class Lease:
    unit: Unit
    incarnation: int
    first_seq: int  # the seq of the push that carries batch unit.lo


class EpochBatches:
    """Which example indices each batch of each epoch holds (a worker computes them itself).

    The plan for data addressed by index: one permutation of every example per
    epoch. A source read in chunks brings its own plan (``epoch_batches``, see
    ``plan_batches``) with the same three members: ``stretches``, ``batches``
    and ``examples``, and ``chunk_ends``, which says where a unit must end so
    that no unit reads a chunk it does not finish.
    """

    chunk_ends = None  # any batch may end a unit: the data is in memory

    def __init__(self, num_examples: int, num_workers: int, batch_size: int, seed: int = 0):
        self.sharder = EpochSharder(num_examples, num_workers, batch_size, seed)
        self._cached: tuple[int, list[np.ndarray]] | None = None
        #: each initial worker's stretch of an epoch's batch list (the same every epoch)
        self.stretches = [len(self.sharder.batches(0, w)) for w in range(num_workers)]
        self.per_epoch = sum(self.stretches)

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            listed = [b for w in range(self.sharder.num_workers) for b in self.sharder.batches(epoch, w)]
            self._cached = (epoch, listed)
        return self._cached[1]

    def batches(self, unit: Unit) -> list[np.ndarray]:
        return self._epoch(unit.epoch)[unit.lo:unit.hi]

    def examples(self, unit: Unit) -> int:
        return sum(len(b) for b in self.batches(unit))


def plan_batches(source, num_workers: int, batch_size: int, seed: int = 0):
    """The epoch plan for ``source``: its own (``source.epoch_batches``) when it is read in chunks,
    else one permutation of every example per epoch."""
    own = getattr(source, "epoch_batches", None)
    if own is not None:
        return own(num_workers, batch_size, seed)
    return EpochBatches(len(source), num_workers, batch_size, seed)


class WorkQueue:
    def __init__(self, stretches: list[int], epochs: int, chunk_batches: int, max_steps: int | None = None,
                 steal: bool = True, chunk_ends=None, budgets: list[int] | None = None):
        """``stretches``: each initial worker's batches per epoch; ``max_steps``: at most this many
        batches of each worker's own stretches are queued (the rest of the data is never used).
        ``steal``: whether a worker that finished its own stretch takes others' units (bsp says
        no: which batches meet in a round would then depend on timing; a worker added mid-job,
        with no stretch of its own, always may). ``chunk_ends``: epoch -> the sorted positions in
        the batch list where a chunk of the data ends; a unit never crosses one, so each unit
        reads whole chunks (None: units are cut every ``chunk_batches`` only). ``budgets``: each
        worker's batches in all, where they differ by worker (outer steps: worker/queue/outer.py);
        it replaces ``max_steps``."""
        if chunk_batches < 1:
            raise ConfigError(f"chunk_batches ({chunk_batches}) must be >= 1")
        self.batches_per_epoch = sum(stretches)
        self.epochs = epochs
        self.chunk_batches = chunk_batches
        self._own: dict[int, deque[Unit]] = {}
        start = 0
        for worker, length in enumerate(stretches):
            left = epochs * length if max_steps is None else min(max_steps, epochs * length)
            if budgets is not None:
                left = min(budgets[worker], epochs * length)
            units = self._own[worker] = deque()
            for epoch in range(epochs):
                ends = np.asarray(chunk_ends(epoch) if chunk_ends is not None else [], dtype=np.int64)
                lo = start
                while lo < start + length and left > 0:
                    hi = min(lo + chunk_batches, start + length, lo + left)
                    later = ends[np.searchsorted(ends, lo, side="right"):]
                    if len(later):
                        hi = min(hi, int(later[0]))
                    units.append(Unit(epoch, lo, hi))
                    left -= hi - lo
                    lo = hi
            start += length
        self.budget = sum(len(u) for units in self._own.values() for u in units)
        self._any: deque[Unit] = deque()  # handed back: for whoever asks first
        self._leases: dict[int, list[Lease]] = {}
        self.done: Counter = Counter()  # epoch -> batches done
        self.done_units: list[Unit] = []  # every done range, for exact coverage checks
        self.returned = 0  # batches handed back after a worker died or a rollback
        self.stolen = 0  # units a worker took from another's stretch
        self.steal = steal
        self._owners = set(self._own)

    # ---- what workers ask ---------------------------------------------------------

    def lease(self, worker: int, incarnation: int, first_seq: int, acked_seq: int | None = None) -> Unit | None:
        """The next unit for ``worker`` (its batch ``lo`` is pushed as ``first_seq``); None when none is left."""
        if acked_seq is not None:
            self.complete(worker, incarnation, acked_seq)
        unit = self._next_for(worker)
        if unit is None:
            return None
        self._leases.setdefault(worker, []).append(Lease(unit, incarnation, first_seq))
        return unit

    def _next_for(self, worker: int) -> Unit | None:
        if self._any:
            return self._any.popleft()
        own = self._own.get(worker)
        if own:
            return own.popleft()
        if not self.steal and worker in self._owners:
            return None
        victim = max(self._own, key=lambda w: len(self._own[w]), default=None)
        if victim is None or not self._own[victim]:
            return None
        self.stolen += 1
        return self._own[victim].pop()  # its last: the victim keeps working through its next ones

    def disown(self, worker: int) -> None:
        """``worker`` leaves the job for good (scaled down): what is queued for it goes to anyone."""
        self._any.extend(self._own.pop(worker, deque()))

    def complete(self, worker: int, incarnation: int, acked_seq: int) -> None:
        """``worker``'s pushes up to ``acked_seq`` are applied: the units they cover are done."""
        kept = []
        for lease in self._leases.get(worker, []):
            if lease.incarnation == incarnation and lease.first_seq + len(lease.unit) - 1 <= acked_seq:
                self._mark_done(lease.unit)
            else:
                kept.append(lease)
        self._leases[worker] = kept

    def release(self, worker: int, applied: dict[int, int]) -> int:
        """``worker`` is gone (or stopped early): ``applied`` maps each of its incarnations to the
        last seq the shards applied. The applied part of each of its units is done; the rest goes
        back to the front of the queue. Returns how many batches went back."""
        back = 0
        for lease in reversed(self._leases.pop(worker, [])):  # reversed: they keep their order in front
            seen = max(0, min(len(lease.unit), applied.get(lease.incarnation, 0) - lease.first_seq + 1))
            if seen:
                self._mark_done(Unit(lease.unit.epoch, lease.unit.lo, lease.unit.lo + seen))
            if seen < len(lease.unit):
                self._any.appendleft(Unit(lease.unit.epoch, lease.unit.lo + seen, lease.unit.hi))
                back += len(lease.unit) - seen
        self.returned += back
        return back

    def _mark_done(self, unit: Unit) -> None:
        self.done[unit.epoch] += len(unit)
        self.done_units.append(unit)

    # ---- what the controller asks -------------------------------------------------

    def holders(self) -> dict[int, int]:
        """worker -> batches it holds, leased and not known done."""
        return {w: sum(len(lease.unit) for lease in leases) for w, leases in self._leases.items() if leases}

    @property
    def remaining(self) -> int:
        """Batches not yet known done: queued or held by a worker."""
        return self.queued + sum(self.holders().values())

    @property
    def queued(self) -> int:
        return sum(len(u) for u in self._any) + sum(len(u) for units in self._own.values() for u in units)

    def coverage(self) -> dict[int, list[tuple[int, int]]]:
        """epoch -> the done batch ranges, merged: exactly [(0, batches_per_epoch)] once an epoch is whole."""
        merged: dict[int, list[tuple[int, int]]] = {}
        for unit in sorted(self.done_units, key=lambda u: (u.epoch, u.lo)):
            ranges = merged.setdefault(unit.epoch, [])
            if ranges and ranges[-1][1] == unit.lo:
                ranges[-1] = (ranges[-1][0], unit.hi)
            else:
                ranges.append((unit.lo, unit.hi))
        return merged

    def state_dict(self) -> dict:
        return {
            "own": {w: [[u.epoch, u.lo, u.hi] for u in units] for w, units in self._own.items()},
            "any": [[u.epoch, u.lo, u.hi] for u in self._any],
            "stolen": self.stolen,
            "leases": {w: [[le.unit.epoch, le.unit.lo, le.unit.hi, le.incarnation, le.first_seq] for le in ls]
                       for w, ls in self._leases.items()},
            "done_units": [[u.epoch, u.lo, u.hi] for u in self.done_units],
            "returned": self.returned,
        }

    def load_state_dict(self, state: dict, applied: dict[int, tuple[int, int]]) -> int:
        """Go back to a saved state; ``applied`` (worker -> (incarnation, last seq)) is what the
        shards held at the same cut, which settles each lease of the time. Every lease ends:
        workers lease afresh. Returns how many batches went back to the queue."""
        self._own = {int(w): deque(Unit(*u) for u in units) for w, units in state["own"].items()}
        self._any = deque(Unit(*u) for u in state["any"])
        self.stolen = int(state["stolen"])
        self._leases = {int(w): [Lease(Unit(e, lo, hi), inc, first) for e, lo, hi, inc, first in ls]
                        for w, ls in state["leases"].items()}
        self.done, self.done_units = Counter(), []
        for u in state["done_units"]:
            self._mark_done(Unit(*u))
        self.returned = int(state["returned"])
        back = 0
        for worker in list(self._leases):
            incarnation, seq = applied.get(worker, (0, 0))
            back += self.release(worker, {incarnation: seq})
        return back


def default_chunk_batches(batches_per_epoch: int, workers: int) -> int:
    """Two units per worker per epoch. A lease is a Ray call (a few ms on a busy 2-core host, measured:
    six-batch units cost the default job a third of its speed, twelve-batch ones nothing visible); a
    dead worker's unit goes back only in the part it had not pushed, so big units lose nothing."""
    return max(1, math.ceil(batches_per_epoch / (2 * max(1, workers))))

"""A shard's range of the flat parameter vector: the values, their optimizer and schedule, the rules they keep.

``DenseTable`` checks a gradient before it touches anything, asks its
``Consistency`` (ps/core/consistency.py) what a push does, and then applies
it at once, keeps it for its round, or drops it as late. A complete round
steps once with the sample-weighted mean of its gradients, so it equals the
gradient of the combined batch (and, with one worker, is that worker's
gradient bit for bit). Model buffers reported with a push (ps/core/buffers.py)
become visible when its update does.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ...errors import InputError, ShapeError
from ...protos.layout import DTYPE, all_finite
from .buffers import BufferTable
from .consistency import Consistency, ConsistencyConfig
from .metrics import ShardMetrics
from .optimizers import BLOCK as SUM_BLOCK, FragmentOptimizers, OptimizerConfig, make_optimizer
from .partition import fragment_span
from .schedules import ScheduleConfig, make_schedule


class DenseTable:
    def __init__(self, params: np.ndarray, optimizer: OptimizerConfig, schedule: ScheduleConfig,
                 consistency: ConsistencyConfig, total_updates: int | None, worker_ids, buffers: BufferTable,
                 metrics: ShardMetrics, where: str, fragments: int = 1, spread: bool = False):
        """``fragments``: the model is synced in this many fragments (streaming local steps), the push of each
        clock carrying one (``span``); each fragment has its own optimizer state. ``spread``: measure how far
        apart a round's pushes are (local steps: the drift between workers; a pass per push, so not per batch)."""
        self.where = where
        self.params = np.array(params, dtype=DTYPE, copy=True).reshape(-1)
        self.fragments = fragments
        self.optimizer = self._make_optimizer(optimizer)
        self.schedule = make_schedule(schedule, optimizer.lr, total_updates)
        self.consistency = Consistency(consistency, worker_ids, where)
        self.buffers = buffers
        self.metrics = metrics
        self.version = 0  # optimizer steps applied so far: the global step of the schedule
        self.staleness: Counter = Counter()  # pushes applied, by staleness
        self.applied = 0  # pushes applied (a round counts each of its pushes)
        self.dropped = 0  # pushes dropped as late (backup workers)
        self.spread = spread
        self.spread_sq = 0.0  # over measured rounds: sum of weight * |push - the round's mean|^2 on this range
        self.spread_rounds = 0
        self.unflushed_updates = 0  # updates not yet counted in Ray's metrics
        self._mean: np.ndarray | None = None  # a round's weighted sum, and one block of a term: made at the first
        self._term: np.ndarray | None = None  # round of more than one push

    @property
    def size(self) -> int:
        return int(self.params.size)

    def _make_optimizer(self, config: OptimizerConfig):
        if self.fragments == 1:
            return make_optimizer(config, self.size)
        return FragmentOptimizers(config, [fragment_span(self.size, self.fragments, c)
                                           for c in range(1, self.fragments + 1)])

    def span(self, clock: int) -> tuple[int, int]:
        """What of this range the push of ``clock`` carries and its answer returns: all of it, or one fragment."""
        return fragment_span(self.size, self.fragments, clock)

    def check(self, grad: object, clock: int = 0) -> None:
        """Refuse a malformed gradient for the push of ``clock`` before it touches any state (InputError, its
        reason counted)."""
        if not isinstance(grad, np.ndarray):
            raise InputError(f"{self.where}: gradient must be a numpy array, got {type(grad).__name__}", "type")
        if grad.dtype != DTYPE:
            raise InputError(f"{self.where}: gradient dtype must be {DTYPE}, got {grad.dtype}", "dtype")
        lo, hi = self.span(clock)
        if grad.shape != (hi - lo,):
            part = "" if self.fragments == 1 else f" (fragment {(clock - 1) % self.fragments} of clock {clock})"
            raise InputError(f"{self.where}: gradient shape must be {(hi - lo,)}{part}, got {grad.shape}", "shape")
        if not all_finite(grad):
            bad = int(np.count_nonzero(~np.isfinite(grad)))  # only on the way out: the count costs a pass
            raise InputError(f"{self.where}: gradient holds {bad} NaN or Inf values; gradients must be finite",
                             "non_finite")

    def push(self, worker_id: int, clock: int, grad: np.ndarray, pulled_version: int, num_samples: int,
             buffers: np.ndarray | None = None, held: bool = False) -> str:
        """A checked, new push of iteration ``clock``: ``"applied"`` (now, or gathered into its round) or
        ``"stale"`` (its round stepped without it: dropped and counted). ``held``: ``grad`` stays as it is
        until the push is answered, so a round keeps it without a copy."""
        def record() -> dict:  # copies: a transport may reuse its receive buffers before the round steps
            return {"grad": grad if held else grad.copy(), "num_samples": int(num_samples),
                    "pulled_version": int(pulled_version),
                    "buffers": None if buffers is None else buffers.copy()}

        action = self.consistency.accept(worker_id, clock, record)
        if action == "late":
            self.dropped += 1
            return "stale"
        if action == "apply":
            self._apply(grad, [self.version - int(pulled_version)], clock)
            if buffers is not None:
                self.buffers.report(worker_id, buffers, int(num_samples))
                self.buffers.merge()
        return "applied"

    def step_round(self) -> None:
        """Step once with a complete round's sample-weighted mean gradient (nothing while it is incomplete)."""
        clock = self.consistency.round_clock
        taken = self.consistency.take_round()
        if taken is None:
            return
        pending = [r for _, r in taken]
        if len(pending) == 1:  # exactly the worker's gradient: bit for bit with one process
            mean = pending[0]["grad"]
        else:
            total = sum(r["num_samples"] for r in pending)
            # Sample-weighted; a round whose pushes all say 0 samples (the wire allows it) takes the plain
            # mean, as the buffers do: dividing by 0 here once lost the round after it was taken.
            weights = [np.float32(r["num_samples"] / total if total else 1 / len(pending)) for r in pending]
            mean = self._weighted_sum([r["grad"] for r in pending], weights)
            if self.spread:
                self.spread_sq += sum(float(w) * float(np.sum(np.square(r["grad"] - mean, dtype=np.float64)))
                                      for r, w in zip(pending, weights))
                self.spread_rounds += 1
        self._apply(mean, [self.version - r["pulled_version"] for r in pending], clock)
        # The round's buffers become visible with its step, so a pull for the next clock sees exactly
        # this round's reports, whoever pushes next.
        for w, r in taken:
            if r["buffers"] is not None:
                self.buffers.report(w, r["buffers"], r["num_samples"])
        self.buffers.merge()

    def _weighted_sum(self, grads: list[np.ndarray], weights: list[np.float32]) -> np.ndarray:
        """sum(g * w) into a buffer kept for it, block by block with no allocation: the same float32 roundings,
        in the same order, as summing ``g * w`` from zeros."""
        if self._mean is None:
            self._mean, self._term = np.empty_like(self.params), np.empty(min(self.size, SUM_BLOCK), DTYPE)
        size = grads[0].size  # the range, or a fragment of it
        mean = self._mean[:size]
        for lo in range(0, size, SUM_BLOCK):
            hi = min(lo + SUM_BLOCK, size)
            out, term = mean[lo:hi], self._term[:hi - lo]
            np.multiply(grads[0][lo:hi], weights[0], out=out)
            for g, w in zip(grads[1:], weights[1:]):
                out += np.multiply(g[lo:hi], w, out=term)
        return mean

    def _apply(self, grad: np.ndarray, staleness: list[int], clock: int) -> None:
        """One optimizer step with ``grad`` on the values the push of ``clock`` carries (all, or a fragment),
        made of pushes of the given staleness."""
        lr = self.consistency.lr(self.schedule(self.version), staleness)
        if self.fragments == 1:
            self.optimizer.step(self.params, grad, lr)
        else:
            lo, hi = self.span(clock)
            self.optimizer.step(self.params[lo:hi], grad, lr, (clock - 1) % self.fragments)
        self.version += 1
        self.unflushed_updates += 1
        for tau in staleness:
            self.metrics.staleness.observe(tau)
        self.applied += len(staleness)
        self.staleness.update(staleness)

    # ---- checkpoints ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """The values, version, optimizer state and consistency state (clocks, the round being gathered)."""
        return {"params": self.params.copy(), "version": self.version, "optimizer": self.optimizer.state_dict(),
                **self.consistency.state_dict()}

    def counters(self) -> dict:
        return {"staleness": dict(self.staleness), "applied": self.applied, "dropped": self.dropped,
                "spread_sq": self.spread_sq, "spread_rounds": self.spread_rounds}

    def check_state(self, state: dict) -> None:
        """Raise ShapeError unless ``state`` fits this table: the parameters' and gathered gradients' shapes."""
        params = state["params"]
        if not isinstance(params, np.ndarray) or params.dtype != DTYPE or params.shape != self.params.shape:
            shown = getattr(params, "shape", type(params).__name__)
            raise ShapeError(f"{self.where}: state parameters ({shown}) must be {DTYPE} of shape {self.params.shape}")
        for w, r in state["round"].items():
            lo, hi = self.span(int(state["round_clock"]))
            if r["grad"].shape != (hi - lo,):
                raise ShapeError(f"{self.where}: the gathered gradient of worker {w} has shape {r['grad'].shape}")

    def load_state_dict(self, state: dict, counters: dict) -> None:
        """Restore a checked ``state_dict()`` and ``counters()`` (``check_state`` first)."""
        optimizer = self._make_optimizer(self.optimizer.config)
        optimizer.load_state_dict(state["optimizer"])  # each part checks itself on a copy first
        consistency = Consistency(self.consistency.config, [], self.where)
        consistency.load_state_dict(state)
        self.params[:] = state["params"]
        self.optimizer, self.consistency = optimizer, consistency
        self.version = int(state["version"])
        self.staleness = Counter(counters["staleness"])
        self.applied, self.dropped = int(counters["applied"]), int(counters["dropped"])
        self.spread_sq = float(counters.get("spread_sq", 0.0))  # a checkpoint cut before they were kept: none
        self.spread_rounds = int(counters.get("spread_rounds", 0))

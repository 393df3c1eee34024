"""ParameterShard: one range of the flat parameter vector, its optimizer, its clocks.

A plain class: the driver makes it a Ray actor with ``ray.remote`` at one call
site, and unit tests drive it directly with ``asyncio``. Its public methods are
coroutines so that, as a Ray async actor, a worker waiting on the consistency
bound does not block pushes from the others (one event loop, no locks: every
update runs to completion before the next coroutine resumes).

The hot path is ``push_pull``: apply (or aggregate) one worker's gradient,
advance its clock, wait until the consistency mode admits its next iteration,
and return the parameters; one call per step per shard.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Callable

import numpy as np

from ...protos.layout import DTYPE, all_finite
from .buffers import BufferTable
from .consistency import ClockTable, ConsistencyConfig, ConsistencyPolicy
from ...errors import LeftJobError, OutOfOrderError, RolledBackError, ShapeError
from .ledger import PushLedger
from ..compression.decoding import CodecMixin
from ..sparse.shard_tables import SparseMixin
from .shard_state import CutMixin, StateMixin, PendingGradient
from .metrics import ShardMetrics
from .optimizers import OptimizerConfig, make_optimizer
from ...protos.compression import Codec
from .schedules import ScheduleConfig, make_schedule


#: How often a shard's counters reach Ray's metrics outside the driver's stats() calls.
METRICS_FLUSH_S = 0.5


class ParameterShard(CutMixin, StateMixin, SparseMixin, CodecMixin):
    def __init__(
        self,
        shard_id: int,
        init_params: np.ndarray,
        worker_ids: list[int],
        optimizer: OptimizerConfig,
        schedule: ScheduleConfig,
        consistency: ConsistencyConfig,
        total_updates: int | None = None,
        run_id: str = "",
        init_buffers: np.ndarray | None = None,
        buffer_integer: np.ndarray | None = None,
        audit: bool = False,
        tables: tuple = (),
        num_shards: int = 1,
        codec: Codec | None = None,
        pull_codec: Codec | None = None,
    ):
        self.shard_id = shard_id
        self._init_codec(codec, pull_codec)  # how compressed pushes are decoded (ps/compression/decoding.py)
        self._params = np.array(init_params, dtype=DTYPE, copy=True).reshape(-1)
        # This shard's slice of the model's buffers (ps/core/buffers.py); empty for most models' later shards.
        self._buffers = BufferTable(init_buffers, buffer_integer)
        self._optimizer = make_optimizer(optimizer, self._params.size)
        self._lr = make_schedule(schedule, optimizer.lr, total_updates)
        self._config = consistency
        self._policy = ConsistencyPolicy(consistency)
        self._clocks = ClockTable(worker_ids)
        self._ledger = PushLedger(worker_ids)  # (worker, incarnation, seq) applied: exactly once
        self._joined_at = {int(w): 0 for w in worker_ids}  # the completed clock each worker (re)joined at
        self._high = 0  # the highest clock any worker completed: where a worker joins when none is live
        self._generation = 0  # one more per restore: a waiter from before a rollback is sent to register again
        self._frozen = False  # a checkpoint's cut: pushes wait at the gate ...
        self._barrier: dict[int, int] | None = None  # ... except those up to these clocks
        self._audit: list[tuple[int, int, int]] | None = [] if audit else None  # every applied triple, for tests
        self._version = 0  # optimizer steps applied so far: the global step of the schedule
        self._changed: asyncio.Event | None = None  # made lazily, inside the actor's event loop
        # bsp: the clock whose gradients are being gathered, and those gathered so far
        self._round_clock = 1
        self._round: dict[int, PendingGradient] = {}
        # what the driver reads back
        self._staleness = Counter()
        self._rejected = Counter()
        self._applied = 0
        self._dropped = 0
        self._duplicates = 0
        self._max_lead = 0
        self._wait_s = Counter()
        self._samples = Counter()
        self._loss: dict[int, float] = {}
        self._started = time.monotonic()
        self._metrics = ShardMetrics(shard_id, run_id)
        self._unflushed: Counter = Counter()  # (metric, outcome) -> count not yet sent to Ray's metrics
        self._next_flush = 0.0
        self._make_tables(tables, num_shards, worker_ids)  # sparse embedding tables (ps/sparse/shard_tables.py)
        self._memory_bytes = self._params.nbytes + self._buffers.nbytes + sum(
            v.nbytes for v in self._optimizer.state_dict().values() if isinstance(v, np.ndarray))

    def __repr__(self) -> str:  # the name Ray's dashboard shows for this actor
        return f"ps-shard-{self.shard_id}"

    # ---- the hot path -------------------------------------------------------------

    async def register(self, worker_id: int, incarnation: int = 0) -> tuple[np.ndarray, int, np.ndarray | None]:
        """A worker's first pull (and its first after a rollback): the parameters for its next
        iteration, their version and the merged buffers. ``position`` says which iteration that is."""
        self.check_registration(worker_id, incarnation)
        return await self._admit(worker_id, self._clocks.completed(worker_id) + 1)

    def check_registration(self, worker_id: int, incarnation: int) -> None:
        """Refuse all but the current incarnation; after a rollback, let it push again."""
        self._clocks.completed(worker_id)  # raises for an unknown worker
        self._ledger.check_incarnation(worker_id, int(incarnation), repr(self))
        self._ledger.registered(worker_id)

    def position(self, worker_id: int) -> tuple[int, int]:
        """Where a (re)registering worker carries on: its completed clock and last applied seq."""
        return self._clocks.completed(worker_id), self._ledger.last_seq(worker_id)

    def join(self, worker_id: int, incarnation: int, clock: int) -> None:
        """Let ``incarnation`` of ``worker_id`` (a replacement, or a worker added mid-job) join the
        clock table with ``clock`` completed; the controller picks one clock for every shard."""
        self._ledger.join(worker_id, incarnation)
        self._clocks.join(worker_id, clock)
        self._joined_at[worker_id] = clock
        self._tables_join(worker_id, clock)
        self._maybe_step_round()
        self._notify()

    def frontier(self) -> int:
        """The completed clock a joining worker should start from on this shard: the round being
        gathered (bsp) or the slowest live worker (asp, ssp), so it neither blocks nor leads anyone."""
        if self._config.mode == "bsp":
            return self._round_clock - 1
        slowest = self._clocks.min_completed()
        return self._high if slowest is None else slowest

    async def push_pull(
        self,
        worker_id: int,
        clock: int,
        grad: np.ndarray,
        pulled_version: int,
        num_samples: int,
        loss: float,
        buffers: np.ndarray | None = None,
        ahead: int = 0,
        incarnation: int = 0,
        seq: int = 0,
    ) -> tuple[np.ndarray, int, np.ndarray | None]:
        """Push the gradient of iteration ``clock``; return the parameters for iteration clock + 1.

        ``pulled_version`` is the version the gradient was computed from, so the
        shard can measure its staleness. A repeated ``(worker_id, clock)`` (a
        retry) is not applied twice. ``buffers`` is the worker's slice of its
        model buffers (float64; None: no report this step). ``ahead``: the
        worker computes that many iterations before its next push (overlap),
        so the answer waits until it may begin iteration ``clock + 1 + ahead``.
        Returns the parameters, their version and the merged buffers (None if
        this shard holds none). ``incarnation`` and ``seq``: see ``push``.
        """
        self.check_ahead(ahead)
        await self.gate(worker_id, clock)
        self.push(worker_id, clock, grad, pulled_version, num_samples, loss, buffers, incarnation, seq)
        return await self._admit(worker_id, clock + 1 + ahead)

    def check_ahead(self, ahead: int) -> None:
        """Computing ahead is for asp and ssp: a bsp round needs this worker's own next push."""
        if ahead and self._config.mode == "bsp":
            raise self._out_of_order(f"{self!r}: a bsp worker cannot compute ahead of its pull (ahead {ahead})")
        if ahead < 0:
            raise self._out_of_order(f"{self!r}: ahead ({ahead}) must be >= 0")

    def push(self, worker_id: int, clock: int, grad: np.ndarray, pulled_version: int,
             num_samples: int, loss: float, buffers: np.ndarray | None = None,
             incarnation: int = 0, seq: int = 0) -> str:
        """The push half of ``push_pull``: apply or gather, advance the clock; never waits.

        ``(worker_id, incarnation, seq)`` is applied at most once (ps/core/ledger.py);
        seq 0 means "the next one" (the clock's place in this incarnation), for
        callers that count clocks only.
        Returns the outcome: ``"applied"`` (applied, or gathered into its bsp
        round), ``"duplicate"`` (a retry, not applied again) or ``"stale"``
        (bsp backup workers: its round already stepped; dropped and counted).
        A compressed push's ``grad`` is its blob (uint8), decoded here first.
        """
        grad = self._decode_grad(grad)
        self._check_grad(grad)
        if buffers is not None:
            self._check_buffers(buffers)
        if not self._clocks.is_live(worker_id):
            self._clocks.completed(worker_id)  # raises for an unknown worker
            self.count_rejection("out_of_order")
            raise LeftJobError(f"{self!r}: worker {worker_id} has left the job; its push is refused")
        completed = self._clocks.completed(worker_id)
        if clock > completed and self._ledger.must_register(worker_id):
            self.count_rejection("rolled_back")
            raise RolledBackError(f"{self!r} was restored from a checkpoint; worker {worker_id} must register"
                                  " again before it pushes")
        if clock > completed + 1:
            # Recording it would turn every later push at normal clocks into a "duplicate"
            # that is silently dropped: a clock from the future is a protocol error.
            raise self._out_of_order(f"{self!r}: worker {worker_id} pushed clock {clock}, but its next clock is"
                                     f" {completed + 1}; a push's clock may not skip ahead")
        if not seq:
            seq = clock - self._joined_at.get(worker_id, 0)
        try:
            fresh = self._ledger.classify(worker_id, int(incarnation), int(seq), repr(self))
        except (OutOfOrderError, LeftJobError, RolledBackError):
            self.count_rejection("out_of_order")
            raise
        if fresh == "duplicate":
            self._duplicates += 1
            self._unflushed[("pushes", "duplicate")] += 1
            return "duplicate"
        if clock != completed + 1:
            raise self._out_of_order(f"{self!r}: worker {worker_id} pushed a new seq {seq} at clock {clock}, but"
                                     f" its next clock is {completed + 1}")
        outcome = "applied"
        if self._config.mode == "bsp":
            outcome = self._gather(worker_id, clock, grad, int(num_samples), pulled_version, buffers)
        else:
            self._apply(grad, [self._version - int(pulled_version)])
            if buffers is not None:
                self._buffers.report(worker_id, buffers, int(num_samples))
                self._buffers.merge()
        # after _gather, which refuses a push from the future: a refused push records nothing
        self._ledger.record(worker_id, int(seq))
        if self._audit is not None:
            self._audit.append((worker_id, int(incarnation), int(seq)))
        self._high = max(self._high, clock)
        self._samples[worker_id] += int(num_samples)
        self._loss[worker_id] = float(loss)
        self._clocks.advance(worker_id, clock)
        self._maybe_step_round()
        self._notify()
        self._unflushed[("pushes", outcome)] += 1
        if time.monotonic() >= self._next_flush:
            self._flush_metrics()
        return outcome

    async def pull_for(self, worker_id: int, clock: int, take: Callable[[np.ndarray], Any] | None = None,
                       ) -> tuple[Any, int]:
        """The pull half: wait until ``worker_id`` may begin iteration ``clock`` (0: no wait).

        ``take`` reads the parameters out (default: a copy) in the same step as
        the version, before any update can change them: a transport may pass its
        encoder and skip the copy. It must not keep the array it is given.
        Returns what ``take`` returned, the version and the merged buffers (a
        copy; None if this shard holds none).
        """
        self._clocks.completed(worker_id)  # raises for an unknown worker
        if clock <= 0:
            return self._take(take), self._version, self._buffer_copy()
        return await self._admit(worker_id, clock, take)

    def where(self) -> dict:
        """The Ray node this shard runs on, for the job's placement report."""
        from .placement_info import this_node
        return this_node()

    def check_worker(self, worker_id: int) -> None:
        """Raise UnknownWorkerError unless ``worker_id`` is part of the job."""
        self._clocks.completed(worker_id)

    def advance(self, worker_id: int, clock: int) -> None:
        """Advance a worker's clock without a gradient (an iteration it had nothing to push for)."""
        self._clocks.advance(worker_id, clock)
        self._maybe_step_round()
        self._notify()

    def applied_log(self) -> list[tuple[int, int, int]]:
        """Every ``(worker, incarnation, seq)`` applied, in order (only with ``audit``)."""
        return list(self._audit or [])

    def ledger(self) -> dict[int, tuple[int, int]]:
        """worker -> (incarnation, last applied seq)."""
        return self._ledger.snapshot()

    def _out_of_order(self, message: str) -> OutOfOrderError:
        """A request out of protocol order, counted (every transport answers it FAILED_PRECONDITION)."""
        self.count_rejection("out_of_order")
        return OutOfOrderError(message)

    def count_rejection(self, reason: str) -> None:
        """Count a request a transport refused before it reached the shard."""
        self._rejected[reason] += 1
        self._metrics.rejected.inc(tags={"reason": reason})

    @property
    def size(self) -> int:
        return int(self._params.size)

    @property
    def version(self) -> int:
        return self._version

    @property
    def buffer_size(self) -> int:
        """How many model-buffer values this shard holds (float64)."""
        return self._buffers.size

    async def finish(self, worker_id: int, incarnation: int | None = None) -> None:
        """A worker is done (or dead): it leaves the clock table and nobody waits for it.

        With ``incarnation``, only that life leaves: a late goodbye from a replaced
        worker must not take its replacement out of the table."""
        self._clocks.completed(worker_id)  # raises for an unknown worker
        if incarnation is not None and self._ledger.knows(worker_id) \
                and int(incarnation) != self._ledger.incarnation(worker_id):
            return
        self._clocks.leave(worker_id)
        self._tables_leave(worker_id)
        self._maybe_step_round()
        self._notify()

    async def pull(self) -> tuple[np.ndarray, int, np.ndarray | None]:
        """The current parameters, their version and merged buffers, for evaluation (no clock involved)."""
        return self._params.copy(), self._version, self._buffer_copy()

    # ---- applying updates ---------------------------------------------------------

    def _check_grad(self, grad: object) -> None:
        """Reject a malformed gradient before it touches any state."""
        if not isinstance(grad, np.ndarray):
            self.count_rejection("type")
            raise ShapeError(f"{self!r}: gradient must be a numpy array, got {type(grad).__name__}")
        if grad.dtype != DTYPE:
            self.count_rejection("dtype")
            raise ShapeError(f"{self!r}: gradient dtype must be {DTYPE}, got {grad.dtype}")
        if grad.shape != self._params.shape:
            self.count_rejection("shape")
            raise ShapeError(f"{self!r}: gradient shape must be {self._params.shape}, got {grad.shape}")
        if not all_finite(grad):
            self.count_rejection("non_finite")
            bad = int(np.count_nonzero(~np.isfinite(grad)))  # only on the way out: the count costs a pass
            raise ShapeError(f"{self!r}: gradient holds {bad} NaN or Inf values; gradients must be finite")

    def _check_buffers(self, buffers: object) -> None:
        try:
            self._buffers.check(buffers, repr(self))
        except ShapeError:
            self.count_rejection("buffers")
            raise

    def _apply(self, grad: np.ndarray, staleness: list[int]) -> None:
        """One optimizer step with ``grad``, made of pushes of the given staleness."""
        lr = self._lr(self._version)
        if self._config.staleness_aware_lr:
            lr /= max(1, max(staleness))
        self._optimizer.step(self._params, grad, lr)
        self._version += 1
        self._unflushed[("updates", "")] += 1
        for tau in staleness:
            self._metrics.staleness.observe(tau)
        self._applied += len(staleness)
        self._staleness.update(staleness)

    def _gather(self, worker_id: int, clock: int, grad: np.ndarray, n: int, pulled_version: int,
                buffers: np.ndarray | None = None) -> str:
        if clock < self._round_clock:  # its round already stepped without it (backup workers)
            self._dropped += 1
            return "stale"
        if clock > self._round_clock:
            raise self._out_of_order(
                f"{self!r}: worker {worker_id} pushed clock {clock} while clock {self._round_clock}"
                " is still being gathered; bsp workers must wait for each step"
            )
        # A copy: a transport may reuse its receive buffer before the round steps.
        self._round[worker_id] = PendingGradient(grad.copy(), n, pulled_version,
                                          None if buffers is None else buffers.copy())
        return "applied"

    def _maybe_step_round(self) -> None:
        """bsp: once the round has its quorum, step once with the sample-weighted mean gradient."""
        if self._config.mode != "bsp" or not self._round:
            return
        # Only live workers' gradients count toward the quorum: a worker that pushed
        # and then left must not let the round step without a live worker's gradient.
        # A worker that joined after this round began owes it nothing (its first push is a later clock).
        expected = {w for w in self._clocks.live if self._joined_at.get(w, 0) < self._round_clock}
        if sum(w in expected for w in self._round) < self._policy.quorum(self._clocks, len(expected)):
            return
        # In worker order, never arrival order: a bsp run is reproducible bit for bit.
        workers = sorted(self._round)
        pending = [self._round[w] for w in workers]
        if len(pending) == 1:  # exactly the worker's gradient: bit-for-bit with one process
            mean = pending[0].grad
        else:  # weighted by samples, so it equals the gradient of the combined batch
            total = sum(p.num_samples for p in pending)
            mean = np.zeros_like(self._params)
            for p in pending:
                mean += p.grad * np.float32(p.num_samples / total)
        self._apply(mean, [self._version - p.pulled_version for p in pending])
        # The round's buffers become visible with its step, so a pull for the next
        # clock sees exactly this round's reports, whoever pushes next.
        for w, p in zip(workers, pending):
            if p.buffers is not None:
                self._buffers.report(w, p.buffers, p.num_samples)
        self._buffers.merge()
        self._round.clear()
        self._round_clock += 1

    # ---- waiting ------------------------------------------------------------------

    def _flush_metrics(self) -> None:
        """Counters and each live worker's clock lag to Ray's metrics: a few times a second, not per push.

        (Per push, the calls cost the hot path several percent; the staleness
        histogram still sees every update, as its counts must match the summary.)
        """
        for (name, outcome), n in self._unflushed.items():
            if n and name == "pushes":
                self._metrics.pushes.inc(n, tags={"outcome": outcome})
            elif n:
                self._metrics.updates.inc(n)
        self._unflushed.clear()
        clocks = self._clocks.snapshot()
        fastest = max(clocks.values(), default=0)
        for worker, clock in clocks.items():
            self._metrics.clock_lag.set(fastest - clock, tags={"worker": str(worker)})
        if self._tables:
            self._metrics.table_gauges(self._tables_stats())
        self._next_flush = time.monotonic() + METRICS_FLUSH_S

    def _notify(self) -> None:
        """Wake every waiter to re-check its condition (one event per change)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _ready(self, clock: int) -> bool:
        if self._config.mode == "bsp":
            return self._round_clock >= clock
        return self._policy.admits(self._clocks, clock)

    async def wait_until(self, ready: Callable[[], bool], worker_id: int, what: str) -> float:
        """Wait until ``ready()``, re-checked at every change; return the seconds waited. A restore
        meanwhile ends the wait with RolledBackError: what was waited for is gone."""
        if ready():
            return 0.0
        generation, began = self._generation, time.monotonic()
        while not ready():
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()
            if self._generation != generation:
                raise RolledBackError(f"{self!r} was restored from a checkpoint while worker {worker_id}"
                                      f" waited for {what}; it must register again")
        return time.monotonic() - began

    async def _admit(self, worker_id: int, clock: int, take: Callable[[np.ndarray], Any] | None = None,
                     ) -> tuple[Any, int]:
        """Wait until ``worker_id`` may begin iteration ``clock``; then hand it the parameters."""
        waited = await self.wait_until(lambda: self._ready(clock), worker_id, f"iteration {clock}")
        if waited:
            self._wait_s[worker_id] += waited
            self._metrics.wait_s.inc(waited, tags={"worker": str(worker_id)})
        if self._clocks.is_live(worker_id):
            self._max_lead = max(self._max_lead, self._policy.lead(self._clocks, clock))
        return self._take(take), self._version, self._buffer_copy()

    def _buffer_copy(self) -> np.ndarray | None:
        return self._buffers.values.copy() if self._buffers.size else None

    def _take(self, take: Callable[[np.ndarray], Any] | None):
        # A copy by default, because the buffer changes under the next update while
        # Ray may still be serializing this reply.
        return self._params.copy() if take is None else take(self._params)

    # ---- what the driver reads ----------------------------------------------------

    async def stats(self) -> dict:
        self._metrics.memory_bytes.set(self._memory_bytes)
        self._flush_metrics()  # the tables' gauges too, whenever the driver looks
        return {
            "shard_id": self.shard_id,
            "size": int(self._params.size),
            "buffer_size": self._buffers.size,
            "version": self._version,
            "clocks": self._clocks.snapshot(),
            "pushes_applied": self._applied,
            "pushes_dropped": self._dropped,
            "duplicates": self._duplicates,
            "rejected": dict(self._rejected),
            "staleness_histogram": {int(k): v for k, v in sorted(self._staleness.items())},
            "max_clock_gap": self._max_lead,
            "wait_s": {int(k): round(v, 4) for k, v in self._wait_s.items()},
            "samples": dict(self._samples),
            "loss": dict(self._loss),
            "uptime_s": time.monotonic() - self._started,
            "memory_bytes": self._memory_bytes,
            "ledger": {w: list(v) for w, v in self._ledger.snapshot().items()},
            "tables": self._tables_stats(),
            "codec": self._codec.name,
            "decode_s": round(self._decode_s, 6),
        }

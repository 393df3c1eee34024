"""ParameterShard: one range of the flat parameters and the tables beside it, and the one entry point of a step.

A plain class: the driver makes it a Ray actor (ps/served.py), and unit
tests drive it directly with ``asyncio``. Its public methods are coroutines
so that, as a Ray async actor, a worker waiting on the consistency bound
does not block the others' pushes (one event loop, no locks: every update
runs to completion before the next coroutine resumes).

Every transport decodes its request into a ``Step`` (ps/core/step.py) and
calls ``step``: check how far ahead the worker computes, wait at the
checkpoint gate, push, wait until the consistency mode admits the worker's
next iteration, and answer with the parameters. The shard decides who may
push (a live worker, its current incarnation, registered again after a
rollback) and counts every refusal by reason; what a push does is asked of
the parts it holds, each with its own small interface:

- ``DenseTable`` (ps/core/dense.py): the parameters, optimizer, schedule and
  consistency mode;
- ``BufferTable`` (ps/core/buffers.py): model buffers and their merge;
- ``PushLedger`` (ps/core/ledger.py): each ``(worker, incarnation, seq)`` once;
- ``CheckpointCut`` (ps/core/cut.py): the gate a checkpoint holds pushes at;
- ``SparseTables`` (ps/sparse/tables.py): embedding tables, each with its own mode;
- ``ShardDecoder`` (ps/compression/decoding.py): compressed pushes to float32;
- ``Changes`` (ps/core/changes.py): waking waiters, and ending their waits on a restore.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Callable

import numpy as np

from ..errors import InputError, LeftJobError, OutOfOrderError, RolledBackError, ShapeError, UnknownTableError
from ..protos.compression import Codec
from .compression.decoding import ShardDecoder, is_blob
from .core.buffers import BufferTable
from .core.changes import Changes
from .core.consistency import Consistency, ConsistencyConfig
from .core.cut import CheckpointCut
from .core.dense import DenseTable
from .core.ledger import PushLedger
from .core.metrics import ShardMetrics
from .core.placement_info import peak_rss_bytes, rss_bytes
from .core.optimizers import OptimizerConfig, state_nbytes
from .core.schedules import ScheduleConfig
from .core.series import StepSeries
from .core.step import MAX_AHEAD, MAX_CLOCK, Answer, Pulled, Step
from .sparse.table import SparseTable
from .sparse.tables import SparseTables

#: How often a shard's counters reach Ray's metrics outside the driver's stats() calls.
METRICS_FLUSH_S = 0.5

Take = Callable[[np.ndarray], Any]


class ParameterShard:
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
        history_every: int = 0,
        fragments: int = 1,
        spread: bool = False,
    ):
        """``history_every``: a row of the job's counters every so many steps (every worker's; 0: none).
        ``fragments``: each push carries one of this many fragments of the range, in turn by clock, and its
        answer returns that fragment (streaming local steps; ``span``). ``spread``: measure how far apart a
        round's pushes are (local steps: the drift between workers)."""
        self.shard_id = shard_id
        where = repr(self)
        self._metrics = ShardMetrics(shard_id, run_id)
        self._buffers = BufferTable(init_buffers, buffer_integer)
        self._dense = DenseTable(init_params, optimizer, schedule, consistency, total_updates, worker_ids,
                                 self._buffers, self._metrics, where, fragments, spread)
        self._ledger = PushLedger(worker_ids)  # (worker, incarnation, seq) applied: exactly once
        self._changes = Changes(where)
        self._cut = CheckpointCut(self._changes)
        self._tables = SparseTables(tables, shard_id, num_shards, worker_ids, where)
        self._tables_clean_at: int | None = None  # the checkpoint the tables' change logs run from
        self._decoder = ShardDecoder(codec, pull_codec, where)
        self._audit: list[tuple[int, int, int]] | None = [] if audit else None  # every applied triple, for tests
        # what the driver reads back
        self._rejected: Counter = Counter()
        self._duplicates = 0
        self._max_lead = 0
        self._wait_s: Counter = Counter()
        self._samples: Counter = Counter()
        self._steps: Counter = Counter()  # fresh pushes per worker (applied or dropped late): the job's steps
        self._loss: dict[int, float] = {}
        self._series = StepSeries(history_every)
        self._started = time.monotonic()
        self._unflushed: Counter = Counter()  # pushes by outcome not yet sent to Ray's metrics
        self._next_flush = 0.0
        self._memory_bytes = (self._dense.params.nbytes + self._buffers.nbytes
                              + state_nbytes(self._dense.optimizer.state_dict()))

    def __repr__(self) -> str:  # the name Ray's dashboard shows for this actor
        return f"ps-shard-{self.shard_id}"

    @property
    def _clocks(self):
        """The job's workers as this shard knows them: the dense range's clock table."""
        return self._dense.consistency.clocks

    # ---- the step ---------------------------------------------------------------------

    async def step(self, step: Step, take: Take | None = None) -> Answer:
        """Push ``step``'s gradient; answer with the parameters for iteration ``step.answers``.

        ``take(params, outcome)`` reads the parameters out (default: a copy) in
        the same turn of the event loop as their version, before any update can
        change them: a transport may pass its encoder and skip the copy. It must
        not keep the array it is given.
        """
        self.check_ahead(step.worker_id, step.ahead)
        outcome = await self.push(step)
        read = None if take is None else (lambda params: take(params, outcome))
        return Answer(*await self.pull_for(step.worker_id, step.answers, read, self.span(step.clock)), outcome)

    def span(self, clock: int) -> tuple[int, int]:
        """What of this shard's range the push of ``clock`` carries and its answer returns (``[lo, hi)``): all of
        it, or with fragments one of them (ps/core/partition.py: ``fragment_span``)."""
        return self._dense.span(clock)

    def check_ahead(self, worker_id: int, ahead: int) -> None:
        """Computing ahead only where the mode keeps its bound with it (a bsp round needs the worker's push),
        and never past the bound: the answer admits iteration clock + 1 + ahead, which is ``ahead`` past the
        worker's own completed clock, so beyond the bound it would wait for a push the worker has not made."""
        if ahead < 0:
            raise self._refuse("out_of_order", OutOfOrderError(f"{self!r}: ahead ({ahead}) must be >= 0"))
        if ahead > MAX_AHEAD:
            raise self._refuse("ahead", InputError(
                f"{self!r}: worker {worker_id} says it computes {ahead} iterations ahead of its pull; at most"
                f" {MAX_AHEAD} can be true", "ahead"))
        consistency = self._dense.consistency
        if not consistency.may_compute_ahead(ahead):
            mode = consistency.config.mode
            raise self._refuse("out_of_order", OutOfOrderError(
                f"{self!r}: a {mode} worker cannot compute ahead of its pull (ahead {ahead})"))
        bound = consistency.config.bound
        if bound is not None and ahead > bound:
            raise self._refuse("out_of_order", OutOfOrderError(
                f"{self!r}: worker {worker_id} computes {ahead} iterations ahead, past the staleness bound"
                f" {bound}: its answer would wait for its own next push (ahead must be at most {bound})"))

    async def push(self, step: Step) -> str:
        """The push half of ``step``: wait at the checkpoint gate, then apply or gather; the outcome
        (``"applied"``, ``"duplicate"``: a retry, not applied again, or ``"stale"``: its round stepped
        without it, dropped and counted)."""
        if self._cut.frozen:
            await self._cut.gate(step.worker_id, step.clock)
        return self._push_now(step)

    def _push_now(self, s: Step) -> str:
        grad = s.grad
        if is_blob(grad):  # a compressed push: float32 before any check or update
            grad = self._checked(self._decoder.grad, grad, self._dense.size)
        lo, hi = self._dense.span(s.clock)
        whole = grad is s.grad and isinstance(grad, np.ndarray) and grad.shape == (self._dense.size,)
        if whole and hi - lo != grad.size:  # a fragment's push as a view of the whole range (shm): its part
            grad = grad[lo:hi]
        self._checked(self._dense.check, grad, s.clock)
        if s.buffers is not None:
            self._check_buffers(s.buffers)
        self._checked(self._check_header, s)
        worker, completed = s.worker_id, self._clocks.completed(s.worker_id)  # raises for an unknown worker
        if not self._clocks.is_live(worker):
            raise self._refuse("out_of_order", LeftJobError(
                f"{self!r}: worker {worker} has left the job; its push is refused"))
        if s.clock > completed and self._ledger.must_register(worker):
            raise self._refuse("rolled_back", RolledBackError(
                f"{self!r} was restored from a checkpoint; worker {worker} must register again before it pushes"))
        if s.clock > completed + 1:
            # Recording it would turn every later push at normal clocks into a "duplicate"
            # that is silently dropped: a clock from the future is a protocol error.
            raise self._refuse("out_of_order", OutOfOrderError(
                f"{self!r}: worker {worker} pushed clock {s.clock}, but its next clock is {completed + 1};"
                " a push's clock may not skip ahead"))
        self._check_incarnation(worker, int(s.incarnation))  # a zombie's seq is not this incarnation's
        seq = self._checked(self._seq_of, s)
        try:
            fresh = self._ledger.classify(worker, int(s.incarnation), seq, repr(self))
        except (OutOfOrderError, LeftJobError, RolledBackError) as e:
            raise self._refuse("out_of_order", e)
        if fresh == "duplicate":
            self._duplicates += 1
            self._unflushed["duplicate"] += 1
            return "duplicate"
        if s.clock != completed + 1:
            raise self._refuse("out_of_order", OutOfOrderError(
                f"{self!r}: worker {worker} pushed a new seq {seq} at clock {s.clock}, but its next clock is"
                f" {completed + 1}"))
        self._checked(self._check_counts, s)
        try:
            outcome = self._dense.push(worker, int(s.clock), grad, s.pulled_version, s.num_samples, s.buffers,
                                       held=s.held and (grad is s.grad or whole))
        except OutOfOrderError as e:  # a round not yet gathered: nothing was recorded
            raise self._refuse("out_of_order", e)
        self._ledger.record(worker, seq)
        if self._audit is not None:
            self._audit.append((worker, int(s.incarnation), seq))
        self._samples[worker] += int(s.num_samples)
        if not math.isnan(s.loss):  # NaN: the worker's loop reported no loss (worker/loop/context.py); keep none
            self._loss[worker] = float(s.loss)
        self._steps[worker] += 1
        self._series.stepped(sum(self._steps.values()), self._progress)
        self._changed()
        self._unflushed[outcome] += 1
        if time.monotonic() >= self._next_flush:
            self._flush_metrics()
        return outcome

    async def pull_for(self, worker_id: int, clock: int, take: Take | None = None,
                       span: tuple[int, int] | None = None) -> Pulled:
        """The pull half: wait until ``worker_id`` may begin iteration ``clock`` (0: no wait); the parameters
        (``span`` of them: a push's fragment) as ``take`` read them, their version and the merged buffers (a
        copy; None where the shard holds none)."""
        self.check_worker(worker_id)
        if clock > 0:
            self._check_pull_clock(self._dense.consistency, worker_id, clock, repr(self))
            waited = await self._changes.until(lambda: self._dense.consistency.admits(clock), worker_id,
                                               f"iteration {clock}")
            if waited:
                self._wait_s[worker_id] += waited
                self._metrics.wait_s.inc(waited, tags={"worker": str(worker_id)})
            if self._clocks.is_live(worker_id):
                self._max_lead = max(self._max_lead, self._dense.consistency.lead(clock))
        return self._answer(take, span)

    async def pull(self) -> Pulled:
        """The current parameters, their version and merged buffers, for evaluation (no clock involved)."""
        return self._answer(None)

    def _answer(self, take: Take | None, span: tuple[int, int] | None = None) -> Pulled:
        values = self._dense.params if span is None else self._dense.params[span[0]:span[1]]
        # A copy by default: the buffer changes under the next update while Ray may still be serializing it.
        params = values.copy() if take is None else take(values)
        buffers = self._buffers.values.copy() if self._buffers.size else None
        return Pulled(params, self._dense.version, buffers)

    # ---- workers: who may call, joining and leaving -------------------------------------

    def check_worker(self, worker_id: int) -> None:
        """Raise UnknownWorkerError unless ``worker_id`` is part of the job."""
        self._clocks.completed(worker_id)

    def enter(self, worker_id: int, incarnation: int = 0) -> tuple[int, int]:
        """A worker (re)registers: refuse all but its current incarnation, let it push again after a
        rollback, and say where it carries on (``position``)."""
        self.check_worker(worker_id)
        self._check_incarnation(worker_id, int(incarnation))
        self._ledger.registered(worker_id)
        return self.position(worker_id)

    def position(self, worker_id: int) -> tuple[int, int]:
        """Where a worker carries on: its completed clock and last applied seq."""
        return self._clocks.completed(worker_id), self._ledger.last_seq(worker_id)

    async def register(self, worker_id: int, incarnation: int = 0, take: Take | None = None,
                       ) -> tuple[int, int, Pulled]:
        """``enter``, then the parameters for the worker's next iteration."""
        clock, seq = self.enter(worker_id, incarnation)
        return clock, seq, await self.pull_for(worker_id, clock + 1, take)

    def join(self, worker_id: int, incarnation: int, clock: int) -> None:
        """Let ``incarnation`` of ``worker_id`` (a replacement, or a worker added mid-job) join with
        ``clock`` completed; the controller picks one clock for every shard."""
        self._ledger.join(worker_id, incarnation)
        self._dense.consistency.join(worker_id, clock)
        self._tables.join(worker_id, clock)
        self._changed()

    def frontier(self) -> int:
        """The completed clock a joining worker should start from on this shard (the mode says)."""
        return self._dense.consistency.frontier()

    async def finish(self, worker_id: int, incarnation: int | None = None) -> None:
        """A worker is done (or dead): it leaves every clock table and nobody waits for it.

        With ``incarnation``, only that life leaves: a late goodbye from a replaced
        worker must not take its replacement out of the table."""
        self.check_worker(worker_id)
        if incarnation is not None and self._ledger.knows(worker_id) \
                and int(incarnation) != self._ledger.incarnation(worker_id):
            return
        self._dense.consistency.leave(worker_id)
        self._tables.leave(worker_id)
        self._changed()

    def advance(self, worker_id: int, clock: int, incarnation: int = 0) -> None:
        """Advance a worker's clock without a gradient (iterations it had nothing to push for): only the current
        incarnation of a live, registered worker, to a clock that can be true (1 .. MAX_CLOCK), and under a
        gathering mode (bsp) only over rounds that already stepped: the round being gathered needs its push."""
        self.check_worker(worker_id)
        clock = int(clock)
        if not 1 <= clock <= MAX_CLOCK:
            raise self._refuse("clock", InputError(
                f"{self!r}: worker {worker_id} advanced to clock {clock}; a completed clock is 1 .. {MAX_CLOCK}",
                "clock"))
        self._check_caller(worker_id, incarnation, "clock advance")
        consistency = self._dense.consistency
        if not consistency.may_advance(clock):
            raise self._refuse("out_of_order", OutOfOrderError(
                f"{self!r}: worker {worker_id} advanced to clock {clock}, but the {consistency.config.mode} round"
                f" of clock {consistency.round_clock} needs its push; it may advance only over rounds that"
                f" stepped (to clock {consistency.round_clock - 1} at most)"))
        self._clocks.advance(worker_id, clock)
        self._changed()

    def _changed(self) -> None:
        """After any change of clocks: step a round that is now complete, and wake every waiter."""
        self._dense.step_round()
        self._changes.notify()

    # ---- sparse tables ------------------------------------------------------------------

    async def sparse_pull(self, worker_id: int, table: str, ids: np.ndarray, clock: int = 0,
                          incarnation: int = 0) -> tuple[np.ndarray, int]:
        """The rows ``ids`` of ``table`` for iteration ``clock`` (waiting as the table's mode says;
        0: no wait), created on first touch. Returns the rows (float32, len(ids) x dim) and the
        table's version on this shard."""
        t = self._table(table)
        ids = self._checked(t.check_ids, ids)
        self._check_caller(worker_id, incarnation, "sparse call")
        if clock > 0:
            self._check_pull_clock(t.consistency, worker_id, clock, repr(t))
        waited = await self._changes.until(lambda: t.ready(clock), worker_id, f"table {table!r} iteration {clock}")
        t.admitted(worker_id, clock, waited)
        return t.rows(ids, worker_id), t.version

    async def sparse_push(self, worker_id: int, table: str, clock: int, ids: np.ndarray, grads: np.ndarray,
                          num_samples: int = 1, incarnation: int = 0) -> str:
        """Push the summed row gradients of iteration ``clock`` (every step, also with no ids, so the
        table's clocks move on). Returns ``applied``, ``duplicate`` or ``stale``, as a dense push."""
        t = self._table(table)
        self._checked(self._check_sparse_header, t, clock, num_samples)
        ids = self._checked(t.check_ids, ids)
        grads = self._checked(self._decoder.rows, grads, len(ids), t.config.dim)
        grads = self._checked(t.check_grads, ids, grads)
        self._check_caller(worker_id, incarnation, "sparse call")
        await self._cut.gate(worker_id, clock)
        self._check_caller(worker_id, incarnation, "sparse call")  # a restore may have happened at the gate
        try:
            outcome = t.push(worker_id, int(clock), ids, grads, int(num_samples))
        except OutOfOrderError as e:
            raise self._refuse("out_of_order", e)
        self._changes.notify()
        return outcome

    async def sparse_lookup(self, table: str, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` as they stand, for evaluation: no clock, no touch, nothing created."""
        t = self._table(table)
        return t.rows(self._checked(t.check_ids, ids))

    def peak_rss(self) -> int:
        """The most resident memory this shard's process has held (bytes)."""
        return peak_rss_bytes()

    async def sparse_export(self, table: str, part: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
        """Part ``part`` of the rows this shard holds of ``table``: ids (int64) and values (float32 rows x dim),
        and whether a part ``part + 1`` follows (a table beyond memory hands its rows back a block at a time)."""
        return self._table(table).store.export(part)

    def _table(self, name: str) -> SparseTable:
        try:
            return self._tables.get(name)
        except UnknownTableError as e:
            raise self._refuse("unknown_table", e)

    def _check_caller(self, worker_id: int, incarnation: int, what: str) -> None:
        """The dense pushes' rules for a worker's other calls (a clock advance, a sparse pull or push; ``what``
        names it in messages): a live worker, its current incarnation, registered again after a restore."""
        self.check_worker(worker_id)
        if not self._clocks.is_live(worker_id):
            raise self._refuse("out_of_order", LeftJobError(
                f"{self!r}: worker {worker_id} has left the job; its {what} is refused"))
        self._check_incarnation(worker_id, int(incarnation))
        if self._ledger.must_register(worker_id):
            raise self._refuse("rolled_back", RolledBackError(
                f"{self!r} was restored from a checkpoint; worker {worker_id} must register again before its"
                f" {what}"))

    def _check_incarnation(self, worker_id: int, incarnation: int) -> None:
        """Refuse (and count) any incarnation but the current one: a replaced one, or one not joined yet."""
        if self._ledger.knows(worker_id):
            try:
                self._ledger.check_incarnation(worker_id, incarnation, repr(self))
            except (LeftJobError, OutOfOrderError) as e:
                raise self._refuse("out_of_order", e)

    def _check_pull_clock(self, consistency: Consistency, worker_id: int, clock: int, where: str) -> None:
        """A pull waits until ``worker_id`` may begin iteration ``clock``; that is at most MAX_AHEAD past its
        next one (completed + 1). Anything further could only be admitted after pushes the worker has not made:
        it would wait out its deadline, and its lead would be recorded as a clock gap in every later Stats."""
        clocks = consistency.clocks
        if clocks.is_live(worker_id):
            at = clocks.completed(worker_id)
        else:  # a worker that left has no clock of its own: the furthest the table has seen
            at = max([consistency.high, *clocks.snapshot().values()])
        if clock > at + 1 + MAX_AHEAD:
            raise self._refuse("out_of_order", OutOfOrderError(
                f"{where}: worker {worker_id} asked to begin iteration {clock}, but its next is {at + 1}; a pull may"
                f" ask at most {MAX_AHEAD} iterations past it"))

    # ---- refusals -------------------------------------------------------------------------

    def count_rejection(self, reason: str) -> None:
        """Count a refused request (a transport counts those it refuses before they reach the shard)."""
        self._rejected[reason] += 1
        self._metrics.rejected.inc(tags={"reason": reason})

    def _refuse(self, reason: str, error: Exception) -> Exception:
        self.count_rejection(reason)
        return error

    def _checked(self, check: Callable, *args):
        """``check(*args)``, counting the reason of an InputError it raises."""
        try:
            return check(*args)
        except InputError as e:
            raise self._refuse(e.reason, e)

    def _check_header(self, s: Step) -> None:
        """A push's own fields must be ones that can be true whatever the shard's state: clocks count from 1
        and a loss is a number (NaN: none reported). Checked before any state is read; a genuine retry repeats
        a push that passed these same checks, so none of them turns a retry into a refusal."""
        if int(s.clock) < 1:
            raise InputError(f"{self!r}: worker {s.worker_id} pushed clock {int(s.clock)}; clocks count from 1 (a"
                             " push's clock is the iteration its gradient completes)", "clock")
        if math.isinf(s.loss):
            raise InputError(f"{self!r}: worker {s.worker_id} pushed loss {float(s.loss)}; a loss must be finite"
                             " (NaN: none reported)", "loss")

    def _seq_of(self, s: Step) -> int:
        """The push's seq: as sent, or for seq 0 the clock's place in the incarnation (clock minus the clock it
        joined at). Seqs count from 1, so anything less names no push this incarnation could have made: a
        malformed header, never a retry."""
        joined = self._dense.consistency.joined_at.get(s.worker_id, 0)
        seq = int(s.seq) or int(s.clock) - joined
        if seq < 1:
            sent = f"seq {int(s.seq)}" if int(s.seq) else \
                f"seq 0 at clock {int(s.clock)}, the incarnation having joined at clock {joined} (seq {seq})"
            raise InputError(f"{self!r}: worker {s.worker_id} pushed {sent}; seqs count from 1", "seq")
        return seq

    def _check_sparse_header(self, table: SparseTable, clock: int, num_samples: int) -> None:
        """A sparse push's fields that can never be true: clock 0 (clocks count from 1; a retry of a clock
        already applied is answered DUPLICATE, but 0 was never one), a sample count outside uint32."""
        if int(clock) < 1:
            raise InputError(f"{table!r}: a sparse push of clock {int(clock)}; clocks count from 1", "clock")
        _check_num_samples(table, num_samples)

    def _check_counts(self, s: Step) -> None:
        """A push's version and counts must be ones that can be true. A gradient is computed from a version
        this shard has served, so a ``pulled_version`` ahead of it is refused (it would be recorded as a
        negative staleness and break every later ``Stats``); so is a sample count outside uint32, the wire's.
        Checked after the push is known to be new and in order, so a push from before a rollback is still
        answered ``rolled_back`` (retryable), not refused as malformed."""
        version = self._dense.version
        if not 0 <= int(s.pulled_version) <= version:
            raise InputError(f"{self!r}: pulled_version {int(s.pulled_version)} is not a version this shard has"
                             f" served (0..{version}); a gradient is computed from parameters it pulled",
                             "future_version")
        _check_num_samples(self, s.num_samples)

    def _check_buffers(self, buffers: object) -> None:
        try:
            self._buffers.check(buffers, repr(self))
        except ShapeError as e:
            raise self._refuse("buffers", e)

    # ---- a checkpoint's cut, and the whole state out and back in --------------------------

    def freeze(self) -> dict[int, int]:
        """Begin a cut: hold every push from now on; each live worker's completed clock (tables included)."""
        self._cut.freeze()
        return self._tables.fold_clocks(self._clocks.snapshot())

    async def cut(self, clocks: dict[int, int], timeout_s: float = 5.0) -> bool:
        """Let through the held pushes up to ``clocks`` (the highest every shard saw) and wait until this
        shard has them all. False if a worker's push never came (it died mid-push) within ``timeout_s``."""
        return await self._cut.cut(clocks, self._reached, timeout_s)

    def _reached(self, barrier: dict[int, int]) -> bool:
        known = self._ledger.knows
        return all(not self._clocks.is_live(w) or self._clocks.completed(w) >= c
                   for w, c in barrier.items() if known(w)) and self._tables.reached(barrier, known)

    def thaw(self) -> None:
        """End a cut: the held pushes go on."""
        self._cut.thaw()

    def state_dict(self, tables_since: int | None = None, cut: int | None = None) -> dict:
        """Everything the shard's future depends on, as copies: parameters, version, optimizer state,
        clocks and the round being gathered, model buffers and reports, the push ledger, the sparse tables
        and the counters the summary reports. ``load_state_dict`` on a shard built with the same config
        resumes exactly where this one stands.

        Incremental checkpoints: ``cut`` names the checkpoint this state is for; ``tables_since`` the one
        before it. When the tables' change logs run from exactly that one (the last state taken was for it,
        or it was restored), the tables give only the rows changed since, and the state says so
        (``tables_since``); otherwise they are given whole (None)."""
        delta = bool(self._tables) and tables_since is not None and tables_since == self._tables_clean_at
        self._tables_clean_at = cut
        return {
            "shard_id": self.shard_id,
            "tables_since": tables_since if delta else None,
            **self._dense.state_dict(),
            "buffers": self._buffers.state_dict(),
            "ledger": self._ledger.state_dict(),
            "audit": [list(t) for t in self._audit] if self._audit is not None else None,
            "tables": self._tables.state_dict(delta),
            "counters": {**self._dense.counters(), "rejected": dict(self._rejected), "duplicates": self._duplicates,
                         "max_lead": self._max_lead, "wait_s": dict(self._wait_s), "samples": dict(self._samples),
                         "steps": dict(self._steps), "loss": dict(self._loss)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; every part checks it first, so a bad one changes nothing. Afterwards
        every worker must register again: its clock moved back under it."""
        if state.get("shard_id") != self.shard_id:
            raise ShapeError(f"{self!r}: the state is ps-shard-{state.get('shard_id')}'s")
        if state.get("tables_since") is not None:
            raise ShapeError(f"{self!r}: the state holds only the table rows changed since checkpoint"
                             f" {state['tables_since']}; merge it onto that one first")
        self._dense.check_state(state)
        BufferTable(self._buffers.values, self._buffers.integer).load_state_dict(state["buffers"])
        ledger = PushLedger()
        ledger.load_state_dict(state["ledger"])
        self._tables.check_state(state.get("tables"))
        c = state["counters"]
        self._dense.load_state_dict(state, c)
        self._buffers.load_state_dict(state["buffers"])
        self._tables.load_state_dict(state.get("tables"))
        ledger.mark_rolled_back()
        self._ledger = ledger
        self._tables_clean_at = None  # ServedShard names the checkpoint it restored
        if self._audit is not None:  # what the restored state holds was applied; what came after was undone
            self._audit = [tuple(t) for t in (state.get("audit") or [])]
        self._rejected, self._duplicates, self._max_lead = Counter(c["rejected"]), c["duplicates"], c["max_lead"]
        self._wait_s, self._samples, self._loss = Counter(c["wait_s"]), Counter(c["samples"]), dict(c["loss"])
        # a checkpoint from before steps were counted: its ledger's seqs are each worker's steps in its life
        self._steps = Counter(c["steps"] if "steps" in c else {w: seq for w, (_, seq) in ledger.snapshot().items()})
        self._series.restored()
        self._cut.thaw()
        self._changes.restored()

    # ---- what the driver and the transports read ------------------------------------------

    def where(self) -> dict:
        """The Ray node this shard runs on, for the job's placement report."""
        from .core.placement_info import this_node
        return this_node()

    def applied_log(self) -> list[tuple[int, int, int]]:
        """Every ``(worker, incarnation, seq)`` applied, in order (only with ``audit``)."""
        return list(self._audit or [])

    def ledger(self) -> dict[int, tuple[int, int]]:
        """worker -> (incarnation, last applied seq)."""
        return self._ledger.snapshot()

    @property
    def size(self) -> int:
        return self._dense.size

    @property
    def version(self) -> int:
        return self._dense.version

    @property
    def buffer_size(self) -> int:
        """How many model-buffer values this shard holds (float64)."""
        return self._buffers.size

    @property
    def codec(self) -> Codec:
        return self._decoder.codec

    @property
    def pull_codec(self) -> Codec:
        return self._decoder.pull

    def place_params(self, array: np.ndarray) -> None:
        """Keep the dense parameters in ``array`` from now on (shared memory others read: the same-node
        transport's published parameters); their values move into it."""
        params = self._dense.params
        if not isinstance(array, np.ndarray) or array.dtype != params.dtype or array.shape != params.shape:
            raise ShapeError(f"{self!r}: parameters must move into a {params.dtype} array of shape {params.shape}")
        array[:] = params
        self._dense.params = array

    @property
    def publishes_in_place(self) -> bool:
        """Whether the dense parameters stay still while workers compute, so a worker may read them where they
        lie: bsp without a quorum (a round steps only once every worker has pushed and waits for its answer)."""
        config = self._dense.consistency.config
        return config.mode == "bsp" and config.quorum is None

    def grad_wire_nbytes(self) -> int:
        """The bytes of this shard's compressed dense gradient (what a receiver of a blob expects)."""
        return self._decoder.grad_nbytes(self.size)

    def row_wire_nbytes(self, count: int, dim: int) -> int:
        return self._decoder.row_nbytes(count, dim)

    def _flush_metrics(self) -> None:
        """Counters and each live worker's clock lag to Ray's metrics: a few times a second, not per push.

        (Per push, the calls cost the hot path several percent; the staleness
        histogram still sees every update, as its counts must match the summary.)
        """
        for outcome, n in self._unflushed.items():
            if n:
                self._metrics.pushes.inc(n, tags={"outcome": outcome})
        if self._dense.unflushed_updates:
            self._metrics.updates.inc(self._dense.unflushed_updates)
            self._dense.unflushed_updates = 0
        self._unflushed.clear()
        clocks = self._clocks.snapshot()
        fastest = max(clocks.values(), default=0)
        for worker, clock in clocks.items():
            self._metrics.clock_lag.set(fastest - clock, tags={"worker": str(worker)})
        if self._tables:
            self._metrics.table_gauges(self._tables.stats())
        self._next_flush = time.monotonic() + METRICS_FLUSH_S

    def _staleness(self) -> dict:
        """The mean and the largest staleness of the updates applied so far."""
        staleness = self._dense.staleness
        applied = sum(staleness.values())
        return {"staleness_mean": sum(k * v for k, v in staleness.items()) / applied if applied else 0.0,
                "staleness_max": max(staleness, default=0)}

    def _progress(self) -> dict:
        """The counters a history row shows (launcher/job/progress.py reads them)."""
        return {"steps": dict(self._steps), "samples": dict(self._samples), "loss": dict(self._loss),
                **self._staleness(), "max_clock_gap": self._max_lead}

    async def stats(self, rows: bool = False, rows_after: tuple[str, int] | None = None) -> dict:
        """What the driver reads back; with ``rows``, the history rows after ``rows_after`` too."""
        self._metrics.memory_bytes.set(self._memory_bytes)
        self._flush_metrics()  # the tables' gauges too, whenever the driver looks
        dense = self._dense
        return {
            "shard_id": self.shard_id,
            "size": dense.size,
            "buffer_size": self._buffers.size,
            "version": dense.version,
            "clocks": self._clocks.snapshot(),
            "pushes_applied": dense.applied,
            "pushes_dropped": dense.dropped,
            "spread_sq": dense.spread_sq,
            "spread_rounds": dense.spread_rounds,
            "duplicates": self._duplicates,
            "rejected": dict(self._rejected),
            "staleness_histogram": {int(k): v for k, v in sorted(dense.staleness.items())},
            "max_clock_gap": self._max_lead,
            "wait_s": {int(k): round(v, 4) for k, v in self._wait_s.items()},
            "samples": dict(self._samples),
            "steps": dict(self._steps),
            "loss": dict(self._loss),
            "era": self._series.era,
            **self._staleness(),
            **({"rows": self._series.since(rows_after)} if rows else {}),
            "uptime_s": time.monotonic() - self._started,
            "memory_bytes": self._memory_bytes,
            "rss_bytes": rss_bytes(),  # the whole process's: a soak watches it stay flat
            "peak_rss_bytes": peak_rss_bytes(),
            "ledger": {w: list(v) for w, v in self._ledger.snapshot().items()},
            "tables": self._tables.stats(),
            "codec": self._decoder.codec.name,
            "decode_s": round(self._decoder.decode_s, 6),
        }


def _check_num_samples(where: object, num_samples: int) -> None:
    """A push's sample count must fit the wire's uint32 (dense and sparse alike)."""
    if not 0 <= int(num_samples) < 2 ** 32:
        raise InputError(f"{where!r}: num_samples {int(num_samples)} is outside 0..2^32-1", "num_samples")

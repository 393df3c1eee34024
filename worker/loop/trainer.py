"""The training loop a worker actor runs: its data shard, its model, the shards.

``Worker`` is a plain class; the driver makes it a Ray actor at one call site.
``Worker.run`` runs a loop on a ``TrainContext`` (context.py): the job's own
loop, or the user's (``rayps.train``). Per batch the loop computes the
gradient into the flat buffer, and the context's ``step()`` makes one fused
push-pull to every shard (``Worker._push``: the gradient and the model's
buffers out, the parameters and merged buffers back), which blocks for as
long as the consistency mode says. The transport is whatever the driver
chose (ps/transport/contract.py); the loop never asks which.

Overlap (``WorkerPlan.overlap``, asp and ssp): the push of step t goes out
without waiting, the worker computes step t + 1 on the parameters it holds,
and only then waits for step t's answer. Each gradient is then one step
staler, and the shards admit the worker one iteration further ahead
(``ahead=1``), so the staleness bound still holds for what it computes.

Randomness: the model is built under the job's seed, exactly as the driver
builds it, so frozen parameters match everywhere; then the worker reseeds
torch, numpy and ``random`` from ``(seed, worker_id)``, so dropout masks and
augmentations differ between workers and a run is still reproducible.

Data: the worker leases units of batches from the job's work queue
(worker/queue/coordinator.py), telling it which push seq carries each unit's first
batch, so the queue knows exactly what it applied if the worker dies.

Failures: a call that fails because a shard died or was rolled back to a
checkpoint is retryable. The worker waits for the controller to finish the
recovery (the coordinator's generation moves on), reconnects, registers again
(the shards say at which clock it carries on) and leases afresh. An error with
no recovery behind it is raised as it is.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ...errors import LeftJobError, OutOfOrderError, RolledBackError, TransportError
from ...runtime import RAY, Runtime
from .metrics import WorkerMetrics
from ...ps.core.placement_info import this_node
from ...ps.transport.contract import TransportSpec
from ...ps.transport.mixed import shards_over_shm
from .chaos import WorkerChaos
from .batches import ModelCall, to_device
from .context import TrainContext, autocast_forward, builtin_loop, run_loop
from ..queue.coordinator import RESYNC, STOP, WorkCoordinator
from ...protos.compression import FP16_MAX
from ...ps.compression.encoding import CompressionConfig, CompressionStats, GradCompressor, RowCompressor
from ...ps.core.partition import fragment_ranges
from ...ps.sparse.client import SparseRows
from ..data.sources import DataSource
from .embedding import bind, forget_rows, row_grads, sparse_tables
from .local_steps import InnerSteps, LocalStepsConfig
from .lookahead import lookahead
from .flat import FlatParams
from .losses import LossFn
from .pace import StepClock, straggle_s
from ..queue.outer import job_plan, queue_extent
from ..queue.workqueue import Unit, WorkQueue, default_chunk_batches

log = logging.getLogger(__name__)

#: How often counters and gauges reach Ray's metrics (per step, they cost the hot path ~7%).
FLUSH_S = 0.5


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker does; built by the driver from the job config."""

    worker_id: int
    num_workers: int
    batch_size: int
    epochs: int
    max_steps: int | None = None  # per worker; None: run every epoch to the end
    seed: int = 0
    slow_s: float = 0.0  # straggler knob: extra seconds per step
    slowdown: float = 0.0  # straggler knob: extra time per step, as a multiple of its compute
    straggle_p: float = 0.0  # transient stragglers: the chance a step is held back ...
    straggle_factor: float = 0.0  # ... by this multiple of its compute time
    straggle_base_s: float | None = None  # the compute time those multiples apply to (None: each step's own)
    target_loss: float | None = None  # note when the mean loss of the last 10 steps first falls below
    use_gpu: bool = False
    torch_threads: int = 1
    run_id: str = ""  # tags this run's metrics
    overlap: bool = False  # compute the next step while this one's push and pull are in flight (asp, ssp)
    incarnation: int = 0  # 0 for the first life; one more per replacement
    resync_timeout_s: float = 60.0  # how long a failed call waits for the controller's recovery
    # ... and how long for one to begin, before the error is the worker's own. Under overlapping failures on
    # busy cores the controller may be seconds into another recovery or a checkpoint cut before it looks.
    recovery_grace_s: float = 10.0
    chaos: WorkerChaos = WorkerChaos()  # fault injection: SIGKILL or hang at a step
    compression: CompressionConfig = CompressionConfig()  # what this worker's pushes are encoded with
    call: ModelCall = ModelCall()  # how the model is called with a batch and the loss taken (batches.py)
    micro_batches: int = 1  # a batch's gradient computed in this many parts (gradient accumulation)
    clip_grad_norm: float | None = None  # each push's gradient clipped to this global norm
    compile: dict | None = None  # torch.compile's keyword arguments (None: the model runs as it is)
    precision: str = "fp32"  # fp32 | bf16 | fp16: the forward and the loss under torch.autocast (fp16: a loss scale)
    loop: Callable | None = None  # the user's train_loop_per_worker (None: the job's own loop, context.py)
    loop_config: dict | None = None  # what the user's loop is called with (train_loop_config)
    sparse_lookahead: bool = True  # the next batch's sparse ids read ahead, their rows asked behind the push
    local_steps: LocalStepsConfig | None = None  # H batches with an inner optimizer, then a push (local_steps.py)


class _Resync(Exception):
    """The coordinator refused a lease: this worker must register again first."""


class _LocalWork:
    """A work queue in this process, for a worker built without a coordinator (tests, one-off use)."""

    def __init__(self, coordinator: WorkCoordinator):
        self.coordinator = coordinator

    def lease(self, *args):
        return self.coordinator.lease(*args)

    def result(self, pending):
        return pending

    def finish(self, *args):
        self.coordinator.finish(*args)

    def status(self):
        return self.coordinator.status()

    def report(self, worker, metrics):
        self.coordinator.report(worker, metrics)


class _RemoteWork:
    """The job's coordinator actor; a lease is asked for ahead of need and collected when needed."""

    def __init__(self, handle, runtime: Runtime):
        self.handle = handle
        self.get = runtime.get

    def lease(self, *args):
        return self.handle.lease.remote(*args)

    def result(self, pending):
        return self.get(pending)

    def finish(self, *args):
        self.get(self.handle.finish.remote(*args))

    def status(self):
        return self.get(self.handle.status.remote())

    def report(self, worker, metrics):  # not waited on: a report never holds the loop up
        self.handle.report.remote(worker, metrics)


class Worker:
    def __init__(
        self,
        plan: WorkerPlan,
        model_fn: Callable[[], nn.Module],
        loss_fn: LossFn,
        train: DataSource,
        transport: TransportSpec,
        work=None,
        runtime: Runtime = RAY,
    ):
        """``work``: the job's coordinator actor (None: a work queue of its own, in this process);
        ``runtime``: what calls to it are waited on through, and whose actor failures are retryable."""
        reset_peak_rss()  # the report's peak_rss_mb is this worker's, not what its process ran before
        self.plan = plan
        self.runtime = runtime
        # Workers share the machine's cores with each other and the shards; one
        # intra-op thread each avoids oversubscription on small hosts.
        torch.set_num_threads(plan.torch_threads)
        device = "cuda" if plan.use_gpu and torch.cuda.is_available() else "cpu"
        if plan.use_gpu and device == "cpu":
            from ...errors import JobError
            raise JobError(f"worker-{plan.worker_id} asked for a GPU but torch sees no CUDA device")
        torch.manual_seed(plan.seed)  # as the driver builds it: frozen parameters come out the same
        self.model = model_fn()
        seed_worker(plan.seed, plan.worker_id)
        self.flat = FlatParams(self.model, device)
        self.loss_fn = loss_fn
        self.train = train
        local = plan.local_steps
        self.batches = job_plan(train, plan.num_workers, plan.batch_size, plan.seed, plan.epochs,
                                local.batches_per_push if local is not None else None)
        if work is None:
            chunk = default_chunk_batches(self.batches.per_epoch, plan.num_workers)
            queue = WorkQueue(self.batches.stretches, chunk_batches=chunk, chunk_ends=self.batches.chunk_ends,
                              **queue_extent(self.batches, plan.epochs, plan.max_steps))
            self.work = _LocalWork(WorkCoordinator(queue, self.batches, plan.num_workers))
        else:
            self.work = _RemoteWork(work, runtime)
        self.client = self._connect(transport)
        self.transport = transport.name
        self._ranges = transport.ranges
        if local is not None:  # streaming: each push carries one fragment of every shard's range, in turn
            self.client.fragments = local.fragments
        # Where the transport has buffers of its own (shm: this worker's segment), the model trains on them and a
        # step copies nothing. Not with overlap: the next step computes into them while this one's are read.
        shared = self.client.shared_buffers() if not plan.overlap and device == "cpu" else None
        if shared is not None:
            grads, params = shared
            # read-only parameters (the shards' own, under bsp): only the job's loop, which never writes them;
            # a loop of the user's might (an optimizer of its own, load_state_dict), so it gets them copied
            # and local steps write them between pulls
            own = params.flags.writeable or (plan.loop is None and local is None)
            self.flat.adopt(grads, params if own else None)
        # Local steps: the worker's own optimizer between pushes; a push sends the change it made.
        self.inner = InnerSteps(self.flat, local.inner_optimizer) if local is not None else None
        # Sparse tables (rayps.Embedding): rows are pulled per batch and pushed beside the dense gradient.
        # Compression (ps/compression/encoding.py): blobs per shard instead of float32 slices, the residual kept here.
        self.wire = CompressionStats()
        enabled = plan.compression.enabled
        self.compressor = GradCompressor(plan.compression, transport.ranges, self.wire, to_fp16=torch_fp16) \
            if enabled else None
        tables = sparse_tables(self.model)
        self.sparse = SparseRows(self.client, len(transport.ranges), {t: d for t, (_, d) in tables.items()},
                                 RowCompressor(plan.compression, self.wire) if enabled else None) \
            if tables else None
        if self.sparse is not None:
            bind(self.model, self.sparse)
        # The next batch's ids, read from it before its forward, so its rows travel behind this step's push
        # (worker/loop/lookahead.py): the job's own loop only, on the job's plain call of the model.
        plain = plan.loop is None and plan.call.forward is None and plan.call.compute_loss is None
        wanted = self.sparse is not None and plain and plan.sparse_lookahead
        self._upcoming_ids = lookahead(self.model) if wanted else None
        self._next_indices = None  # the batch after this one in the unit (context.py sets it)
        self._preloaded: tuple | None = None  # (indices, batch) loaded ahead for those ids
        # torch.compile: the compiled module computes; self.model stays the one whose parameters the flat
        # buffer holds (they are shared), whose state_dict and modes everything else reads.
        if plan.precision != "fp32":  # the forward runs under autocast whoever calls it: a loop of the user's
            autocast_forward(self.model, torch.device(device).type, plan.precision)  # need not know the knob
        self.compute = torch.compile(self.model, **plan.compile) if plan.compile is not None else self.model
        self.metrics = WorkerMetrics(plan.worker_id, plan.run_id)
        self._window: deque = deque()
        self._unflushed = {"steps": 0, "bytes": 0, "loss": float("nan"), "sent_mark": 0}
        self._next_flush = 0.0

    def __repr__(self) -> str:  # the name Ray's dashboard shows for this actor
        return f"worker-{self.plan.worker_id}"

    def _connect(self, transport: TransportSpec):
        """Connect to every shard. A replacement may start while a shard restarts (its socket refuses
        for a moment): it waits for the shard as a worker in flight would, up to resync_timeout_s."""
        deadline = time.monotonic() + self.plan.resync_timeout_s
        while True:
            try:
                return transport.connect(self.plan.worker_id, self.plan.incarnation)
            except ConnectionError as e:  # refused or reset: the shard is coming back
                if time.monotonic() > deadline:
                    raise
                log.warning("worker-%d waits for a shard to come back: %s", self.plan.worker_id, e)
                time.sleep(0.2)

    def where(self) -> dict:
        """The Ray node this worker runs on, and the device it trains on."""
        return {**this_node(), "device": str(self.flat.device)}

    def _record(self, push_pull_s: float, batch: int, loss: float) -> None:
        """Count one step. Counters and gauges go to Ray's metrics a few times a second, not per step."""
        now = time.monotonic()
        self.metrics.latency.observe(push_pull_s, tags={"transport": self.transport})
        pending = self._unflushed
        pending["steps"] += 1
        pending["bytes"] += self.flat.numel * 4 + self.flat.buffers.numel * 8
        pending["loss"] = loss
        self._window.append((now, batch))
        if now >= self._next_flush:
            self._flush(now)

    def _flush(self, now: float, reported: bool = False) -> None:
        """``reported``: the loop's last report goes too (the run's end)."""
        if reported:
            try:
                self._send_reported()
            except Exception:  # noqa: BLE001 - the queue may be gone with the job; the run's own error matters
                log.warning("worker-%d could not send its last report", self.plan.worker_id, exc_info=True)
        m, pending = self.metrics, self._unflushed
        if pending["steps"]:
            m.steps.inc(pending["steps"])
            m.loss.set(pending["loss"])
            # pushes count what went on the wire (self.wire counts every push, compressed or not); the
            # uncompressed size has its own counter
            sent = (pending["bytes"] - 4 * self.flat.numel * pending["steps"]
                    + self.wire.sent_bytes - pending["sent_mark"])
            pending["sent_mark"] = self.wire.sent_bytes
            m.bytes.inc(sent, tags={"direction": "push", "transport": self.transport})
            m.bytes.inc(pending["bytes"], tags={"direction": "pull", "transport": self.transport})
            m.raw_push_bytes.inc(pending["bytes"])
            pending["steps"] = pending["bytes"] = 0
        while self._window and now - self._window[0][0] > 5.0:  # samples/s over the last 5 s
            self._window.popleft()
        span = now - self._window[0][0] if self._window else 0.0
        if span > 0:
            m.samples_per_s.set(sum(n for _, n in self._window) / span)
        self._next_flush = now + FLUSH_S

    # ---- the loop ---------------------------------------------------------------------

    def run(self, generation: int = 0) -> dict:
        """Run the loop (the job's own, or the user's) on the units the queue hands out until it has none
        (or ``max_steps``); return what was done."""
        self._begin(generation)
        try:
            try:
                self._sync()
            except self._retryable as e:  # a shard died as this life started: register after the recovery
                self._resync(e)
            self._upcoming = self._lease(self.clock + 1)
            ctx = self._ctx = TrainContext(self, self.plan.loop_config)
            loop = self.plan.loop or builtin_loop(self.plan.call, self.loss_fn)
            while True:
                try:
                    run_loop(loop, ctx, builtin=self.plan.loop is None)
                    self._sync_every_fragment()
                    break
                except self._retryable as e:  # raised in the loop's own code (a sparse pull): recover, call again
                    self._recover(e)
                    ctx._reset()
            self._land()
            if self.sparse is not None:
                self.sparse.flush()
            # Everything this worker pushed has landed: its units are done, the rest goes back.
            self.work.finish(self.plan.worker_id, self.plan.incarnation, self.generation, self.acked - self.base)
        finally:
            self._flush(time.monotonic(), reported=True)
            # Leave the clock tables even on failure, so the others never wait for us.
            try:
                self.client.finish()
            except Exception:  # the shards may be gone; never mask the error that got us here
                log.warning("worker-%d could not leave the shards' clock tables", self.plan.worker_id, exc_info=True)
        return self._report()

    # ---- what the context (context.py) calls: a batch in, a push out ---------------------

    def _load(self, indices) -> tuple:
        """Batch ``indices`` on this worker's device: inputs, targets, weights (or None), its epoch."""
        # the chaos knobs count batches: pushes, or under local steps inner steps (a kill may land mid outer step)
        self._chaos.before_step(self.steps + 1 if self.inner is None else self.inner.steps + 1)
        x, y, weight = self._fetch(indices)
        return x, y, weight, self._unit_epoch

    def _fetch(self, indices) -> tuple:
        """Batch ``indices`` on this worker's device (loaded ahead when the next ids were read from it)."""
        preloaded, self._preloaded = self._preloaded, None
        if preloaded is not None and preloaded[0] is indices:
            return preloaded[1]
        # A third tensor, when the data has one, is each example's loss weight (importance sampling).
        x, y, *weight = self.train.batch(indices)
        device = self.flat.device
        x, y = to_device(x, device), to_device(y, device)  # any structure, as a whole (worker/loop/batches.py)
        return x, y, weight[0].to(device) if weight else None

    def _next_ids(self) -> dict[str, np.ndarray] | None:
        """Each table's ids the next batch of this unit will pull, read from it now (it is kept for its
        step); None when no batch follows in the unit or its ids cannot be read ahead."""
        indices = self._next_indices
        if self._upcoming_ids is None or indices is None:
            return None
        batch = self._fetch(indices)
        self._preloaded = (indices, batch)
        try:
            return self._upcoming_ids(batch[0])
        except Exception:  # noqa: BLE001 - the traced ids failed on this batch: pull as the forward goes, from now on
            log.warning("worker-%d: the next batch's sparse ids could not be read ahead; its rows are pulled as the"
                        " forward reaches them from now on", self.plan.worker_id, exc_info=True)
            self._upcoming_ids = None
            return None

    def _begin_batch(self) -> float:
        """A batch's gradient starts from zero; when its compute began (the straggler knobs scale it)."""
        if self.plan.slow_s:
            time.sleep(self.plan.slow_s)
        if self.sparse is not None:  # the iteration this forward's rows are pulled for
            self.sparse.clock = self.clock + 1
        self.flat.zero_grad()
        return time.monotonic()

    def _push(self, examples: int, loss: float, computing: float) -> None:
        """The batch's gradient (in the flat buffer) pushed to every shard, the answer landed (with overlap:
        the previous step's answer lands, and this one's is left in flight)."""
        plan, flat = self.plan, self.flat
        self.loss_value = loss
        if plan.clip_grad_norm is not None and self.inner is None:  # this push's gradient, before it leaves
            flat.clip_grad_norm(plan.clip_grad_norm)
        compute_s = time.monotonic() - computing if plan.straggle_base_s is None else plan.straggle_base_s
        held = straggle_s(self._rng, compute_s, plan.slowdown, plan.straggle_p, plan.straggle_factor)
        if held > 0:
            self.straggled_s += held
            time.sleep(held)
        pushed = self._pushed_ranges(self.clock + 1)
        grads = flat.host_grads() if self.inner is None else self.inner.pseudo_gradient(pushed)
        buffers = self._buffers.pack() if self._buffers else None
        waited = time.monotonic()
        self._land()  # overlap: the previous step's answer first, then ours goes out
        self.clock += 1
        if self.sparse is not None:
            self.sparse.push(self.clock, row_grads(self.model), examples, self._next_ids())
        if self.compressor is not None:
            grads = self.compressor.encode(grads)
        else:
            self.wire.plain(sum(r.size for r in pushed))  # all of it, or a streaming push's fragment
        self._in_flight = self.client.push_pull_async(self.clock, grads, self._inbox, examples, loss,
                                                      buffers, self._received, ahead=int(plan.overlap))
        if not plan.overlap:
            self._land()
            if self.inner is not None:  # what came back starts its next outer step
                self.inner.synced(pushed)
        self.steps += 1
        self.samples += examples
        if self.inner is None:  # under local steps each inner step counted itself: the target is the batches' loss
            self._pace.step(examples, loss)
        self._record(time.monotonic() - waited, examples, loss)

    def _sync_every_fragment(self) -> None:
        """Streaming local steps: the data is done, but the fragments other than the last one pushed hold
        local progress the shards have not seen. One push each, of no batch, brings it to them, so the job
        ends with every fragment synced (under bsp every worker makes the same pushes, and their rounds step)."""
        local = self.plan.local_steps
        if local is None or local.fragments == 1 or self.steps == 0:
            return
        for _ in range(local.fragments - 1):
            self._push(0, self.loss_value, time.monotonic())

    def _pushed_ranges(self, clock: int) -> list:
        """The flat ranges the push of ``clock`` carries: every shard's, or under streaming local steps
        the fragment of each that this clock syncs."""
        fragments = self.plan.local_steps.fragments if self.plan.local_steps is not None else 1
        return self._ranges if fragments == 1 else fragment_ranges(self._ranges, fragments, clock)

    def _inner_step(self, examples: int, loss: float) -> None:
        """One of an outer step's inner steps, with the batch's gradient (clipped first when asked)."""
        if self.plan.clip_grad_norm is not None:
            self.flat.clip_grad_norm(self.plan.clip_grad_norm)
        self.inner.step()
        self._pace.step(examples, loss)  # the rate and the time to a target loss, per batch as without local steps

    def _reported(self, metrics: dict) -> None:
        """A loop's ``report``: to the dashboard's gauges and the job's history, a few times a second."""
        self._unreported = {**metrics, "step": self.steps}
        if time.monotonic() >= self._next_report:
            self._send_reported()

    def _send_reported(self) -> None:
        if self._unreported is None:
            return
        for name, value in self._unreported.items():
            if name != "step":
                self.metrics.reported.set(value, tags={"metric": name})
        self.work.report(self.plan.worker_id, self._unreported)
        self._unreported, self._next_report = None, time.monotonic() + FLUSH_S

    def _begin(self, generation: int) -> None:
        """The run's state: counters, the receive buffers, how the answers land."""
        plan, flat = self.plan, self.flat
        # What a recovery may cause, and so what waits for one. A shard restored under this life may not know
        # it (its join came after the cut): over gRPC and shm that refusal arrives as a TransportError, over the
        # object store as the shard's own OutOfOrderError or LeftJobError. Without a recovery under way within
        # the grace (_resync), each is the worker's own error after all, and raised.
        self._retryable = (_Resync, TransportError, RolledBackError, OutOfOrderError, LeftJobError,
                           self.runtime.ActorError, ConnectionError)
        self._began = time.monotonic()
        self.generation, self.resyncs = generation, 0
        self.steps = self.samples = 0
        self.loss_value = float("nan")
        self._pace = StepClock(self._planned_steps(), plan.target_loss)  # steady rate, time to the target loss
        self._rng = np.random.default_rng([plan.seed, plan.worker_id, 7])  # straggler draws, apart from training
        self.straggled_s = 0.0  # seconds the straggler knobs held this worker back
        self.model.train()
        self._buffers = flat.buffers if flat.buffers.numel else None  # most models have none: send nothing
        self._received = self._buffers.received if self._buffers else None
        # With overlap, pulls land beside the parameters being computed on and are copied in between
        # steps, unless the transport writes them only inside wait() (shm, the object store).
        self._direct = not plan.overlap or self.client.fills_on_wait
        self._inbox = flat.host_params() if self._direct else flat.receive_buffer()
        self._in_flight = None
        self._chaos = plan.chaos.arm()
        self._runner = threading.get_ident()  # whose stack a stall report shows
        self._unit_epoch = 0
        self._ctx = None
        self._unreported, self._next_report = None, 0.0

    def _next_unit(self) -> list | None:
        """The next leased unit's batches, asking now for the one after it (the call's latency hides behind
        this unit's steps; one step alone is shorter than a Ray call here); None when there is none."""
        if self._reached_max_steps() or self._upcoming is None:
            return None
        leased = self.work.result(self._upcoming)
        if leased == RESYNC:
            raise _Resync()
        if leased is None or leased == STOP:
            return None
        unit = Unit(*leased)
        self._unit_epoch = unit.epoch
        batches = self.batches.batches(unit)
        # Ask for the next unit only if this worker will get to it: a lease it would never start is a unit taken
        # (stolen, under asp and ssp) from a worker that would, which then finds nothing left and stops early.
        last = self.plan.max_steps is not None and self.steps + len(batches) >= self.plan.max_steps
        self._upcoming = None if last else self._lease(self.clock + 1 + len(batches))
        return batches

    def _reached_max_steps(self) -> bool:
        return self.plan.max_steps is not None and self.steps >= self.plan.max_steps

    def _land(self) -> None:
        """Finish the push-pull in flight (if any) and make the model see what it brought back."""
        if self._in_flight is None:
            return
        self._in_flight.wait()
        self._in_flight, self.acked = None, self.clock
        if not self._direct:
            self.flat.take_received()
        self.flat.params_received(buffers=True, counters=False)

    def _recover(self, error: Exception) -> None:
        """After a failed call: forget what was in flight, wait for the controller's recovery, register again."""
        self._in_flight = None
        # what error feedback held came from steps a rollback may undo: they are trained again
        if self.compressor is not None:
            self.compressor.reset()
        if self.sparse is not None:
            if self.sparse.compressor is not None:
                self.sparse.compressor.reset()
            self.sparse.drop()
            forget_rows(self.model)
        self._resync(error if not isinstance(error, _Resync) else RolledBackError("the job rolled back"))
        self._upcoming = self._lease(self.clock + 1)

    def _report(self) -> dict:
        sparse = self.sparse
        return {
            "worker_id": self.plan.worker_id,
            "incarnation": self.plan.incarnation,
            "steps": self.steps,
            "samples": self.samples,
            "resyncs": self.resyncs,
            "peak_rss_mb": peak_rss_mb(),
            "shards_over_shm": shards_over_shm(self.client),
            "rows_pulled": sparse.rows_pulled if sparse is not None else 0,
            "rows_pushed": sparse.rows_pushed if sparse is not None else 0,
            "rows_ahead": sparse.rows_ahead if sparse is not None else 0,
            "pulls_served_ahead": sparse.pulls_served_ahead if sparse is not None else 0,
            "final_loss": self.loss_value,
            "inner_steps": self.inner.steps if self.inner is not None else 0,
            "pseudo_gradient_sq": self.inner.drift_sq if self.inner is not None else 0.0,
            "loss_scale_overflows": self._ctx.scale.overflows if self._ctx and self._ctx.scale else 0,
            "wire": self.wire.as_dict(),
            "wall_s": time.monotonic() - self._began,
            "steady_samples": self._pace.steady_samples,
            "reached_target_s": self._pace.reached_s,
            "straggled_s": self.straggled_s,
            "steady_s": self._pace.steady_s,
        }

    # ---- registering, recovering, leasing ----------------------------------------------

    def _planned_steps(self) -> int:
        """The batches this worker trains (under local steps too: the pace counts each inner step)."""
        plan = getattr(self.batches, "inner", self.batches)  # an outer plan's batches are cut from its inner plan's
        own = plan.stretches[self.plan.worker_id] if self.plan.worker_id < len(plan.stretches) else 0
        per_worker = (own or max(plan.stretches)) * self.plan.epochs
        return per_worker if self.plan.max_steps is None else min(per_worker, self.plan.max_steps)

    def _sync(self) -> None:
        """(Re)register with every shard: the parameters, and the clock and seq to carry on from."""
        self.clock = self.acked = self.client.register(self.flat.host_params(), self._received)
        self.base = self.client.base
        self.flat.params_received(buffers=True)
        if self.inner is not None:  # every parameter's outer step starts from what was just pulled
            self.inner.begin()

    def _resync(self, error: Exception) -> None:
        """After a failed call: wait for the controller's recovery, reconnect and register again."""
        plan = self.plan
        began = quiet = time.monotonic()  # quiet: since when no recovery has been seen under way
        tried = None  # the generation last tried to register in
        while True:
            generation, recovering = self.work.status()
            now = time.monotonic()
            if recovering:
                quiet = now
            # Register only between recoveries: one under way may still roll some shards back, and a
            # worker that registered with shards at different cuts would push clocks one of them never saw.
            if generation != self.generation and not recovering:
                if tried != generation:
                    log.warning("worker-%d resyncs after %s: %s", plan.worker_id, type(error).__name__, error)
                    tried = generation
                try:
                    self.client.reconnect()
                    self._sync()
                    self.generation = generation
                    self.resyncs += 1
                    return
                except self._retryable as again:  # a shard not serving yet, or rolled back again: try again
                    error = again
            if now - began > plan.resync_timeout_s or now - quiet > plan.recovery_grace_s:
                raise error  # no recovery under way for the grace: the error is this worker's own
            time.sleep(0.05 if generation == self.generation else 0.2)

    def _lease(self, first_clock: int):
        return self.work.lease(self.plan.worker_id, self.plan.incarnation, self.generation,
                               first_clock - self.base, self.acked - self.base)

    def stack(self) -> dict:
        """What this worker is doing right now (for a stall report): its step and its training thread's stack."""
        import sys
        import threading
        import traceback

        frames = sys._current_frames()
        runner = getattr(self, "_runner", None) or threading.main_thread().ident
        lines = traceback.format_stack(frames[runner]) if runner in frames else []
        return {"clock": getattr(self, "clock", 0), "stack": "".join(lines[-8:]), **this_node()}


def reset_peak_rss() -> None:
    """Count this process's peak resident memory from now. Ray may start an actor in a pooled process that
    ran other tasks first (a data pass, say), and their peak is not this worker's: it once made a worker
    reading 2M rows in chunks look 95 MiB heavier than one reading 20k (tests/test_data_jobs.py)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the high-water mark (VmHWM) to the current RSS
    except OSError:
        pass  # elsewhere the peak is the process's, as getrusage has it


def torch_fp16(values: np.ndarray) -> np.ndarray:
    """The fp16 codec's blob (protos/compression.py: saturated at +-65504, rounded to nearest even), by torch:
    the same bytes as numpy's astype, about 10x sooner here (3.5 against 37 ms for 5M values)."""
    half = torch.from_numpy(values).clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
    return half.numpy().view(np.uint8)


def peak_rss_mb() -> float:
    """This process's peak resident memory since ``reset_peak_rss`` (or its start), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def seed_worker(seed: int, worker_id: int) -> int:
    """Seed torch, numpy and ``random`` for one worker from ``(seed, worker_id)``; return the seed."""
    derived = int(np.random.SeedSequence([seed, worker_id]).generate_state(1, np.uint64)[0])
    torch.manual_seed(derived)
    np.random.seed(derived % 2**32)
    random.seed(derived)
    return derived

"""The training loop a worker actor runs: its data shard, its model, the shards.

``Worker`` is a plain class; the driver makes it a Ray actor at one call site.
The whole loop is ``Worker.run``: per step, compute the gradient into the flat
buffer, then one fused push-pull to every shard (the gradient and the model's
buffers out, the parameters and merged buffers back), which blocks for as
long as the consistency mode says. The transport is whatever the driver
chose (ps/transport.py); the loop never asks which.

Overlap (``WorkerPlan.overlap``, asp and ssp): the push of step t goes out
without waiting, the worker computes step t + 1 on the parameters it holds,
and only then waits for step t's answer. Each gradient is then one step
staler, and the shards admit the worker one iteration further ahead
(``ahead=1``), so the staleness bound still holds for what it computes.

Randomness: the model is built under the job's seed, exactly as the driver
builds it, so frozen parameters match everywhere; then the worker reseeds
torch, numpy and ``random`` from ``(seed, worker_id)``, so dropout masks and
augmentations differ between workers and a run is still reproducible.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from rayps.ps.metrics import WorkerMetrics
from rayps.ps.placement_info import this_node
from rayps.ps.transport import TransportSpec
from rayps.worker.data import DataSource, EpochSharder
from rayps.worker.flat import FlatParams
from rayps.worker.losses import LossFn
from rayps.worker.pace import StepClock, straggle_s

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
    target_loss: float | None = None  # note when the mean loss of the last 10 steps first falls below
    use_gpu: bool = False
    torch_threads: int = 1
    run_id: str = ""  # tags this run's metrics
    overlap: bool = False  # compute the next step while this one's push and pull are in flight (asp, ssp)


class Worker:
    def __init__(
        self,
        plan: WorkerPlan,
        model_fn: Callable[[], nn.Module],
        loss_fn: LossFn,
        train: DataSource,
        transport: TransportSpec,
    ):
        self.plan = plan
        # Workers share the machine's cores with each other and the shards; one
        # intra-op thread each avoids oversubscription on small hosts.
        torch.set_num_threads(plan.torch_threads)
        device = "cuda" if plan.use_gpu and torch.cuda.is_available() else "cpu"
        if plan.use_gpu and device == "cpu":
            from rayps.errors import JobError
            raise JobError(f"worker-{plan.worker_id} asked for a GPU but torch sees no CUDA device")
        torch.manual_seed(plan.seed)  # as the driver builds it: frozen parameters come out the same
        self.model = model_fn()
        seed_worker(plan.seed, plan.worker_id)
        self.flat = FlatParams(self.model, device)
        self.loss_fn = loss_fn
        self.train = train
        self.sharder = EpochSharder(len(train), plan.num_workers, plan.batch_size, plan.seed)
        self.client = transport.connect(plan.worker_id)
        self.transport = transport.name
        self.metrics = WorkerMetrics(plan.worker_id, plan.run_id)
        self._window: deque = deque()
        self._unflushed = {"steps": 0, "bytes": 0, "loss": float("nan")}
        self._next_flush = 0.0

    def __repr__(self) -> str:  # the name Ray's dashboard shows for this actor
        return f"worker-{self.plan.worker_id}"

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

    def _flush(self, now: float) -> None:
        m, pending = self.metrics, self._unflushed
        if pending["steps"]:
            m.steps.inc(pending["steps"])
            m.loss.set(pending["loss"])
            for direction in ("push", "pull"):
                m.bytes.inc(pending["bytes"], tags={"direction": direction, "transport": self.transport})
            pending["steps"] = pending["bytes"] = 0
        while self._window and now - self._window[0][0] > 5.0:  # samples/s over the last 5 s
            self._window.popleft()
        span = now - self._window[0][0] if self._window else 0.0
        if span > 0:
            m.samples_per_s.set(sum(n for _, n in self._window) / span)
        self._next_flush = now + FLUSH_S

    def _land(self, pending, direct: bool) -> None:
        """Finish a push-pull in flight and make the model see what it brought back."""
        pending.wait()
        if not direct:
            self.flat.take_received()
        self.flat.params_received(buffers=True, counters=False)

    def _planned_steps(self) -> int:
        per_epoch = self.sharder.batches_per_epoch * self.plan.epochs
        return per_epoch if self.plan.max_steps is None else min(per_epoch, self.plan.max_steps)

    def run(self) -> dict:
        """Train to the end of the last epoch (or ``max_steps``); return what was done."""
        plan, flat, device = self.plan, self.flat, self.flat.device
        began = time.monotonic()
        clock = samples = 0
        pace = StepClock(self._planned_steps(), plan.target_loss)  # steady rate, time to the target loss
        rng = np.random.default_rng([plan.seed, plan.worker_id, 7])  # the straggler draws, apart from training
        loss_value = float("nan")
        self.model.train()
        buffers = flat.buffers if flat.buffers.numel else None  # most models have none: send nothing
        received = buffers.received if buffers else None
        # With overlap, pulls land beside the parameters being computed on and are copied in between
        # steps, unless the transport writes them only inside wait() (shm, the object store).
        direct = not plan.overlap or self.client.fills_on_wait
        inbox = flat.host_params() if direct else flat.receive_buffer()
        in_flight = None
        try:
            self.client.register(flat.host_params(), received)
            flat.params_received(buffers=True)
            for epoch in range(plan.epochs):
                for indices in self.sharder.batches(epoch, plan.worker_id):
                    if plan.max_steps is not None and clock >= plan.max_steps:
                        break
                    x, y = self.train.batch(indices)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if plan.slow_s:
                        time.sleep(plan.slow_s)
                    computing = time.monotonic()
                    flat.zero_grad()
                    loss = self.loss_fn(self.model(x), y)
                    loss.backward()
                    clock += 1
                    loss_value = loss.item()
                    held = straggle_s(rng, time.monotonic() - computing, plan.slowdown, plan.straggle_p,
                                      plan.straggle_factor)
                    if held > 0:
                        time.sleep(held)
                    grads, sent_buffers = flat.host_grads(), buffers.pack() if buffers else None
                    waited = time.monotonic()
                    if in_flight is not None:  # overlap: the previous step's answer, then ours goes out
                        self._land(in_flight, direct)
                    in_flight = self.client.push_pull_async(clock, grads, inbox, len(indices), loss_value,
                                                            sent_buffers, received, ahead=int(plan.overlap))
                    if not plan.overlap:
                        self._land(in_flight, direct)
                        in_flight = None
                    samples += len(indices)
                    pace.step(len(indices), loss_value)
                    self._record(time.monotonic() - waited, len(indices), loss_value)
            if in_flight is not None:
                self._land(in_flight, direct)
                in_flight = None
        finally:
            self._flush(time.monotonic())
            # Leave the clock tables even on failure, so the others never wait for us.
            try:
                self.client.finish()
            except Exception:  # the shards may be gone; never mask the error that got us here
                log.warning("worker-%d could not leave the shards' clock tables", plan.worker_id, exc_info=True)
        return {
            "worker_id": plan.worker_id,
            "steps": clock,
            "samples": samples,
            "final_loss": loss_value,
            "wall_s": time.monotonic() - began,
            "steady_samples": pace.steady_samples,
            "reached_target_s": pace.reached_s,
            "steady_s": pace.steady_s,
        }


def seed_worker(seed: int, worker_id: int) -> int:
    """Seed torch, numpy and ``random`` for one worker from ``(seed, worker_id)``; return the seed."""
    derived = int(np.random.SeedSequence([seed, worker_id]).generate_state(1, np.uint64)[0])
    torch.manual_seed(derived)
    np.random.seed(derived % 2**32)
    random.seed(derived)
    return derived

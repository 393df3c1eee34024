"""The training loop a worker actor runs: its data shard, its model, the shards.

``Worker`` is a plain class; the driver makes it a Ray actor at one call site.
The whole loop is ``Worker.run``: per step, compute the gradient into the flat
buffer, then one fused push-pull to every shard (the gradient and the model's
buffers out, the parameters and merged buffers back), which blocks for as
long as the consistency mode says.

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
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from rayps.ps.client import ShardClient
from rayps.ps.metrics import WorkerMetrics
from rayps.ps.grpc_client import GrpcEndpoints
from rayps.ps.partition import ShardRange
from rayps.ps.placement_info import this_node
from rayps.worker.data import DataSource, EpochSharder
from rayps.worker.flat import FlatParams
from rayps.worker.losses import LossFn

log = logging.getLogger(__name__)


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
    use_gpu: bool = False
    torch_threads: int = 1
    run_id: str = ""  # tags this run's metrics


class Worker:
    def __init__(
        self,
        plan: WorkerPlan,
        model_fn: Callable[[], nn.Module],
        loss_fn: LossFn,
        train: DataSource,
        shards: Sequence,
        ranges: Sequence[ShardRange],
        grpc: GrpcEndpoints | None = None,
        buffer_ranges: Sequence[ShardRange] | None = None,
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
        # The transport: Ray's object store, or gRPC when the job gives endpoints.
        self.client = (grpc.client(plan.worker_id, ranges, buffer_ranges) if grpc
                       else ShardClient(plan.worker_id, shards, ranges, buffer_ranges))
        self.transport = "grpc" if grpc else "ray"
        self.metrics = WorkerMetrics(plan.worker_id, plan.run_id)
        self._window: deque = deque()

    def __repr__(self) -> str:  # the name Ray's dashboard shows for this actor
        return f"worker-{self.plan.worker_id}"

    def where(self) -> dict:
        """The Ray node this worker runs on, and the device it trains on."""
        return {**this_node(), "device": str(self.flat.device)}

    def _record(self, push_pull_s: float, batch: int, loss: float) -> None:
        m, now = self.metrics, time.monotonic()
        m.steps.inc()
        m.loss.set(loss)
        m.latency.observe(push_pull_s, tags={"transport": self.transport})
        moved = self.flat.numel * 4 + self.flat.buffers.numel * 8
        m.bytes.inc(moved, tags={"direction": "push", "transport": self.transport})
        m.bytes.inc(moved, tags={"direction": "pull", "transport": self.transport})
        self._window.append((now, batch))
        while self._window and now - self._window[0][0] > 5.0:  # samples/s over the last 5 s
            self._window.popleft()
        span = now - self._window[0][0]
        if span > 0:
            m.samples_per_s.set(sum(n for _, n in self._window) / span)

    def run(self) -> dict:
        """Train to the end of the last epoch (or ``max_steps``); return what was done."""
        plan, flat, device = self.plan, self.flat, self.flat.device
        began = time.monotonic()
        clock = samples = 0
        loss_value = float("nan")
        self.model.train()
        buffers = flat.buffers if flat.buffers.numel else None  # most models have none: send nothing
        received = buffers.received if buffers else None
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
                    flat.zero_grad()
                    loss = self.loss_fn(self.model(x), y)
                    loss.backward()
                    clock += 1
                    loss_value = loss.item()
                    sent = time.monotonic()
                    self.client.push_pull(clock, flat.host_grads(), flat.host_params(), len(indices), loss_value,
                                          buffers.pack() if buffers else None, received)
                    flat.params_received(buffers=True, counters=False)
                    samples += len(indices)
                    self._record(time.monotonic() - sent, len(indices), loss_value)
        finally:
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
        }


def seed_worker(seed: int, worker_id: int) -> int:
    """Seed torch, numpy and ``random`` for one worker from ``(seed, worker_id)``; return the seed."""
    derived = int(np.random.SeedSequence([seed, worker_id]).generate_state(1, np.uint64)[0])
    torch.manual_seed(derived)
    np.random.seed(derived % 2**32)
    random.seed(derived)
    return derived

"""The systems ``psctl bench`` measures rayps against, written here so anyone can rerun them.

- ``raydocs_ps``: the parameter server a Ray user writes from Ray's docs: one
  actor holding the model's parameters as a list of numpy arrays, worker
  actors that compute gradients on the weights they are sent, and a driver
  that loops over ``ray.wait`` (async) or gathers every worker's gradient
  before one update (sync).
- ``ddp``: PyTorch DistributedDataParallel over gloo, one process per worker.
- ``ceiling``: the same processes training with no communication at all.
- ``single``: one process.

Each trains the same model on the same data with plain SGD and returns
samples/s after a warm-up of a tenth of its steps (summed over workers), and,
given a target loss, the seconds until every worker's mean training loss over
its last 10 steps had fallen below it (the last worker's, as a rayps job's
summary counts it). Stragglers are held back by a multiple of
``compute_seconds`` (a forward and backward measured once, with no
communication), drawn per step from the same seeded stream a rayps worker
draws from, so every system is slowed by the same amounts at the same steps.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from ...worker.loop.pace import StepClock, straggle_s


def _batches(x: np.ndarray, y: np.ndarray, rank: int, world: int, batch: int, seed: int):
    """An endless stream of this rank's batches: its share of each epoch's permutation."""
    epoch = 0
    while True:
        perm = np.random.default_rng([seed, epoch]).permutation(len(x))[rank::world]
        for lo in range(0, len(perm) - batch + 1, batch):
            idx = perm[lo:lo + batch]
            yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        epoch += 1


def _delay(rng: np.random.Generator, compute_s: float, slow: float, straggle: tuple[float, float] | None) -> float:
    """Seconds this step is held back, exactly as a rayps worker with the same knobs is."""
    probability, factor = straggle if straggle is not None else (0.0, 0.0)
    return straggle_s(rng, compute_s, slow, probability, factor)


def compute_seconds(model_fn, data_fn, batch: int, steps: int = 40, seed: int = 0) -> float:
    """The median forward and backward of one batch, in this process, with one thread and no communication:
    the compute a straggler's delay is a multiple of, the same number for every system compared."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = model_fn()
    x, y = data_fn()["train"]
    stream, times = _batches(x, y, 0, 1, batch, seed), []
    for _ in range(steps):
        xb, yb = next(stream)
        began = time.perf_counter()
        model.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        times.append(time.perf_counter() - began)
    return float(np.median(times[steps // 4:]))  # after the first steps' allocations


def _train_process(rank: int, world: int, model_fn, data_fn, batch: int, lr: float, steps: int, target,
                   communicate: bool, init_method: str | None, out: str, slow: dict, straggle, seed: int,
                   compute_s: float | None, fp16: bool, optimizer: str = "sgd") -> None:
    """One DDP rank (or a ceiling process); ``init_method``: where the ranks meet (file:// on one machine,
    tcp:// between machines)."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = model_fn()
    if communicate:
        torch.distributed.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        model = nn.parallel.DistributedDataParallel(model)
        if fp16:  # DDP's own: gradients cast to float16 for the all-reduce, back to float32 after
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    (x, y), _ = data_fn()["train"], None
    opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD)(model.parameters(), lr=lr)
    clock, rng = StepClock(steps, target), np.random.default_rng([seed, rank, 7])
    stream, held = _batches(x, y, rank, world, batch, seed), 0.0
    for _ in range(steps):
        xb, yb = next(stream)
        if compute_s is not None:  # a slow compute, before this rank's all-reduce (as a rayps worker's, before its push)
            extra = _delay(rng, compute_s, slow.get(rank, 0.0), straggle)
            if extra:
                held += extra
                time.sleep(extra)
        began = time.monotonic()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        if compute_s is None:  # a multiple of this step, all-reduce and any wait for the other ranks included
            extra = _delay(rng, time.monotonic() - began, slow.get(rank, 0.0), straggle)
            if extra:
                held += extra
                time.sleep(extra)
        clock.step(batch, loss.item())
    if communicate:
        torch.distributed.destroy_process_group()
    np.save(out, np.array([clock.samples_per_s, clock.reached_s or np.nan, held]))


def processes(model_fn, data_fn, workers: int, batch: int, lr: float, steps: int, communicate: bool,
              target: float | None = None, slow: dict | None = None, straggle=None, seed: int = 0,
              compute_s: float | None = None, fp16: bool = False) -> dict:
    """DDP (``communicate``; ``fp16``: with its fp16 compression hook) or the no-communication ceiling, one
    process per worker. ``compute_s``: what ``slow`` and ``straggle`` are multiples of (None: each whole step)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        store = f"file://{os.path.join(tmp, 'store')}" if communicate else None
        outs = [os.path.join(tmp, f"rank{r}.npy") for r in range(workers)]
        procs = [mp.get_context("spawn").Process(target=_train_process, args=(
            r, workers, model_fn, data_fn, batch, lr, steps, target, communicate, store, outs[r], slow or {},
            straggle, seed, compute_s, fp16)) for r in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=1800)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"a benchmark process failed: exit codes {[p.exitcode for p in procs]}")
        return summed([np.load(o) for o in outs])


def summed(results: list[np.ndarray]) -> dict:
    """What the ranks' outputs say together: samples/s summed, the last rank's time to target."""
    reached = [r[1] for r in results]
    return {"samples_per_s": float(sum(r[0] for r in results)),
            "reached_s": None if any(np.isnan(reached)) else float(max(reached)),
            "held_s": [float(r[2]) for r in results]}  # per rank: seconds the straggler knobs held it back


def rank_main(argv: list[str]) -> None:
    """One DDP rank started as its own command (on another "machine" of launcher/bench/netns.py): its
    arguments as one JSON object, the MLP named by its hidden layers, the synthetic data."""
    import json

    from .rows import model_fn
    from ...worker.datasets import synthetic_mnist

    a = json.loads(argv[0])
    _train_process(a["rank"], a["world"], model_fn(a["hidden"]), synthetic_mnist, a["batch"], a["lr"], a["steps"],
                   a.get("target"), True, a["init_method"], a["out"], {}, None, a.get("seed", 0), None,
                   a.get("fp16", False), a.get("optimizer", "sgd"))


# ---- the Ray-docs-style parameter server ---------------------------------------------------


class DocsParameterServer:
    """One actor, the parameters as a list of numpy arrays, plain SGD on the sum it is sent."""

    def __init__(self, model_fn: Callable[[], nn.Module], lr: float, seed: int):
        torch.manual_seed(seed)
        self.weights = [p.detach().numpy().copy() for p in model_fn().parameters()]
        self.lr = lr

    def apply_gradients(self, *gradients):
        summed = [np.sum(grads, axis=0) for grads in zip(*gradients)]
        for w, g in zip(self.weights, summed):
            w -= self.lr * g
        return self.weights

    def get_weights(self):
        return self.weights


class DocsWorker:
    def __init__(self, model_fn, data_fn, rank: int, world: int, batch: int, seed: int, slow: float, straggle,
                 compute_s: float | None = None):
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.model = model_fn()
        (x, y) = data_fn()["train"]
        self.stream = _batches(x, y, rank, world, batch, seed)
        self.rng, self.slow, self.straggle = np.random.default_rng([seed, rank, 7]), slow, straggle
        self.compute_s = compute_s
        self.last_loss = float("nan")

    def compute_gradients(self, weights):
        began = time.monotonic()
        for p, w in zip(self.model.parameters(), weights):
            p.data = torch.from_numpy(np.array(w))
        xb, yb = next(self.stream)
        self.model.zero_grad()
        loss = nn.functional.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.last_loss = loss.item()
        compute_s = time.monotonic() - began if self.compute_s is None else self.compute_s
        extra = _delay(self.rng, compute_s, self.slow, self.straggle)
        if extra:
            time.sleep(extra)
        return [p.grad.numpy() for p in self.model.parameters()]

    def loss(self) -> float:
        return self.last_loss


def raydocs_ps(model_fn, data_fn, workers: int, batch: int, lr: float, steps: int, sync: bool,
               target: float | None = None, slow: dict | None = None, straggle=None, seed: int = 0,
               compute_s: float | None = None) -> dict:
    """The docs' loop: ``steps`` gradients per worker, async (ray.wait) or sync (all, then one update)."""
    import ray

    ps = ray.remote(DocsParameterServer).options(num_cpus=0).remote(model_fn, lr, seed)
    actors = [ray.remote(DocsWorker).options(num_cpus=0).remote(
        model_fn, data_fn, r, workers, batch, seed, (slow or {}).get(r, 0.0), straggle, compute_s)
        for r in range(workers)]
    clock = StepClock(steps * workers, target)
    try:
        weights = ps.get_weights.remote()
        if sync:
            for _ in range(steps):
                weights = ps.apply_gradients.remote(*[a.compute_gradients.remote(weights) for a in actors])
                ray.get(weights)
                # the loss costs a call per worker: asked for only when a target needs it
                loss = float(np.mean(ray.get([a.loss.remote() for a in actors]))) if target is not None else 0.0
                for _ in actors:
                    clock.step(batch, loss)
        else:
            pending = {a.compute_gradients.remote(weights): a for a in actors}
            for _ in range(steps * workers):
                ready, _ = ray.wait(list(pending))
                actor = pending.pop(ready[0])
                weights = ps.apply_gradients.remote(ready[0])
                pending[actor.compute_gradients.remote(weights)] = actor
                clock.step(batch, ray.get(actor.loss.remote()) if target is not None else 0.0)
            ray.get(list(pending))
    finally:
        for a in [ps, *actors]:
            ray.kill(a)
    return {"samples_per_s": clock.samples_per_s, "reached_s": clock.reached_s}


if __name__ == "__main__":
    import sys

    rank_main(sys.argv[1:])

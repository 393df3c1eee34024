"""What every row of ``psctl bench`` shares: the row itself and the rayps job each row runs.

Every row trains the same model on the same synthetic MNIST-shaped data with
the same batch per worker, SGD at one learning rate, 2 workers (and 2 shards
for rayps). runner.py, sparse.py and wire.py build their rows on these.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ..job.config import JobConfig
from ...settings import build
from ...worker.models import mlp

WORKERS, BATCH, LR = 2, 128, 0.01
MODELS = {  # name -> (hidden layers, steps per worker in a full run)
    "small": ((256,), 800),
    "large": ((3584, 2048), 40),
}
MODES = {"asp": {"mode": "asp"}, "ssp s=1": {"mode": "ssp", "staleness": 1},
         "ssp s=2": {"mode": "ssp", "staleness": 2}, "bsp": {"mode": "bsp"}}


@dataclass
class Row:
    model: str
    system: str
    samples_per_s: float
    extra: dict = field(default_factory=dict)


def model_fn(hidden) -> functools.partial:
    return functools.partial(mlp, in_features=784, hidden=list(hidden), num_classes=10)


def bench_job(hidden, steps: int, consistency: dict, **keys) -> JobConfig:
    """The rayps job every bench row runs: the MLP, the synthetic data, SGD, 2 workers and 2 shards."""
    return build(JobConfig, {
        "model": "rayps.worker.models:mlp", "model_args": {"in_features": 784, "hidden": list(hidden)},
        "data": "rayps.worker.datasets:synthetic_mnist", "optimizer": {"name": "sgd", "lr": LR},
        "schedule": {"name": "constant"},  # the peers' SGD keeps its lr: the same knobs for every system
        "consistency": consistency, "workers": WORKERS, "servers": 2, "batch_size": BATCH,
        "epochs": 1000, "max_steps": steps, "eval_every_s": 0,
        # the start's checkpoint only, as the peers take none (cuts by steps would be the bench's to pay)
        "checkpoint": {"every_steps": None}, **keys,
    }, "bench")


def rayps_config(config, transport: str | None = None) -> str:
    """What a rayps row ran, in the words its table prints beside it (``transport``: the one the job used)."""
    c = config.consistency
    mode = c.mode + (f" s={c.staleness}" if c.mode == "ssp" else "") + (f" quorum {c.quorum}" if c.quorum else "")
    codec = config.compression.codec
    return (f"{config.workers} workers, {config.servers} shards, {transport or config.transport}, {mode}, batch {config.batch_size},"
            f" SGD lr {config.optimizer.lr}, overlap {'on' if config.overlaps else 'off'}"
            f"{'' if codec == 'none' else f', {codec} pushes'}")


def peer_config(system: str, workers: int = WORKERS) -> str:
    common = f"batch {BATCH}, SGD lr {LR}"
    return {"ddp": f"{workers} processes, gloo all-reduce in 25 MB buckets, {common}",
            "ddp fp16": f"{workers} processes, gloo all-reduce of fp16 (DDP's fp16_compress_hook), {common}",
            "raydocs async": f"1 server actor, {workers} worker actors, driver loops on ray.wait, {common}",
            "raydocs sync": f"1 server actor, {workers} worker actors, driver gathers all then steps, {common}",
            "ceiling": f"{workers} processes, no communication, {common}",
            "single": f"1 process, {common}"}[system]

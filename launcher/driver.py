"""The job driver: place shard and worker actors, watch them, score the result.

``run_job`` is the whole life of a job, readable top to bottom: resolve the
model, data and loss; initialise the parameters once and cut them into shard
ranges; start the shards, then the workers; wait while printing progress;
pull the final parameters, evaluate on the test split, write the run
directory, and tear every actor down (also on failure).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch
from torch import nn

from launcher.config import JobConfig
from launcher.local import ensure_ray
from launcher.progress import ProgressLine, describe
from launcher.rundir import default_run_dir, write_run_dir
from ps.errors import JobError
from ps.partition import partition
from ps.grpc_client import GrpcEndpoints
from ps.grpc_security import new_token
from ps.grpc_server import ServedShard
from worker.data import DataSource, EpochSharder, resolve_data
from worker.flat import FlatParams
from worker.imports import import_object
from worker.losses import resolve_loss
from worker.trainer import Worker, WorkerPlan

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    summary: dict  # what summary.json holds
    params: np.ndarray  # the final flat parameter vector
    model: nn.Module  # a model holding the final parameters
    run_dir: Path


def run_job(config: JobConfig, output: str | Path | None = None,
            progress: ProgressLine | None = None, dashboard: bool = True) -> JobResult:
    began = time.monotonic()
    model_fn = _model_factory(config)
    loss_fn = resolve_loss(config.loss)
    splits = resolve_data(config.data, config.test_data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = model_fn()
    flat = FlatParams(model)
    ranges = partition(flat.numel, config.servers)
    sharder = EpochSharder(len(splits.train), config.workers, config.batch_size, config.seed)
    steps_per_worker = config.epochs * sharder.batches_per_epoch
    if config.max_steps is not None:
        steps_per_worker = min(steps_per_worker, config.max_steps)
    # The schedule's horizon: one update per push (asp, ssp) or per clock (bsp).
    total_updates = steps_per_worker * (1 if config.consistency.mode == "bsp" else config.workers)

    dashboard_url = ensure_ray(dashboard)
    _check_resources(config)
    init = flat.host_params()
    shard_cls = ray.remote(ServedShard)
    shards = [
        shard_cls.options(num_cpus=config.server_cpus).remote(
            r.shard_id, init[r.lo:r.hi], list(range(config.workers)),
            config.optimizer, config.schedule, config.consistency, total_updates)
        for r in ranges
    ]
    actors = list(shards)
    try:
        endpoints = _serve_grpc(config, shards) if config.transport == "grpc" else None
        train_ref = ray.put(splits.train)
        worker_cls = ray.remote(Worker)
        workers = [
            worker_cls.options(num_cpus=config.worker_cpus, num_gpus=config.num_gpus).remote(
                _plan(config, w), model_fn, loss_fn, train_ref, shards, ranges, endpoints)
            for w in range(config.workers)
        ]
        actors += workers
        label = _label(config)
        if dashboard_url:
            print(f"Ray dashboard: {dashboard_url}", flush=True)
        train_began = time.monotonic()
        reports = _wait_for_workers(workers, shards, progress, steps_per_worker, label, train_began)
        train_s = time.monotonic() - train_began
        pulled = ray.get([s.pull.remote() for s in shards])
        stats = ray.get([s.stats.remote() for s in shards])
    finally:
        for actor in actors:
            ray.kill(actor)

    final = np.concatenate([p for p, _ in pulled])
    flat.load(final)
    test_loss, test_accuracy = evaluate(model, loss_fn, splits.test) if splits.test is not None else (None, None)
    summary = _summary(config, reports, stats, test_loss, test_accuracy, train_s, time.monotonic() - began)
    summary["dashboard_url"] = dashboard_url
    run_dir = write_run_dir(Path(output) if output else default_run_dir(config), config, summary)
    return JobResult(summary=summary, params=final, model=model, run_dir=run_dir)


def _serve_grpc(config: JobConfig, shards) -> GrpcEndpoints:
    """Have every shard serve gRPC (port 0) and collect the addresses it bound."""
    g = config.grpc
    host = g.host
    if host is None and len([n for n in ray.nodes() if n.get("Alive")]) == 1:
        host = "127.0.0.1"  # one machine: stay on loopback
    token = new_token()  # one per job; it reaches the actors as arguments, never a log line
    addresses = ray.get([s.serve_grpc.remote(token, host, g.tls, g.chunk_bytes) for s in shards])
    return GrpcEndpoints(tuple(addresses), token, g.tls, g.timeout_s, g.chunk_bytes)


def _model_factory(config: JobConfig) -> Callable[[], nn.Module]:
    factory = import_object(config.model, "model") if isinstance(config.model, str) else config.model
    return functools.partial(factory, **config.model_args)


def _plan(config: JobConfig, worker_id: int) -> WorkerPlan:
    return WorkerPlan(
        worker_id=worker_id, num_workers=config.workers, batch_size=config.batch_size,
        epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
        slow_s=float(config.debug.slow_workers.get(worker_id, 0.0)),
        use_gpu=config.num_gpus > 0, torch_threads=config.torch_threads,
    )


def _label(config: JobConfig) -> str:
    c = config.consistency
    return {"asp": "asp", "ssp": f"ssp s={c.staleness}",
            "bsp": "bsp" if c.quorum is None else f"bsp {c.quorum}/{config.workers}"}[c.mode]


def _check_resources(config: JobConfig) -> None:
    """Fail now, naming what is missing, rather than leave actors pending forever."""
    have = ray.cluster_resources()
    wants = {
        "CPU": config.workers * config.worker_cpus + config.servers * config.server_cpus,
        "GPU": config.workers * config.num_gpus,
    }
    for resource, amount in wants.items():
        if amount > have.get(resource, 0):
            raise JobError(f"the job needs {amount:g} {resource} but the Ray cluster has {have.get(resource, 0):g}")


def _wait_for_workers(workers, shards, progress, steps_per_worker, label, began) -> list[dict]:
    """Block until every worker returns; report progress; fail fast when one fails."""
    pending = {w.run.remote(): i for i, w in enumerate(workers)}
    reports: dict[int, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for ref in done:
            worker_id = pending.pop(ref)
            try:
                reports[worker_id] = ray.get(ref)
            except Exception as e:
                cause = getattr(e, "cause", None) or e  # the worker's own exception, not Ray's wrapper
                raise JobError(f"worker-{worker_id} failed: {type(cause).__name__}: {cause}") from e
        if progress is not None:
            stats = ray.get(shards[0].stats.remote())
            progress.update(describe(stats, steps_per_worker, time.monotonic() - began, label))
    if progress is not None:
        progress.close()
    return [reports[i] for i in sorted(reports)]


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, data: DataSource, batch_size: int = 1024) -> tuple[float, float | None]:
    """Mean loss over ``data`` and, for class-index targets, accuracy."""
    model.eval()
    total_loss, correct, seen, classify = 0.0, 0, 0, True
    for lo in range(0, len(data), batch_size):
        x, y = data.batch(np.arange(lo, min(lo + batch_size, len(data))))
        out = model(x)
        total_loss += float(loss_fn(out, y)) * len(y)
        classify = classify and y.dtype == torch.int64 and out.dim() == 2
        if classify:
            correct += int((out.argmax(dim=1) == y).sum())
        seen += len(y)
    return total_loss / seen, (correct / seen if classify else None)


def _summary(config, reports, stats, test_loss, test_accuracy, train_s, wall_s) -> dict:
    histogram: Counter = Counter()
    for s in stats:
        histogram.update({int(k): v for k, v in s["staleness_histogram"].items()})
    samples = sum(r["samples"] for r in reports)
    wait_s = {r["worker_id"]: max(s["wait_s"].get(r["worker_id"], 0.0) for s in stats) for r in reports}
    return {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "consistency": config.consistency.mode,
        "staleness_bound": config.consistency.bound,
        "quorum": config.consistency.quorum,
        "max_clock_gap": max(s["max_clock_gap"] for s in stats),
        "staleness_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "steps": {str(r["worker_id"]): r["steps"] for r in reports},
        "pushes_applied": sum(s["pushes_applied"] for s in stats),
        "pushes_dropped": sum(s["pushes_dropped"] for s in stats),
        "pushes_rejected": sum(sum(s["rejected"].values()) for s in stats),
        "optimizer_steps": {str(s["shard_id"]): s["version"] for s in stats},
        "wait_s": {str(k): round(v, 3) for k, v in wait_s.items()},
        "final_train_loss": {str(r["worker_id"]): r["final_loss"] for r in reports},
        "samples": samples,
        "samples_per_s": samples / train_s if train_s > 0 else None,
        "train_s": train_s,
        "wall_s": wall_s,
        "workers": config.workers,
        "servers": config.servers,
        "transport": config.transport,
    }

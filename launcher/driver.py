"""The job driver: place shard and worker actors, watch them, score the result.

``run_job`` is the whole life of a job, readable top to bottom: resolve the
model, data and loss; initialise the parameters once and cut them into shard
ranges; start the shards, then the workers; wait while printing progress;
pull the final parameters, evaluate on the test split, write the run
directory, and tear every actor down (also on failure).
"""

from __future__ import annotations

import functools
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError
from torch import nn

from rayps.launcher.config import JobConfig
from rayps.launcher.local import ensure_ray
from rayps.launcher.monitor import Monitor, name_failure
from rayps.launcher.placement import check_feasible, server_options, worker_options
from rayps.launcher.progress import ProgressLine
from rayps.launcher.report import write_report
from rayps.launcher.rundir import default_run_dir, write_run_dir
from rayps.ps.client import RayTransport
from rayps.ps.shm_client import ShmEndpoints
from rayps.ps.grpc_client import GrpcEndpoints
from rayps.ps.grpc_security import GrpcConfig, new_token
from rayps.ps.served import ServedShard
from rayps.ps.partition import partition
from rayps.worker.data import DataSource, EpochSharder, resolve_data
from rayps.worker.flat import FlatParams
from rayps.worker.imports import import_object
from rayps.worker.losses import resolve_loss
from rayps.worker.trainer import Worker, WorkerPlan

@dataclass
class JobResult:
    summary: dict  # what summary.json holds
    params: np.ndarray  # the final flat parameter vector
    model: nn.Module  # a model holding the final parameters
    run_dir: Path
    history: list[dict] = field(default_factory=list)  # the rows of history.jsonl


def run_job(config: JobConfig, output: str | Path | None = None,
            progress: ProgressLine | None = None, dashboard: bool = True, report: bool = True) -> JobResult:
    began = time.monotonic()
    model_fn = _model_factory(config)
    loss_fn = resolve_loss(config.loss)
    splits = resolve_data(config.data, config.test_data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = model_fn()
    flat = FlatParams(model)
    ranges = partition(flat.numel, config.servers)
    # Model buffers (BatchNorm statistics): cut across the shards the same way; some may hold none.
    buffer_ranges = partition(flat.buffers.numel, config.servers, allow_empty=True)
    sharder = EpochSharder(len(splits.train), config.workers, config.batch_size, config.seed)
    steps_per_worker = config.epochs * sharder.batches_per_epoch
    if config.max_steps is not None:
        steps_per_worker = min(steps_per_worker, config.max_steps)
    # The schedule's horizon: one update per push (asp, ssp) or per clock (bsp).
    total_updates = steps_per_worker * (1 if config.consistency.mode == "bsp" else config.workers)

    dashboard_url = ensure_ray(dashboard)
    check_feasible(config, ray.nodes())
    run_id = uuid.uuid4().hex[:8]
    namespace = f"rayps-{run_id}"  # actor names are unique per run, not per cluster
    init, init_buffers, integer = flat.host_params(), flat.buffers.pack(), flat.buffers.integer
    shard_cls = ray.remote(ServedShard)
    shards = [
        shard_cls.options(**server_options(config, r.shard_id, namespace)).remote(
            r.shard_id, init[r.lo:r.hi], list(range(config.workers)),
            config.optimizer, config.schedule, config.consistency, total_updates, run_id,
            init_buffers[b.lo:b.hi], integer[b.lo:b.hi])
        for r, b in zip(ranges, buffer_ranges)
    ]
    actors = list(shards)
    transport = None
    try:
        transport = _transport(config, shards, tuple(ranges), tuple(buffer_ranges))
        train_ref = ray.put(splits.train)
        worker_cls = ray.remote(Worker)
        workers = [
            worker_cls.options(**worker_options(config, w, namespace)).remote(
                _plan(config, w, run_id), model_fn, loss_fn, train_ref, transport)
            for w in range(config.workers)
        ]
        actors += workers
        try:
            placement = _placement(shards, workers)
        except RayActorError as e:  # an actor died starting up: name it, as the monitor does later
            raise name_failure(shards, workers, "the job's start", e) from e
        if dashboard_url:
            print(f"Ray dashboard: {dashboard_url}", flush=True)

        def evaluate_now():
            flat.load(*_merge_pulled(ray.get([s.pull.remote() for s in shards])))
            return evaluate(model, loss_fn, splits.test) if splits.test is not None else (None, None)

        monitor = Monitor(workers, shards, steps_per_worker, _label(config), progress,
                          evaluate_now, config.eval_every_s)
        train_began = time.monotonic()
        reports = monitor.wait()
        train_s = time.monotonic() - train_began
        pulled = ray.get([s.pull.remote() for s in shards])
        stats = ray.get([s.stats.remote() for s in shards])
    finally:
        _stop_serving(shards)
        for actor in actors:
            ray.kill(actor)
        if isinstance(transport, ShmEndpoints):  # a shard that died could not remove its segment
            for directory in transport.directories:
                shutil.rmtree(directory, ignore_errors=True)

    final, final_buffers = _merge_pulled(pulled)
    flat.load(final, final_buffers)
    test_loss, test_accuracy = evaluate(model, loss_fn, splits.test) if splits.test is not None else (None, None)
    history = monitor.history
    if history:
        history[-1].update(test_loss=test_loss, test_accuracy=test_accuracy, t=round(train_s, 3))
    summary = _summary(config, reports, stats, test_loss, test_accuracy, train_s, time.monotonic() - began)
    summary["transport"] = transport.name  # what auto chose, not what the config said
    summary["dashboard_url"] = dashboard_url
    summary["placement"] = placement
    summary["run_id"] = run_id
    run_dir = write_run_dir(Path(output) if output else default_run_dir(config), config, summary, history)
    if report:
        write_report(run_dir)
    return JobResult(summary=summary, params=final, model=model, run_dir=run_dir, history=history)


def _merge_pulled(pulled: list) -> tuple[np.ndarray, np.ndarray]:
    """Every shard's ``pull()`` joined: the flat parameters and the flat merged buffers."""
    params = np.concatenate([p for p, _, _ in pulled])
    buffers = [b for _, _, b in pulled if b is not None]
    return params, np.concatenate(buffers) if buffers else np.zeros(0, np.float64)


def _placement(shards, workers) -> dict:
    """Which node each actor landed on, by its dashboard name."""
    names = [f"ps-shard-{i}" for i in range(len(shards))] + [f"worker-{i}" for i in range(len(workers))]
    return dict(zip(names, ray.get([a.where.remote() for a in [*shards, *workers]])))


def chosen_transport(config: JobConfig, nodes: list[dict]) -> str:
    """``auto``: shared memory when the job has one node to run on, gRPC streams across nodes."""
    if config.transport != "auto":
        return config.transport
    return "shm" if len([n for n in nodes if n.get("Alive")]) == 1 else "grpc"


def _transport(config: JobConfig, shards, ranges, buffer_ranges):
    """The transport spec every worker connects through (ps/transport.py)."""
    return make_transport(chosen_transport(config, ray.nodes()), shards, ranges, buffer_ranges,
                          config.workers, config.grpc)


def make_transport(name: str, shards, ranges, buffer_ranges, workers: int, grpc: GrpcConfig | None = None):
    """Have the shards serve transport ``name`` and return the spec workers connect through."""
    grpc = grpc or GrpcConfig()
    if name == "grpc":
        return _serve_grpc(grpc, shards, ranges, buffer_ranges)
    if name == "shm":
        token = new_token()
        placed = ray.get([s.where.remote() for s in shards])
        directories = ray.get([s.serve_shm.remote(token) for s in shards])
        return ShmEndpoints(tuple(directories), tuple(p["node_id"] for p in placed), token, ranges, buffer_ranges,
                            grpc.timeout_s)
    return RayTransport(tuple(shards), ranges, buffer_ranges)


def _stop_serving(shards) -> None:
    """Ask every shard to close its servers and remove its shared memory; a dead one cannot, and is skipped."""
    done, _ = ray.wait([s.stop_serving.remote() for s in shards], num_returns=len(shards), timeout=5.0)
    for ref in done:
        try:
            ray.get(ref)
        except Exception:  # a dead shard's files go with its node's tmpfs; nothing more to do from here
            pass


def _serve_grpc(g: GrpcConfig, shards, ranges, buffer_ranges) -> GrpcEndpoints:
    """Have every shard serve gRPC (port 0) and collect the addresses it bound."""
    host = g.host
    if host is None and len([n for n in ray.nodes() if n.get("Alive")]) == 1:
        host = "127.0.0.1"  # one machine: stay on loopback
    token = new_token()  # one per job; it reaches the actors as arguments, never a log line
    addresses = ray.get([s.serve_grpc.remote(token, host, g.tls, g.chunk_bytes) for s in shards])
    return GrpcEndpoints(tuple(addresses), token, g.tls, g.timeout_s, g.chunk_bytes, ranges, buffer_ranges)


def _model_factory(config: JobConfig) -> Callable[[], nn.Module]:
    factory = import_object(config.model, "model") if isinstance(config.model, str) else config.model
    return functools.partial(factory, **config.model_args)


def _plan(config: JobConfig, worker_id: int, run_id: str = "") -> WorkerPlan:
    return WorkerPlan(
        worker_id=worker_id, num_workers=config.workers, batch_size=config.batch_size,
        epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
        slow_s=float(config.debug.slow_workers.get(worker_id, 0.0)),
        slowdown=float(config.debug.slowdown.get(worker_id, 0.0)),
        straggle_p=float(config.debug.stragglers.get("probability", 0.0)),
        straggle_factor=float(config.debug.stragglers.get("factor", 0.0)),
        target_loss=config.target_loss,
        use_gpu=config.num_gpus > 0, torch_threads=config.torch_threads, run_id=run_id,
        overlap=config.overlaps,
    )


def _label(config: JobConfig) -> str:
    c = config.consistency
    return {"asp": "asp", "ssp": f"ssp s={c.staleness}",
            "bsp": "bsp" if c.quorum is None else f"bsp {c.quorum}/{config.workers}"}[c.mode]


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
        # after each worker's first tenth of steps; summed, so a worker that finishes early still counts
        "steady_samples_per_s": sum(r["steady_samples"] / r["steady_s"] for r in reports if r["steady_s"] > 0),
        # the first worker whose mean loss over 10 steps fell below target_loss, seconds into its run
        "time_to_target_s": min((r["reached_target_s"] for r in reports if r["reached_target_s"] is not None),
                                default=None),
        "train_s": train_s,
        "wall_s": wall_s,
        "workers": config.workers,
        "servers": config.servers,
    }

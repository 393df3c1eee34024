"""The job driver: place shard and worker actors, hand the watch to the controller, score the result.

``run_job`` is the whole life of a job, readable top to bottom: resolve the
model, data and loss; initialise the parameters once and cut them into shard
ranges; start the shards (each restores the newest checkpoint of the run
directory, if it has one: that is ``--resume``), the work queue and the
transport; write checkpoint 0; let the controller start the workers and keep
them going (launcher/job/controller.py); pull the final parameters, evaluate on
the test split, write the run directory, and tear every actor down. A job
that fails still writes its run directory, with the error in the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
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
from torch import nn

from ...errors import ConfigError
from .checkpointing import Checkpointer
from .config import JobConfig
from .controller import Controller
from ..export.saved import save_run_model
from .throttle import ThrottledLink
from ...protos.compression import Codec
from .wire_summary import compression_summary
from .dataprep import prepare_on_ray, write_data_files
from .local import ensure_ray
from .monitor import Monitor
from .placement import check_feasible, server_options, worker_options
from .policies import CheckpointSchedule, RestartBudget, StallWatch
from .progress import ProgressLine
from .report import write_report
from .rundir import default_run_dir, write_run_dir
from ...ps.transport.object_store import RayTransport
from ...ps.transport.shm_client import ShmEndpoints
from ...ps.transport.grpc_client import GrpcEndpoints
from ...ps.transport.grpc_security import GrpcConfig, new_token
from ...ps.served import ServedShard
from ...ps.core.partition import partition
from ...ps.sparse.client import ShardLookups
from ...worker.loop.chaos import WorkerChaos
from ...worker.queue.coordinator import WorkCoordinator
from ...worker.data.sources import Splits, resolve_data
from ...worker.data.config import DataConfig
from ...worker.loop.embedding import SavedRows, bind, sparse_tables
from ...worker.loop.flat import FlatParams
from ...worker.imports import import_object
from ...worker.loop.losses import resolve_loss, takes_weight
from ...worker.loop.scoring import evaluate, score
from ...worker.loop.trainer import Worker, WorkerPlan
from ...worker.queue.workqueue import WorkQueue, default_chunk_batches, plan_batches

log = logging.getLogger(__name__)

#: Where ``psctl scale`` finds a running job's work queue: ``coordinator-<job>`` in this namespace.
COORDINATORS = "rayps"


@dataclass
class JobResult:
    summary: dict  # what summary.json holds
    params: np.ndarray  # the final flat parameter vector
    model: nn.Module  # a model holding the final parameters
    run_dir: Path
    history: list[dict] = field(default_factory=list)  # the rows of history.jsonl
    transform: object = None  # data read in chunks: the fitted DataTransform the model expects its inputs through


def job_name(run_id: str) -> str:
    """A running job's name for ``psctl scale``: its submission id (``psctl submit`` hands it over as
    ``RAYPS_JOB_NAME``), else its run id."""
    return os.environ.get("RAYPS_JOB_NAME") or run_id


def run_job(config: JobConfig, output: str | Path | None = None,
            progress: ProgressLine | None = None, dashboard: bool = True, report: bool = True,
            on_start: Callable[[str], None] | None = None) -> JobResult:
    """Run ``config`` to the end. ``output``: the run directory (a new one under runs/ by default);
    if it holds checkpoints, the job resumes from the newest valid one. ``on_start`` is called
    with the job's name once its work queue is up (``scale_job`` takes that name)."""
    began = time.monotonic()
    model_fn = _model_factory(config)
    loss_fn = resolve_loss(config.loss)
    ckpt = config.checkpoint
    prepared = None
    if isinstance(config.data, DataConfig):  # files read in chunks: statistics passes on Ray first
        if config.test_data is not None:
            raise ConfigError("test_data does not go with a data section: give its test split as data.test")
        ensure_ray(dashboard)
        root = Path(output) if output else None
        prepared = prepare_on_ray(config, _checkpoint_root(config, root) if root else None, root)
        splits = Splits(prepared.train, prepared.test, prepared)
    else:
        splits = resolve_data(config.data, config.test_data, seed=config.seed)
    if getattr(splits.train, "weighted", False) and not takes_weight(loss_fn):
        raise ConfigError(f"loss ({config.loss!r}) takes no per-example weights, and the data's sampling "
                          f"({config.data.sample.method}) weights every example: give it a weight= argument")
    torch.manual_seed(config.seed)
    model = model_fn()
    flat = FlatParams(model)
    shapes = sparse_tables(model)  # rayps.Embedding tables: their rows live on the shards, never here
    if prepared is not None and not shapes:
        _check_inputs(model, prepared)
    tables = tuple(config.sparse.table_configs(shapes, config.consistency, config.seed))
    # A shard may hold no dense values when the model's weight is in its sparse tables.
    ranges = partition(flat.numel, config.servers, allow_empty=bool(shapes))
    # Model buffers (BatchNorm statistics): cut across the shards the same way; some may hold none.
    buffer_ranges = partition(flat.buffers.numel, config.servers, allow_empty=True)
    batches = plan_batches(splits.train, config.workers, config.batch_size, config.seed)
    steps_per_worker = config.epochs * max(batches.stretches)
    if config.max_steps is not None:
        steps_per_worker = min(steps_per_worker, config.max_steps)
    # The schedule's horizon: one update per push (asp, ssp) or per clock (bsp): the mode says.
    total_updates = steps_per_worker * config.consistency.rules.updates_per_clock(config.workers)
    # Data read in chunks: a unit is one chunk by default (its ends cut the units), so no chunk is read twice.
    chunk = config.chunk_batches or (batches.per_epoch if batches.chunk_ends is not None
                                     else default_chunk_batches(batches.per_epoch, config.workers))
    queue = WorkQueue(batches.stretches, config.epochs, chunk, config.max_steps,
                      steal=config.consistency.rules.steals, chunk_ends=batches.chunk_ends)

    dashboard_url = ensure_ray(dashboard)
    check_feasible(config, ray.nodes())
    # From here on the job runs: its directory exists from the start (config first, so a crashed
    # driver's run can be resumed), and a job that fails still leaves it.
    run_dir = Path(output) if output else default_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    data_summary = write_data_files(run_dir, prepared) if prepared is not None else None
    run_id = uuid.uuid4().hex[:8]
    namespace = f"rayps-{run_id}"  # actor names are unique per run, not per cluster
    ckpt_root = _checkpoint_root(config, run_dir)
    init, init_buffers, integer = flat.host_params(), flat.buffers.pack(), flat.buffers.integer
    shard_cls = ray.remote(ServedShard)
    shards = [
        shard_cls.options(**server_options(config, r.shard_id, namespace),
                          max_restarts=config.fault.max_restarts if ckpt.enabled else 0).remote(
            r.shard_id, init[r.lo:r.hi], list(range(config.workers)),
            config.optimizer, config.schedule, config.consistency, total_updates, run_id,
            init_buffers[b.lo:b.hi], integer[b.lo:b.hi], audit=config.debug.audit, checkpoints=ckpt_root,
            tables=tables, num_shards=config.servers, codec=config.compression.make_codec(),
            pull_codec=Codec(config.compression.pull))
        for r, b in zip(ranges, buffer_ranges)
    ]
    bind(model, ShardLookups(shards, {t: d for t, (_, d) in shapes.items()}))  # evaluation reads the shards' rows
    coordinator = ray.remote(WorkCoordinator).options(
        name=f"coordinator-{job_name(run_id)}", namespace=COORDINATORS, num_cpus=0).remote(
        queue, batches, config.workers, run_id)
    actors = [*shards, coordinator]
    transport = controller = monitor = link = link_stats = None
    placement: dict = {}
    try:
        transport = served = _transport(config, shards, tuple(ranges), tuple(buffer_ranges))
        if config.debug.link_mbit is not None:  # a slow network, emulated: workers reach shards through it
            link, transport = throttled(transport, config.debug.link_mbit, config.debug.link_latency_ms)
        train_ref = ray.put(splits.train)
        worker_cls = ray.remote(Worker)
        worker_faults = {"kill": {f.index: f for f in config.chaos.faults("kill") if f.kind == "worker"},
                         "hang": {f.index: f for f in config.chaos.faults("hang") if f.kind == "worker"}}

        def start_worker(worker_id: int, incarnation: int):
            plan = _plan(config, worker_id, run_id, incarnation,
                         _chaos(worker_faults, worker_id) if incarnation == 0 else WorkerChaos())
            actor = worker_cls.options(**worker_options(config, worker_id, namespace, incarnation)).remote(
                plan, model_fn, loss_fn, train_ref, transport, coordinator)
            actors.append(actor)
            return actor

        def evaluate_now():
            flat.load(*_merge_pulled(ray.get([s.pull.remote() for s in shards])))
            return evaluate(model, loss_fn, splits.test) if splits.test is not None else (None, None)

        checkpointer = history = None
        initial = {w: 0 for w in range(config.workers)}
        if ckpt_root is not None:
            checkpointer = Checkpointer(ckpt_root, ckpt.keep, CheckpointSchedule(ckpt.every_s, ckpt.every_steps),
                                        config.to_dict(),
                                        extra={"data": prepared.state()} if prepared is not None else None)
            restored = ray.get(shards[0].life.remote())["restored"]
            if restored is not None:  # a resumed job: every worker comes back as a new incarnation
                initial, history = _resume(shards, coordinator, checkpointer, restored, config.workers)
            checkpointer.take(shards, coordinator, history or [], now=0.0)
        if on_start is not None:
            on_start(job_name(run_id))
        if dashboard_url:
            print(f"Ray dashboard: {dashboard_url}", flush=True)
        monitor = Monitor(steps_per_worker, _label(config), progress, evaluate_now, config.eval_every_s, history)
        controller = Controller(
            shards, coordinator, start_worker, initial, monitor,
            RestartBudget(config.fault.max_restarts, can_restore=ckpt.enabled),
            StallWatch(config.fault.stall_s, config.fault.on_stall), checkpointer,
            _serve_again(served, shards, config.grpc),
            [(kind, f) for kind in ("kill", "hang") for f in config.chaos.faults(kind) if f.kind == "ps-shard"],
            waits=config.consistency.rules.waits)
        reports = controller.run(placement)
        train_s = time.monotonic() - controller.train_began
        pulled = ray.get([s.pull.remote() for s in shards])
        stats = ray.get([s.stats.remote() for s in shards])
        # Scored while the shards still serve: a sparse model reads its rows from them.
        final, final_buffers = _merge_pulled(pulled)
        flat.load(final, final_buffers)
        test_loss, test_accuracy, final_auc = score(model, loss_fn, splits.test) if splits.test is not None \
            else (None, None, None)
        # The trained rows come home with the model (only rows some batch touched exist at all).
        saved = {name: _exported(shards, name) for name in shapes}
        coverage = ray.get(coordinator.coverage.remote())
        audit = ray.get([s.applied_log.remote() for s in shards]) if config.debug.audit else None
    except Exception as error:
        _write_failed(run_dir, config, error, monitor, controller, began, report)
        raise
    finally:
        if link is not None:
            link_stats = link.stats()
            link.close()
        _stop_serving(shards)
        for actor in actors:
            ray.kill(actor)
        if isinstance(transport, ShmEndpoints):  # a shard that died could not remove its segment
            for directory in transport.directories:
                shutil.rmtree(directory, ignore_errors=True)

    history = monitor.history
    if history:
        history[-1].update(test_loss=test_loss, test_accuracy=test_accuracy, t=round(train_s, 3))
    summary = _summary(config, reports, stats, test_loss, test_accuracy, train_s, time.monotonic() - began)
    summary.update(_recovery_summary(controller, checkpointer, coverage, reports, stats))
    summary.update(_sparse_summary(stats, reports))
    summary["compression"] = compression_summary(config.compression, reports, stats, transport.name)
    if final_auc is not None:
        summary["test_auc"] = final_auc
        reference = getattr(splits.test, "reference", None) or {}
        if "auc" in reference:  # a generated data set knows the AUC of its true model on this test set
            summary["reference_auc"] = reference["auc"]
            summary["auc_ratio"] = final_auc / reference["auc"]
    if data_summary is not None:
        summary["data"] = data_summary
    if audit is not None:
        summary["applied_twice"] = sum(len(log) - len(set(map(tuple, log))) for log in audit)
    summary["transport"] = transport.name  # what auto chose, not what the config said
    if link_stats is not None:
        summary["link"] = link_stats
    summary["dashboard_url"] = dashboard_url
    summary["placement"] = placement
    summary["run_id"] = run_id
    summary["job_name"] = job_name(run_id)
    run_dir = write_run_dir(run_dir, config, summary, history)
    try:  # model.safetensors and model.json, what psctl export reads; a job's result never hangs on it
        save_run_model(run_dir, model, config)
    except Exception:  # noqa: BLE001
        log.warning("could not write the trained model to %s", run_dir, exc_info=True)
    if saved:
        bind(model, SavedRows(saved, {t.name: t for t in tables}))
        (run_dir / "tables").mkdir(exist_ok=True)
        for name, (ids, rows) in saved.items():  # ids and their trained rows, one file per table
            np.savez(run_dir / "tables" / f"{name}.npz", ids=ids, rows=rows)
    if report:
        write_report(run_dir)
    return JobResult(summary=summary, params=final, model=model, run_dir=run_dir, history=history,
                     transform=prepared.transform if prepared is not None else None)


def _check_inputs(model: nn.Module, prepared) -> None:
    """A model must take what the data transform hands it: say so before any actor starts, with the
    columns, rather than as a shape error from inside a worker."""
    columns = prepared.transform.features.out_columns
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(2, len(columns)))
    except RuntimeError as e:
        raise ConfigError(f"the model does not take the {len(columns)} features the data transform hands it "
                          f"({', '.join(columns[:8])}{', ...' if len(columns) > 8 else ''}): {e}; set model_args "
                          f"to match (for the bundled mlp: in_features: {len(columns)})") from None
    finally:
        model.train()


def _checkpoint_root(config: JobConfig, run_dir: Path) -> str | None:
    ckpt = config.checkpoint
    return str(Path(ckpt.dir or run_dir / "checkpoints").resolve()) if ckpt.enabled else None


def scale_job(name: str, workers: int) -> None:
    """Ask the running job ``name`` (see ``job_name``) for ``workers`` workers; it adds or removes
    them without restarting. Call from any process connected to the job's Ray cluster."""
    from ...errors import ConfigError, JobError

    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers ({workers!r}) must be an integer >= 1")
    try:
        coordinator = ray.get_actor(f"coordinator-{name}", namespace=COORDINATORS)
    except ValueError:
        raise JobError(f"no running rayps job named {name!r} on this Ray cluster") from None
    ray.get(coordinator.set_wanted.remote(workers), timeout=30)


def _resume(shards, coordinator, checkpointer: Checkpointer, step: int, workers: int):
    """The shards restored checkpoint ``step`` by themselves; bring the queue back to it, and
    let every worker of that time leave, to come back as its next incarnation."""
    checkpointer.rewind(step, shards, coordinator)
    ledger = ray.get(shards[0].ledger.remote())
    for worker in ledger:
        ray.get([s.finish.remote(worker) for s in shards])
    initial = {w: ledger[w][0] + 1 if w in ledger else 0 for w in range(workers)}
    print(f"resuming from checkpoint {step} in {checkpointer.root}", flush=True)
    return initial, checkpointer.history(step)


def _write_failed(run_dir: Path, config: JobConfig, error: Exception, monitor, controller, began, report) -> None:
    """A failed job still leaves its run directory: the history so far, a summary with the error, plots."""
    summary = {"error": f"{type(error).__name__}: {error}", "failed": True, "wall_s": time.monotonic() - began,
               "consistency": config.consistency.mode, "workers": config.workers, "servers": config.servers}
    if controller is not None:
        summary.update(_recovery_summary(controller, controller.checkpointer, None, [], None))
    history = monitor.history if monitor is not None else []
    try:
        write_run_dir(run_dir, config, summary, history)
        if report and history:
            write_report(run_dir)
    except Exception:  # noqa: BLE001 - never hide the job's own error behind this one
        pass


def _recovery_summary(controller, checkpointer, coverage, reports, stats) -> dict:
    counts = controller.counts if controller is not None else Counter()
    out = {
        "restarts": dict(controller.budget.restarts) if controller is not None else {},
        "restored_checkpoint": controller.restored_checkpoint if controller is not None else None,
        "steps_lost": counts["steps_lost"],
        "steps_replayed": counts["steps_replayed"],
        "rollbacks": counts["rollbacks"],
        "workers_replaced": counts["replaced"],
        "workers_added": counts["added"],
        "workers_removed": counts["removed"],
        "stalls": controller.stall_reports if controller is not None else [],
        "checkpoints_written": checkpointer.written if checkpointer is not None else 0,
        "checkpoint_pause_s": round(checkpointer.pause_s, 4) if checkpointer is not None else 0.0,
        "resyncs": sum(r.get("resyncs", 0) for r in reports),
    }
    if stats is not None:
        out["pushes_duplicate"] = sum(s["duplicates"] for s in stats)
    if coverage is not None:
        out["examples_per_epoch"] = coverage["examples_per_epoch"]
        out["epoch_coverage"] = coverage["ranges"]
        out["batches_per_epoch"] = coverage["batches_per_epoch"]
    return out


def _chaos(faults: dict, worker_id: int) -> WorkerChaos:
    kill, hang = faults["kill"].get(worker_id), faults["hang"].get(worker_id)
    return WorkerChaos(
        kill_at_step=int(kill.at) if kill is not None and not kill.seconds else None,
        kill_after_s=kill.at if kill is not None and kill.seconds else None,
        hang_at_step=int(hang.at) if hang is not None else None)


def _exported(shards, table: str) -> tuple[np.ndarray, np.ndarray]:
    parts = ray.get([s.sparse_export.remote(table) for s in shards])
    return np.concatenate([i for i, _ in parts]), np.concatenate([r for _, r in parts])


def _merge_pulled(pulled: list) -> tuple[np.ndarray, np.ndarray]:
    """Every shard's ``pull()`` joined: the flat parameters and the flat merged buffers."""
    params = np.concatenate([p for p, _, _ in pulled])
    buffers = [b for _, _, b in pulled if b is not None]
    return params, np.concatenate(buffers) if buffers else np.zeros(0, np.float64)


def throttled(transport, mbit: float, latency_ms: float):
    """The job's gRPC endpoints behind one bandwidth-limited link (launcher/job/throttle.py), for benchmarks."""
    if not isinstance(transport, GrpcEndpoints):
        raise ConfigError(f"debug.link_mbit emulates a slow network for gRPC; this job's transport is"
                          f" {transport.name}: set transport: grpc")
    link = ThrottledLink(mbit, latency_ms)
    try:
        return link, dataclasses.replace(transport, addresses=tuple(link.proxy(a) for a in transport.addresses))
    except BaseException:
        link.close()
        raise


def _serve_again(transport, shards, grpc: GrpcConfig) -> Callable[[int], None]:
    """How a restarted shard serves again where it served, so clients reconnect in place."""
    def serve(i: int) -> None:
        if isinstance(transport, GrpcEndpoints):
            host, port = transport.addresses[i].rsplit(":", 1)
            ray.get(shards[i].serve_grpc.remote(transport.token, host.strip("[]"), grpc.tls, grpc.chunk_bytes,
                                                int(port)))
        elif isinstance(transport, ShmEndpoints):
            ray.get(shards[i].serve_shm.remote(transport.token, transport.directories[i]))
    return serve


def chosen_transport(config: JobConfig, nodes: list[dict]) -> str:
    """``auto``: shared memory when the job has one node to run on, gRPC streams across nodes."""
    if config.transport != "auto":
        return config.transport
    return "shm" if len([n for n in nodes if n.get("Alive")]) == 1 else "grpc"


def _transport(config: JobConfig, shards, ranges, buffer_ranges):
    """The transport spec every worker connects through (ps/transport/contract.py)."""
    spec = make_transport(chosen_transport(config, ray.nodes()), shards, ranges, buffer_ranges,
                          config.workers, config.grpc)
    if isinstance(spec, GrpcEndpoints):  # gRPC pulls may come compressed (fp16, bf16): the clients decode
        spec = dataclasses.replace(spec, pull=config.compression.pull)
    return spec


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


def _plan(config: JobConfig, worker_id: int, run_id: str = "", incarnation: int = 0,
          chaos: WorkerChaos = WorkerChaos()) -> WorkerPlan:
    return WorkerPlan(
        worker_id=worker_id, num_workers=config.workers, batch_size=config.batch_size,
        epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
        slow_s=float(config.debug.slow_workers.get(worker_id, 0.0)),
        slowdown=float(config.debug.slowdown.get(worker_id, 0.0)),
        straggle_p=float(config.debug.stragglers.get("probability", 0.0)),
        straggle_factor=float(config.debug.stragglers.get("factor", 0.0)),
        target_loss=config.target_loss,
        use_gpu=config.num_gpus > 0, torch_threads=config.torch_threads, run_id=run_id,
        overlap=config.overlaps, incarnation=incarnation, chaos=chaos,
        resync_timeout_s=config.fault.resync_timeout_s, compression=config.compression,
    )


def _label(config: JobConfig) -> str:
    return config.consistency.rules.label(config.consistency, config.workers)


def _sparse_summary(stats: list[dict], reports: list[dict]) -> dict:
    """The sparse tables over every shard: rows and bytes held, rows moved, staleness, waits."""
    tables: dict = {}
    for s in stats:
        for name, t in s.get("tables", {}).items():
            agg = tables.setdefault(name, {"mode": t["mode"], "rows": 0, "bytes": 0, "rows_per_shard": {},
                                           "bytes_per_shard": {}, "staleness_histogram": Counter(),
                                           "max_clock_gap": 0, "updates": {}})
            agg["rows"] += t["rows"]
            agg["bytes"] += t["bytes"]
            agg["rows_per_shard"][str(s["shard_id"])] = t["rows"]
            agg["bytes_per_shard"][str(s["shard_id"])] = t["bytes"]
            agg["updates"][str(s["shard_id"])] = t["version"]
            agg["staleness_histogram"].update({int(k): v for k, v in t["staleness_histogram"].items()})
            agg["max_clock_gap"] = max(agg["max_clock_gap"], t["max_clock_gap"])
            for key in ("rows_pulled", "rows_pushed", "rows_created", "rows_evicted", "rows_filtered",
                        "rows_dropped", "pushes_applied", "pushes_dropped", "duplicates"):
                agg[key] = agg.get(key, 0) + t.get(key, 0)
    for agg in tables.values():
        agg["staleness_histogram"] = {str(k): v for k, v in sorted(agg["staleness_histogram"].items())}
    if not tables:
        return {}
    return {"sparse_tables": tables,
            "sparse_rows_pulled": sum(r.get("rows_pulled", 0) for r in reports),
            "sparse_rows_pushed": sum(r.get("rows_pushed", 0) for r in reports)}


def _summary(config, reports, stats, test_loss, test_accuracy, train_s, wall_s) -> dict:
    histogram: Counter = Counter()
    for s in stats:
        histogram.update({int(k): v for k, v in s["staleness_histogram"].items()})
    # what the shards applied (a dead incarnation's pushes included; a rolled-back stretch not)
    samples = sum(stats[0]["samples"].values())
    wait_s = {r["worker_id"]: max(s["wait_s"].get(r["worker_id"], 0.0) for s in stats) for r in reports}
    steps_of_dead = [r for r in reports if r.get("died")]
    reports = [r for r in reports if not r.get("died")]
    steps: Counter = Counter()  # per worker id, summed over its incarnations
    for r in reports + steps_of_dead:
        steps[r["worker_id"]] += r["steps"]
    return {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "consistency": config.consistency.mode,
        "staleness_bound": config.consistency.bound,
        "quorum": config.consistency.quorum,
        "max_clock_gap": max(s["max_clock_gap"] for s in stats),
        "staleness_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "steps": {str(w): n for w, n in sorted(steps.items())},
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
        "worker_peak_rss_mb": {str(r["worker_id"]): r.get("peak_rss_mb") for r in reports},
        "workers": config.workers,
        "servers": config.servers,
    }

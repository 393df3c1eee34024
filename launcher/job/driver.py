"""The job driver: a job's whole life in four steps, each a function that fits a screen.

- ``prepare``: resolve the model, data and loss; initialise the parameters
  once and cut them into shard ranges; plan the work queue. No actor yet.
- ``start``: the run directory (config first, so a crashed driver's run can
  be resumed); the shards (each restores the newest checkpoint of the run
  directory by itself: that is ``--resume``), the work queue and the
  transport; checkpoint 0.
- ``train``: the controller starts the workers and keeps them going through
  failures (launcher/job/controller.py); then the final parameters are
  pulled and scored on the test split.
- ``summarize``: summary.json, history, the model and tables, the plots.

Every actor is torn down whatever happens, and a job that fails still writes
its run directory, with the error in the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import torch
from torch import nn

from ...errors import ConfigError
from ...protos.compression import Codec
from ...runtime import RAY, Runtime
from ...settings import resolve_every
from ...ps.core.partition import partition
from ...ps.served import ServedShard
from ...ps.sparse.client import ShardLookups
from ...worker.data.config import DataConfig
from ...worker.data.sources import Splits, resolve_data
from ...worker.imports import import_object
from ...worker.loop.chaos import WorkerChaos
from ...worker.loop.embedding import SavedRows, bind, sparse_tables
from ...worker.loop.flat import FlatParams
from ...worker.loop.losses import resolve_loss, takes_weight
from ...worker.loop.scoring import evaluate, score
from ...worker.loop.batches import ModelCall, check_call
from ...worker.loop.context import check_loop
from ...worker.loop.trainer import Worker, WorkerPlan
from ...worker.queue.coordinator import WorkCoordinator
from ...worker.queue.outer import job_plan, queue_extent, steps_per_worker
from ...worker.queue.workqueue import WorkQueue, default_chunk_batches
from .saved_model import save_run_model
from .checkpointing import Checkpointer
from .resharding import reshard_newest
from .config import JobConfig
from .controller import Controller, ServersChanged
from .dataprep import prepare_on_ray, write_data_files
from .monitor import Monitor, default_history_every
from .progress import Extent
from .placement import check_feasible, server_options, worker_options
from .policies import CheckpointSchedule, RestartBudget, StallWatch
from .terminal import ProgressLine
from .report import write_report
from .rundir import default_run_dir, write_run_dir
from .summary import job_summary, local_steps_summary, progress_summary, recovery_summary, sparse_summary
from .shm_leftovers import note_shm, remove_left_shm
from .transports import WireKeys, job_transport, local_shm, serve_again, stop_serving, throttled
from .wire_summary import compression_summary

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


#: With checkpoint.every_steps: auto, the least time between two cuts.
AUTO_CHECKPOINT_GAP_S = 1.0


@dataclass
class Plan:
    """A job before any actor runs: what it trains, on what, cut how."""

    config: JobConfig
    model_fn: Callable[[], nn.Module]
    loss_fn: Any
    splits: Splits
    prepared: Any  # data read in chunks: the fitted data (launcher/job/dataprep.py); else None
    model: nn.Module  # built under the job's seed: the initial parameters, and later the trained model
    flat: FlatParams
    shapes: dict  # the model's sparse tables: name -> (rows, dim)
    tables: tuple
    ranges: list
    buffer_ranges: list
    batches: Any
    steps_per_worker: int
    total_updates: int
    queue: WorkQueue
    extent: Extent  # the batches the work queue hands out: what progress counts against
    history_every: int  # a shard writes a history row every so many of the job's steps (every worker's)
    eval_every_steps: int  # the test split is scored every so many steps per worker (0: not by steps)
    checkpoint_every_steps: int | None  # a checkpoint every so many steps per worker (None: not by steps)
    call: ModelCall = ModelCall()  # how the model is called with a batch and its loss taken

    def checkpoint_schedule(self) -> CheckpointSchedule:
        # auto's cuts are spaced a second apart at least: on a job of seconds each cut's pause is a cost
        # one can see (docs/failures.md), and a second of work is what a failure would lose
        auto = self.config.checkpoint.every_steps == "auto"
        return CheckpointSchedule(self.config.checkpoint.every_s, self.checkpoint_every_steps,
                                  min_gap_s=AUTO_CHECKPOINT_GAP_S if auto else 0.0)


@dataclass
class Run:
    """A job while it runs: its directory and actors, and what training left."""

    plan: Plan
    run_dir: Path
    run_id: str
    dashboard_url: str | None
    data_summary: dict | None = None
    runtime: Runtime = RAY  # where the actors run, and how they are waited on
    actors: list = field(default_factory=list)  # everything to kill at the end
    shards: list = field(default_factory=list)
    coordinator: Any = None
    transport: Any = None
    served: Any = None  # the transport the shards serve (behind the throttled link, if any)
    keys: WireKeys = field(default_factory=lambda: WireKeys())  # the gRPC wire's TLS keys (transports.py)
    link: Any = None
    link_stats: dict | None = None
    checkpointer: Checkpointer | None = None
    initial: dict = field(default_factory=dict)  # worker -> the incarnation it starts as
    history: list | None = None  # a resumed job's history so far
    monitor: Monitor | None = None
    controller: Controller | None = None
    placement: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)  # train's results: reports, stats, scores, rows, coverage
    servers_changed: list = field(default_factory=list)  # psctl scale --servers: each restart, and its cost


def job_name(run_id: str) -> str:
    """A running job's name for ``psctl scale``: its submission id (``psctl submit`` hands it over as
    ``RAYPS_JOB_NAME``), else its run id."""
    return os.environ.get("RAYPS_JOB_NAME") or run_id


def run_job(config: JobConfig, output: str | Path | None = None,
            progress: ProgressLine | None = None, dashboard: bool = True, report: bool = True,
            on_start: Callable[[str], None] | None = None, runtime: Runtime = RAY) -> JobResult:
    """Run ``config`` to the end. ``output``: the run directory (a new one under runs/ by default);
    if it holds checkpoints, the job resumes from the newest valid one. ``on_start`` is called
    with the job's name once its work queue is up (``scale_job`` takes that name). ``runtime``:
    where the actors run (runtime.py; Ray's unless a test runs the job in one process)."""
    began = time.monotonic()
    changes: list[dict] = []
    run_id = None
    while True:
        plan = prepare(config, output, dashboard)
        run = open_run(plan, output, dashboard, runtime, run_id)
        run.servers_changed = changes
        change = None
        try:
            start(run, on_start if run_id is None else None)
            if changes:
                changes[-1]["seconds"] = round(time.monotonic() - changes[-1].pop("asked"), 3)
                print(f"servers: {changes[-1]['from']} -> {changes[-1]['to']} shards, training again"
                      f" {changes[-1]['seconds']:.1f} s after the ask", flush=True)
            train(run, progress)
        except ServersChanged as e:  # psctl scale --servers: go on from its cut on the new number of shards
            change = e
        except Exception as error:
            _write_failed(run, error, began, report)
            raise
        finally:
            stop(run)
        if change is None:
            return summarize(run, report, began)
        changes.append({"from": config.servers, "to": change.servers, "checkpoint": change.index,
                        "asked": change.asked})
        config = dataclasses.replace(config, servers=change.servers)
        output, run_id = run.run_dir, run.run_id


def prepare(config: JobConfig, output: str | Path | None, dashboard: bool) -> Plan:
    """Model, data, loss, the initial parameters cut into shard ranges, and the work queue's plan."""
    model_fn = _model_factory(config)
    loss_fn = resolve_loss(config.loss)
    prepared = None
    if isinstance(config.data, DataConfig):  # files read in chunks: statistics passes on Ray first
        if config.test_data is not None:
            raise ConfigError("test_data does not go with a data section: give its test split as data.test")
        RAY.start(dashboard)  # the statistics passes are Ray tasks
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
    call = model_call(config)
    if config.train_loop_per_worker is not None:
        check_loop(import_object(config.train_loop_per_worker, "train_loop_per_worker")
                   if isinstance(config.train_loop_per_worker, str) else config.train_loop_per_worker)
    elif prepared is None and len(splits.train):  # the rule must be able to call this model with these items: said before any actor
        x, y = splits.train.batch(np.arange(min(2, len(splits.train))))[:2]
        check_call(model, call, x, y, "the training data's first batch")
    local = config.local_steps
    if local.enabled and shapes:
        raise ConfigError("local_steps: the model has rayps.Embedding tables, whose rows are pulled and pushed"
                          " every batch; local steps train dense models only")
    batches = job_plan(splits.train, config.workers, config.batch_size, config.seed, config.epochs,
                       local.batches_per_push)
    extent_of = queue_extent(batches, config.epochs, config.max_steps)
    # Data read in chunks: a unit is one chunk by default (its ends cut the units), so no chunk is read twice.
    # Outer steps: two units per worker per epoch's worth of them, as for batches.
    per_epoch = batches.per_epoch / config.epochs if local.enabled else batches.per_epoch
    chunk = config.chunk_batches or (per_epoch if batches.chunk_ends is not None
                                     else default_chunk_batches(math.ceil(per_epoch), config.workers))
    rules = config.consistency.rules
    queue = WorkQueue(batches.stretches, chunk_batches=chunk, steal=rules.steals, chunk_ends=batches.chunk_ends,
                      **extent_of)
    extent = Extent(queue.budget, per_epoch, config.workers)
    pushes = steps_per_worker(batches, extent_of)  # per worker: outer steps under local steps
    per_worker = extent.batches / config.workers
    return Plan(
        config, model_fn, loss_fn, splits, prepared, model, flat, shapes,
        tables=tuple(config.sparse.table_configs(shapes, config.consistency, config.seed)),
        # A shard may hold no dense values when the model's weight is in its sparse tables; model buffers
        # (BatchNorm statistics) are cut across the shards the same way, and some may hold none.
        ranges=partition(flat.numel, config.servers, allow_empty=bool(shapes)),
        buffer_ranges=partition(flat.buffers.numel, config.servers, allow_empty=True),
        batches=batches, steps_per_worker=pushes,
        # the schedule's horizon: one update per push (asp, ssp) or per clock (bsp): the mode says
        total_updates=pushes * rules.updates_per_clock(config.workers),
        queue=queue, extent=extent, call=call,
        history_every=(default_history_every(extent) if config.history_every_steps == "auto"
                       else config.history_every_steps * config.workers),
        # auto: ten times in a job, so a short job scores a curve and an early failure loses a tenth of it;
        # eval_every_s: 0 keeps its meaning, scores at the end only, unless steps are named
        eval_every_steps=0 if config.eval_every_steps == "auto" and not config.eval_every_s
        else resolve_every(config.eval_every_steps, per_worker / 10),
        checkpoint_every_steps=None if config.checkpoint.every_steps is None
        else resolve_every(config.checkpoint.every_steps, per_worker / 10))


def open_run(plan: Plan, output: str | Path | None, dashboard: bool, runtime: Runtime = RAY,
             run_id: str | None = None) -> Run:
    """Ray up and able to hold the job; the run directory, with the config first (a crashed driver's run
    can be resumed from it). ``run_id``: the run it goes on with (a change of servers keeps the job's name)."""
    config = plan.config
    dashboard_url = runtime.start(dashboard)
    check_feasible(config, runtime.nodes())
    run_dir = Path(output) if output else default_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    data_summary = write_data_files(run_dir, plan.prepared) if plan.prepared is not None else None
    return Run(plan, run_dir, run_id or uuid.uuid4().hex[:8], dashboard_url, data_summary, runtime)


def start(run: Run, on_start: Callable[[str], None] | None) -> None:
    """The shards, the work queue and the transport; checkpoint 0 (or the one a resumed job restored)."""
    plan, config, runtime = run.plan, run.plan.config, run.runtime
    namespace = f"rayps-{run.run_id}"  # actor names are unique per run, not per cluster
    ckpt_root = _checkpoint_root(config, run.run_dir)
    if ckpt_root is not None:  # a resumed job on another number of shards: its cut, cut again for these
        moved = reshard_newest(ckpt_root, config.servers, config.checkpoint.keep)
        if moved is not None:
            print(moved, flush=True)
    remove_left_shm(run.run_dir)  # a killed driver's: its shards and workers died with it, their files did not
    init, init_buffers, integer = plan.flat.host_params(), plan.flat.buffers.pack(), plan.flat.buffers.integer
    run.shards = [
        runtime.spawn(ServedShard, (
            r.shard_id, init[r.lo:r.hi], list(range(config.workers)),
            config.shard_optimizer, config.schedule, config.consistency, plan.total_updates, run.run_id,
            init_buffers[b.lo:b.hi], integer[b.lo:b.hi]), dict(
            audit=config.debug.audit, checkpoints=ckpt_root, tables=plan.tables, num_shards=config.servers,
            codec=config.compression.make_codec(), pull_codec=Codec(config.compression.pull),
            history_every=plan.history_every,
            fragments=config.local_steps.fragments, spread=config.local_steps.enabled), dict(
            **server_options(config, r.shard_id, namespace),
            max_restarts=config.fault.max_restarts if config.checkpoint.enabled else 0))
        for r, b in zip(plan.ranges, plan.buffer_ranges)
    ]
    # evaluation reads the shards' rows
    bind(plan.model, ShardLookups(run.shards, {t: d for t, (_, d) in plan.shapes.items()}, runtime))
    run.coordinator = runtime.spawn(WorkCoordinator, (plan.queue, plan.batches, config.workers, run.run_id),
                                    options=dict(name=f"coordinator-{job_name(run.run_id)}",
                                                 namespace=COORDINATORS, num_cpus=0))
    run.actors += [*run.shards, run.coordinator]
    run.served, run.keys = job_transport(config, run.shards, tuple(plan.ranges), tuple(plan.buffer_ranges),
                                         runtime, job=run.run_id)
    run.transport = run.served
    note_shm(run.run_dir, local_shm(run.served))
    if run.transport.name == "grpc":  # where the wire is, and whether it is encrypted
        print(f"gRPC ({run.keys.kind}) on {', '.join(run.transport.addresses)}", flush=True)
    if config.debug.link_mbit is not None:  # a slow network, emulated: workers reach shards through it
        run.link, run.transport = throttled(run.transport, config.debug.link_mbit, config.debug.link_latency_ms)
    run.initial = {w: 0 for w in range(config.workers)}
    if ckpt_root is not None:
        ckpt = config.checkpoint
        run.checkpointer = Checkpointer(
            ckpt_root, ckpt.keep, plan.checkpoint_schedule(), config.to_dict(),
            extra={"data": plan.prepared.state()} if plan.prepared is not None else None, runtime=runtime,
            full_every=ckpt.full_every)
        restored = runtime.get(run.shards[0].life.remote())["restored"]
        if restored is not None:  # a resumed job: every worker comes back as a new incarnation
            run.initial, run.history = _resume(run, restored)
        run.checkpointer.take(run.shards, run.coordinator, run.history or [], now=0.0)
    if on_start is not None:
        on_start(job_name(run.run_id))
    if run.dashboard_url:
        print(f"Ray dashboard: {run.dashboard_url}", flush=True)


def train(run: Run, progress: ProgressLine | None) -> None:
    """The controller runs the workers to the end; then the final parameters are pulled and scored."""
    plan, config, shards, get = run.plan, run.plan.config, run.shards, run.runtime.get
    test = plan.splits.test

    def evaluate_now():
        plan.flat.load(*_merge_pulled(get([s.pull.remote() for s in shards])))
        return evaluate(plan.model, plan.loss_fn, test, call=plan.call) if test is not None else (None, None)

    run.monitor = Monitor(plan.extent, config.consistency.rules.label(config.consistency, config.workers),
                          progress, evaluate_now, config.eval_every_s, run.history, plan.eval_every_steps)
    run.controller = Controller(
        shards, run.coordinator, _worker_starter(run), run.initial, run.monitor,
        RestartBudget(config.fault.max_restarts, can_restore=config.checkpoint.enabled),
        StallWatch(config.fault.stall_s, config.fault.on_stall), run.checkpointer,
        serve_again(run.served, shards, config.grpc, run.runtime, run.keys),
        [(kind, f) for kind in ("kill", "hang") for f in config.chaos.faults(kind) if f.kind == "ps-shard"],
        waits=config.consistency.rules.waits, runtime=run.runtime, random_kills=config.chaos.random,
        shm_dirs=shm.directories if (shm := local_shm(run.served)) is not None else ())
    reports = run.controller.run(run.placement)
    train_s = time.monotonic() - run.controller.train_began
    final, final_buffers = _merge_pulled(get([s.pull.remote() for s in shards]))
    stats = get([s.stats.remote() for s in shards])
    # Scored while the shards still serve: a sparse model reads its rows from them.
    plan.flat.load(final, final_buffers)
    test_loss, test_accuracy, auc = score(plan.model, plan.loss_fn, test, call=plan.call) if test is not None \
        else (None,) * 3
    run.trained = dict(
        reports=reports, train_s=train_s, stats=stats, final=final, test_loss=test_loss,
        test_accuracy=test_accuracy, auc=auc,
        # The trained rows come home with the model (only rows some batch touched exist at all).
        saved={name: _exported(shards, name, get) for name in plan.shapes},
        # after the hand-back of the rows, the last thing a shard does
        peak_rss=get([s.peak_rss.remote() for s in shards]),
        coverage=get(run.coordinator.coverage.remote()),
        audit=get([s.applied_log.remote() for s in shards]) if config.debug.audit else None)


def stop(run: Run) -> None:
    """Every actor down, whatever happened; the shared memory a dead shard could not remove, removed."""
    if run.link is not None:
        run.link_stats = run.link.stats()
        run.link.close()
    stop_serving(run.shards, run.runtime)
    for actor in run.actors:
        run.runtime.kill(actor)
    shm = local_shm(run.served)
    if shm is not None:  # a shard that died could not remove its segment
        for directory in shm.directories:
            shutil.rmtree(directory, ignore_errors=True)
    remove_left_shm(run.run_dir, killed=False)  # and what dead workers left; the note goes with it


def summarize(run: Run, report: bool, began: float) -> JobResult:
    """summary.json and history.jsonl, the trained model and tables, the plots: the run directory."""
    plan, config, t = run.plan, run.plan.config, run.trained
    history = run.monitor.history
    if history:
        history[-1].update(test_loss=t["test_loss"], test_accuracy=t["test_accuracy"], t=round(t["train_s"], 3))
    summary = job_summary(config, t["reports"], t["stats"], t["test_loss"], t["test_accuracy"], t["train_s"],
                          time.monotonic() - began)
    summary.update(recovery_summary(run.controller, run.checkpointer, t["coverage"], t["reports"], t["stats"]))
    summary["progress"] = progress_summary(run.monitor.progress)
    summary["shard_peak_rss_mb"] = {str(i): round(b / 2**20, 1) for i, b in enumerate(t["peak_rss"])}
    if run.servers_changed:
        summary["servers_changed"] = run.servers_changed
    summary.update(sparse_summary(t["stats"], t["reports"]))
    summary.update(local_steps_summary(config, [r for r in t["reports"] if not r.get("died")], t["stats"]))
    summary["compression"] = compression_summary(config.compression, t["reports"], t["stats"], run.transport.name)
    if t["auc"] is not None:
        summary["test_auc"] = t["auc"]
        reference = getattr(plan.splits.test, "reference", None) or {}
        if "auc" in reference:  # a generated data set knows the AUC of its true model on this test set
            summary["reference_auc"] = reference["auc"]
            summary["auc_ratio"] = t["auc"] / reference["auc"]
    if run.data_summary is not None:
        summary["data"] = run.data_summary
    if t["audit"] is not None:
        summary["applied_twice"] = sum(len(log) - len(set(map(tuple, log))) for log in t["audit"])
    summary["transport"] = run.transport.name  # what auto chose, not what the config said
    if run.transport.name == "grpc":
        summary["wire"] = run.keys.kind
    if run.link_stats is not None:
        summary["link"] = run.link_stats
    summary.update(dashboard_url=run.dashboard_url, placement=run.placement, run_id=run.run_id,
                   job_name=job_name(run.run_id))
    run_dir = write_run_dir(run.run_dir, config, summary, history)
    try:  # model.safetensors and model.json, what psctl export reads; a job's result never hangs on it
        save_run_model(run_dir, plan.model, config)
    except Exception:  # noqa: BLE001
        log.warning("could not write the trained model to %s", run_dir, exc_info=True)
    if t["saved"]:
        bind(plan.model, SavedRows(t["saved"], {table.name: table for table in plan.tables}))
        (run_dir / "tables").mkdir(exist_ok=True)
        for name, (ids, rows) in t["saved"].items():  # ids and their trained rows, one file per table
            np.savez(run_dir / "tables" / f"{name}.npz", ids=ids, rows=rows)
    if report:
        write_report(run_dir)
    return JobResult(summary=summary, params=t["final"], model=plan.model, run_dir=run_dir, history=history,
                     transform=plan.prepared.transform if plan.prepared is not None else None)


# ---- the steps' helpers ---------------------------------------------------------------------


def _worker_starter(run: Run) -> Callable[[int, int], object]:
    """How the controller starts incarnation ``i`` of worker ``w`` (the first life gets the chaos knobs)."""
    plan, config = run.plan, run.plan.config
    train_ref = run.runtime.put(plan.splits.train)
    faults = {"kill": {f.index: f for f in config.chaos.faults("kill") if f.kind == "worker"},
              "hang": {f.index: f for f in config.chaos.faults("hang") if f.kind == "worker"}}

    def start_worker(worker_id: int, incarnation: int):
        plan_ = _worker_plan(config, worker_id, run.run_id, incarnation,
                      _chaos(faults, worker_id) if incarnation == 0 else WorkerChaos())
        actor = run.runtime.spawn(
            Worker, (plan_, plan.model_fn, plan.loss_fn, train_ref,
                     run.keys.for_worker(run.transport, worker_id, incarnation), run.coordinator, run.runtime),
            options=worker_options(config, worker_id, f"rayps-{run.run_id}", incarnation))
        run.actors.append(actor)
        return actor
    return start_worker


def _resume(run: Run, step: int) -> tuple[dict, list]:
    """The shards restored checkpoint ``step`` by themselves; bring the queue back to it, and
    let every worker of that time leave, to come back as its next incarnation."""
    shards, get = run.shards, run.runtime.get
    run.checkpointer.rewind(step, shards, run.coordinator)
    ledger = get(shards[0].ledger.remote())
    for worker in ledger:
        get([s.finish.remote(worker) for s in shards])
    initial = {w: ledger[w][0] + 1 if w in ledger else 0 for w in range(run.plan.config.workers)}
    print(f"resuming from checkpoint {step} in {run.checkpointer.root}", flush=True)
    return initial, run.checkpointer.history(step)


def _write_failed(run: Run, error: Exception, began: float, report: bool) -> None:
    """A failed job still leaves its run directory: the history so far, a summary with the error, plots."""
    config = run.plan.config
    summary = {"error": f"{type(error).__name__}: {error}", "failed": True, "wall_s": time.monotonic() - began,
               "consistency": config.consistency.mode, "workers": config.workers, "servers": config.servers}
    if run.controller is not None:
        summary.update(recovery_summary(run.controller, run.controller.checkpointer, None, [], None))
    if run.monitor is not None:  # how far it got, counted as a finished job's progress is
        summary["progress"] = progress_summary(run.monitor.progress)
    history = run.monitor.history if run.monitor is not None else []
    try:
        write_run_dir(run.run_dir, config, summary, history)
        if report and history:
            write_report(run.run_dir)
    except Exception:  # noqa: BLE001 - never hide the job's own error behind this one
        pass


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


def scale_job(name: str, workers: int | None = None, servers: int | None = None) -> None:
    """Ask the running job ``name`` (see ``job_name``) for ``workers`` workers, which it adds or removes
    without restarting, and/or for ``servers`` shards, which it reaches stop-the-world: it cuts a
    checkpoint, stops every actor and goes on from that cut on the new number of shards (resharded; the
    workers' progress past the cut is trained again). Call from any process connected to the job's Ray
    cluster."""
    from ...errors import ConfigError, JobError

    if workers is None and servers is None:
        raise ConfigError("scale: give workers, servers or both")
    for what, value in (("workers", workers), ("servers", servers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{what} ({value!r}) must be an integer >= 1")
    try:
        coordinator = ray.get_actor(f"coordinator-{name}", namespace=COORDINATORS)
    except ValueError:
        raise JobError(f"no running rayps job named {name!r} on this Ray cluster") from None
    if workers is not None:
        ray.get(coordinator.set_wanted.remote(workers), timeout=30)
    if servers is not None:
        ray.get(coordinator.set_wanted_servers.remote(servers), timeout=30)


def _chaos(faults: dict, worker_id: int) -> WorkerChaos:
    kill, hang = faults["kill"].get(worker_id), faults["hang"].get(worker_id)
    return WorkerChaos(
        kill_at_step=int(kill.at) if kill is not None and not kill.seconds else None,
        kill_after_s=kill.at if kill is not None and kill.seconds else None,
        hang_at_step=int(hang.at) if hang is not None else None)


def _exported(shards, table: str, get) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``table``, asked of each shard a part at a time until it says no part follows."""
    ids, rows = [], []
    for shard in shards:
        part, more = 0, True
        while more:
            i, r, more = get(shard.sparse_export.remote(table, part))
            ids.append(i)
            rows.append(r)
            part += 1
    return np.concatenate(ids), np.concatenate(rows)


def _merge_pulled(pulled: list) -> tuple[np.ndarray, np.ndarray]:
    """Every shard's ``pull()`` joined: the flat parameters and the flat merged buffers."""
    params = np.concatenate([p for p, _, _ in pulled])
    buffers = [b for _, _, b in pulled if b is not None]
    return params, np.concatenate(buffers) if buffers else np.zeros(0, np.float64)


def _model_factory(config: JobConfig) -> Callable[[], nn.Module]:
    factory = import_object(config.model, "model") if isinstance(config.model, str) else config.model
    return functools.partial(factory, **config.model_args)


def model_call(config: JobConfig) -> ModelCall:
    """The hooks over the rule that calls the model with a batch, imported where named by string."""
    hooks = {key: import_object(value, key) if isinstance(value, str) else value
             for key, value in (("forward", config.forward), ("compute_loss", config.compute_loss))}
    return ModelCall(**hooks)


def _worker_plan(config: JobConfig, worker_id: int, run_id: str = "", incarnation: int = 0,
          chaos: WorkerChaos = WorkerChaos()) -> WorkerPlan:
    loop = config.train_loop_per_worker
    return WorkerPlan(call=model_call(config), micro_batches=config.accumulate, clip_grad_norm=config.clip_grad_norm,
        loop=import_object(loop, "train_loop_per_worker") if isinstance(loop, str) else loop,
        loop_config=dict(config.train_loop_config),
        compile=None if config.compile is False else {} if config.compile is True else dict(config.compile),
        precision=config.precision,
        worker_id=worker_id, num_workers=config.workers, batch_size=config.batch_size,
        epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
        slow_s=float(config.debug.slow_workers.get(worker_id, 0.0)),
        slowdown=float(config.debug.slowdown.get(worker_id, 0.0)),
        straggle_p=float(config.debug.stragglers.get("probability", 0.0)),
        straggle_factor=float(config.debug.stragglers.get("factor", 0.0)),
        straggle_base_s=config.debug.compute_s,
        target_loss=config.target_loss,
        use_gpu=config.num_gpus > 0, torch_threads=config.torch_threads, run_id=run_id,
        overlap=config.overlaps, incarnation=incarnation, chaos=chaos,
        resync_timeout_s=config.fault.resync_timeout_s, compression=config.compression,
        sparse_lookahead=config.sparse.lookahead,
        local_steps=config.local_steps if config.local_steps.enabled else None,
    )

"""A whole job in one process: the driver's start and train, with every actor on tests/local_runtime.py.

``LocalJob`` plans the job as the driver does (``driver.prepare``), then
makes the real classes actors of a ``LocalRuntime``: the shards
(``ServedShard``, restoring checkpoints by themselves), the work queue
(``WorkCoordinator``), the workers (``Worker``, over the object-store
client), and runs the real ``Controller`` and ``Checkpointer`` over them,
with a short tick and short call timeouts instead of Ray's. ``run()``
returns what summary.json would say (summary.py's own figures) and leaves
the final parameters in ``params``; a job that fails writes its run
directory as the driver does, and raises.

Kills come from the test, never from ``chaos.kill`` (a SIGKILL would end
this very process): ``when(condition, action)`` runs an action
(``runtime.kill``, ``set_wanted``) from a watcher thread once the condition
holds. ``chaos.hang`` works as in a job, through the worker's plan and the
controller's shard faults; a hung thread sleeps on (a daemon thread), as the
hung process would until it was killed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from rayps.launcher.job.checkpointing import Checkpointer
from rayps.launcher.job.config import JobConfig
from rayps.launcher.job.controller import Controller
from rayps.launcher.job.driver import Run, _chaos, _merge_pulled, _worker_plan, _write_failed, prepare
from rayps.launcher.job.monitor import Monitor
from rayps.launcher.job.policies import RestartBudget, StallWatch
from rayps.launcher.job.summary import job_summary, progress_summary, recovery_summary
from rayps.protos.compression import Codec
from rayps.ps.served import ServedShard
from rayps.ps.transport.object_store import RayTransport
from rayps.settings import build
from rayps.worker.loop.chaos import WorkerChaos
from rayps.worker.loop.scoring import score
from rayps.worker.loop.trainer import Worker
from rayps.worker.queue.coordinator import WorkCoordinator

from tests.counting import Counter, minus_sum
from tests.local_runtime import LocalRuntime


def counting(examples: int = 500, **config) -> dict:
    """A counting job's config: examples 0..examples-1 to train on, 100 more that must stay at 0."""
    x = np.arange(examples + 100, dtype=np.float32).reshape(-1, 1)
    y = np.zeros(examples + 100, np.int64)
    data = {"train": (x[:examples], y[:examples]), "test": (x[examples:], y[examples:])}
    return {"model": Counter, "model_args": {"n": examples + 100}, "data": data, "loss": minus_sum,
            "optimizer": {"name": "sgd", "lr": 1.0}, "schedule": {"name": "constant"},  # each count is 1
            "servers": 1, "batch_size": 10, "epochs": 4,
            "eval_every_s": 0, **config, "debug": {"audit": True, **config.get("debug", {})}}


class LocalJob:
    def __init__(self, tmp_path: Path, runtime: LocalRuntime, *, tick_s: float = 0.02, call_s: float = 5.0,
                 startup_s: float = 5.0, **config):
        """``config``: JobConfig's keys; ``tick_s``, ``call_s``, ``startup_s``: the controller's."""
        self.config = c = build(JobConfig, config, "LocalJob")
        if c.chaos.kill:
            raise ValueError(f"chaos.kill ({', '.join(c.chaos.kill)}) would SIGKILL this very process:"
                             " kill with runtime.kill from when()")
        self._hangs = {"kill": {}, "hang": {f.index: f for f in c.chaos.faults("hang") if f.kind == "worker"}}
        self.runtime = runtime
        self.plan = plan = prepare(c, None, dashboard=False)
        self.run_dir = Path(tmp_path) / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        root = str(self.run_dir / "checkpoints") if c.checkpoint.enabled else None
        init, init_buffers, integer = plan.flat.host_params(), plan.flat.buffers.pack(), plan.flat.buffers.integer
        self.shards = [  # as driver.start makes them, on this runtime
            runtime.actor(ServedShard, r.shard_id, init[r.lo:r.hi], list(range(c.workers)), c.shard_optimizer, c.schedule,
                          c.consistency, plan.total_updates, "local", init_buffers[b.lo:b.hi], integer[b.lo:b.hi],
                          audit=c.debug.audit, checkpoints=root, tables=plan.tables, num_shards=c.servers,
                          codec=c.compression.make_codec(), pull_codec=Codec(c.compression.pull),
                          history_every=plan.history_every, fragments=c.local_steps.fragments, spread=c.local_steps.enabled,
                          name=f"ps-shard-{r.shard_id}", max_restarts=c.fault.max_restarts if root else 0)
            for r, b in zip(plan.ranges, plan.buffer_ranges)]
        self.coordinator = runtime.actor(WorkCoordinator, plan.queue, plan.batches, c.workers, "local",
                                         name="work-queue")
        self.transport = RayTransport(tuple(self.shards), tuple(plan.ranges), tuple(plan.buffer_ranges),
                                      runtime=runtime)
        self.checkpointer = None
        if root is not None:
            self.checkpointer = Checkpointer(root, c.checkpoint.keep, plan.checkpoint_schedule(), c.to_dict(),
                                             runtime=runtime)
            self.checkpointer.take(self.shards, self.coordinator, [], now=0.0)  # checkpoint 0, as start() cuts
        self.said: list[str] = []  # the lines the job's events print
        self.monitor = Monitor(plan.extent, c.consistency.mode, say=self.said.append)
        self.workers: dict[tuple[int, int], object] = {}  # (worker, incarnation) -> its actor
        # serve_again does nothing: the object store reaches a restarted shard through the same handle
        self.controller = Controller(
            self.shards, self.coordinator, self._start_worker, {w: 0 for w in range(c.workers)}, self.monitor,
            RestartBudget(c.fault.max_restarts, can_restore=c.checkpoint.enabled),
            StallWatch(c.fault.stall_s, c.fault.on_stall), self.checkpointer, lambda i: None,
            [("hang", f) for f in c.chaos.faults("hang") if f.kind == "ps-shard"],
            waits=c.consistency.rules.waits, runtime=runtime, tick_s=tick_s, call_s=call_s, startup_s=startup_s,
            random_kills=c.chaos.random)  # its SIGKILLs are the runtime's crashes here (LocalRuntime.sigkill)
        self._watchers: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._done = threading.Event()
        self.params: np.ndarray | None = None  # the final flat parameters, once run
        self.buffers: np.ndarray | None = None

    def _start_worker(self, worker: int, incarnation: int):
        """As the driver's starter does: the first life gets the chaos knobs (here only hangs)."""
        chaos = _chaos(self._hangs, worker) if incarnation == 0 else WorkerChaos()
        plan = _worker_plan(self.config, worker, "local", incarnation, chaos)
        actor = self.runtime.actor(
            Worker, plan, self.plan.model_fn, self.plan.loss_fn, self.plan.splits.train, self.transport,
            self.coordinator, self.runtime, name=f"worker-{worker}.{incarnation}", max_concurrency=2)
        self.workers[(worker, incarnation)] = actor
        return actor

    # ---- faults and scaling, from watcher threads ---------------------------------------------

    def when(self, condition: Callable[[], bool], action: Callable[[], None], poll_s: float = 0.005) -> None:
        """Once ``condition()`` holds (checked every ``poll_s`` while the job runs), do ``action()``."""
        def watch():
            try:
                while not self._done.is_set():
                    if condition():
                        action()
                        return
                    time.sleep(poll_s)
            except BaseException as e:  # noqa: BLE001 - raised again by run(), in the test's thread
                self._errors.append(e)
        thread = threading.Thread(target=watch, daemon=True)
        self._watchers.append(thread)

    def stats(self, shard: int = 0) -> dict:
        return self.runtime.get(self.shards[shard].stats.remote(), timeout=5.0)

    def clock(self, worker: int, shard: int = 0) -> int:
        """The worker's completed clock on a shard (0 before it joined, or once it left)."""
        return self.stats(shard)["clocks"].get(worker, 0)

    def actor(self, worker: int, incarnation: int = 0):
        return self.workers[(worker, incarnation)]

    def counts(self):
        """What the controller has counted so far: replaced, rollbacks, steps_lost, ..."""
        return self.controller.counts

    def since_checkpoint(self, worker: int) -> int:
        """How many clocks the worker is past the newest checkpoint's cut."""
        newest = self.checkpointer.store.read(self.checkpointer.last_step, only=["job"])["job"]
        return self.clock(worker) - newest["clocks"].get(str(worker), newest["clocks"].get(worker, 0))

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> dict:
        """Train to the end; what summary.json would say (``applied_twice`` with the audit on)."""
        began = time.monotonic()
        for thread in self._watchers:
            thread.start()
        try:
            reports = self.controller.run({})
        except Exception as error:  # a failed job still leaves its run directory, as the driver writes it
            _write_failed(Run(self.plan, self.run_dir, "local", None, controller=self.controller,
                              monitor=self.monitor), error, began, report=False)
            raise
        finally:
            self._done.set()
            for thread in self._watchers:
                thread.join(timeout=10)
        if self._errors:
            raise self._errors[0]
        get = self.runtime.get
        stats = get([s.stats.remote() for s in self.shards])
        train_s = time.monotonic() - self.controller.train_began
        summary = job_summary(self.config, reports, stats, None, None, train_s, time.monotonic() - began)
        summary.update(recovery_summary(self.controller, self.checkpointer, get(self.coordinator.coverage.remote()),
                                        reports, stats))
        summary["progress"] = progress_summary(self.monitor.progress)
        if self.config.debug.audit:
            logs = get([s.applied_log.remote() for s in self.shards])
            summary["applied_twice"] = sum(len(log) - len(set(map(tuple, log))) for log in logs)
        self.params, self.buffers = _merge_pulled(get([s.pull.remote() for s in self.shards]))
        return summary

    def test_accuracy(self) -> float:
        """The trained model's accuracy on the test split, scored as the driver scores it."""
        self.plan.flat.load(self.params, self.buffers)
        return score(self.plan.model, self.plan.loss_fn, self.plan.splits.test)[1]

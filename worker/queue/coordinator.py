"""WorkCoordinator: the work queue as the workers and the controller reach it.

A plain class; the driver makes it a named Ray actor (so ``psctl scale`` can
find a running job's). Workers lease units of data from it and say when they
finish; the controller releases a dead worker's units, rolls the queue back
with a checkpoint, removes workers and reads what was covered.

Rollbacks: every lease names the *generation* the worker last synced with.
The controller starts a recovery (``begin_recovery``), rolls the shards and
the queue back, then ends it, which bumps the generation. A worker whose call
failed waits for that bump, registers again and leases afresh; a lease asked
for under an older generation is refused (``RESYNC``), so no unit is ever
handed to a worker that will drop it.
"""

from __future__ import annotations

from .metrics import JobMetrics
from .workqueue import EpochBatches, Unit, WorkQueue

RESYNC = "resync"  # the caller's generation is old: register again first
STOP = "stop"  # this worker was removed from the job: finish
#: Reports held for the controller; it collects twice a second, so only a stalled controller loses any.
REPORTS_KEPT = 10_000


class WorkCoordinator:
    def __init__(self, queue: WorkQueue, batches: EpochBatches, wanted_workers: int, run_id: str = ""):
        self.queue = queue
        self._metrics = JobMetrics(run_id)
        self.batches = batches
        self.generation = 0
        self.recovering = False
        self.wanted = wanted_workers  # what `psctl scale` last asked for
        self.wanted_servers: int | None = None  # ... and of shards (None: none asked)
        self._removed: set[int] = set()
        self._reports: list[dict] = []  # what training loops reported, for the controller to collect
        self._report_id = 0

    def __repr__(self) -> str:
        return "work-queue"

    # ---- workers ------------------------------------------------------------------

    def lease(self, worker: int, incarnation: int, generation: int, first_seq: int,
              acked_seq: int | None = None) -> tuple[int, int, int] | str | None:
        """The next unit as ``(epoch, lo, hi)``; None when the data is used up; RESYNC or STOP."""
        if generation != self.generation or self.recovering:
            return RESYNC
        if worker in self._removed:
            return STOP
        unit = self.queue.lease(worker, incarnation, first_seq, acked_seq)
        return None if unit is None else (unit.epoch, unit.lo, unit.hi)

    def finish(self, worker: int, incarnation: int, generation: int, acked_seq: int) -> None:
        """A worker is done: its pushes up to ``acked_seq`` landed; anything it held beyond goes back."""
        if generation != self.generation:
            return  # a rollback already settled what it held
        self.queue.complete(worker, incarnation, acked_seq)
        self.queue.release(worker, {incarnation: acked_seq})

    def status(self) -> tuple[int, bool]:
        return self.generation, self.recovering

    def report(self, worker: int, metrics: dict) -> None:
        """A training loop's ``report()`` (the worker sends a few a second at most)."""
        self._report_id += 1
        self._reports.append({"id": self._report_id, "worker": worker, **metrics})
        del self._reports[:-REPORTS_KEPT]

    def reported(self, after: int = 0) -> list[dict]:
        """The reports since id ``after`` (the controller's cursor), oldest first."""
        return [r for r in self._reports if r["id"] > after]

    # ---- the controller -------------------------------------------------------------

    def release(self, worker: int, applied: dict[int, int]) -> int:
        return self.queue.release(worker, applied)

    def remove(self, worker: int) -> None:
        self._removed.add(worker)
        self.queue.disown(worker)

    def begin_recovery(self) -> None:
        self.recovering = True

    def end_recovery(self) -> int:
        self.recovering = False
        self.generation += 1
        return self.generation

    def state_dict(self) -> dict:
        return self.queue.state_dict()

    def load_state_dict(self, state: dict, applied: dict[int, tuple[int, int]]) -> int:
        return self.queue.load_state_dict(state, applied)

    def record(self, event: str, actor: str = "", seconds: float = 0.0) -> None:
        """The controller's events, to Ray's metrics (the driver is not a process Ray exports from)."""
        if event == "restart":
            self._metrics.restarts.inc(tags={"actor": actor})
        elif event == "stall":
            self._metrics.stalls.inc(tags={"worker": actor})
            self._metrics.stall_s.set(seconds, tags={"worker": actor})
        elif event == "checkpoint":
            self._metrics.checkpoints.inc()

    def report_progress(self, fields: dict) -> None:
        """The controller's count of the job's progress (progress.py's ``fields``), to Ray's metrics."""
        for key, gauge in self._metrics.progress.items():
            if key in fields:
                gauge.set(fields[key])

    def set_wanted(self, workers: int) -> None:
        self.wanted = int(workers)

    def get_wanted(self) -> int:
        return self.wanted

    def set_wanted_servers(self, servers: int) -> None:
        self.wanted_servers = int(servers)

    def asks(self) -> tuple[int, int | None]:
        """What ``psctl scale`` last asked for: workers, and shards (None: no change asked)."""
        return self.wanted, self.wanted_servers

    def progress(self) -> dict:
        return {"remaining": self.queue.remaining, "queued": self.queue.queued, "holders": self.queue.holders(),
                "returned": self.queue.returned}

    def coverage(self) -> dict:
        """What the final model saw: per epoch the examples done and the batch ranges covered."""
        examples: dict[int, int] = {}
        # an outer step's batches may span two epochs: such a plan counts its examples by epoch itself
        by_epoch = getattr(self.batches, "examples_by_epoch", None)
        for unit in self.queue.done_units:
            for epoch, n in (by_epoch(unit) if by_epoch else {unit.epoch: self.batches.examples(unit)}).items():
                examples[epoch] = examples.get(epoch, 0) + n
        return {"examples_per_epoch": {str(e): n for e, n in sorted(examples.items())},
                "ranges": {str(e): [list(span) for span in r] for e, r in self.queue.coverage().items()},
                "batches_per_epoch": self.queue.batches_per_epoch,
                "returned_batches": self.queue.returned, "stolen_units": self.queue.stolen}


def unit_of(leased: tuple[int, int, int]) -> Unit:
    return Unit(*leased)

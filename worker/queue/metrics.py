"""The job's metrics, recorded by its work-queue actor: progress, restarts, stalls, checkpoints.

The driver is not a process Ray exports metrics from, so the controller asks
the coordinator (a Ray actor) to record what it did.
"""

from __future__ import annotations

from ...ps.core.metrics import NullMetric, in_ray


#: The job's progress, as the progress line and the history count it (launcher/job/progress.py).
PROGRESS = {
    "step": "Steps per worker taken so far, replays included.",
    "steps": "Steps per worker the job takes in all: its plan and what it replays.",
    "global_step": "Every worker's steps taken so far, replays included.",
    "replayed": "Steps per worker taken again after rollbacks.",
    "epoch": "Where the job stands in its data, in epochs (goes back on a rollback).",
}


class JobMetrics:
    """What the controller does about failures, recorded by the job's work-queue actor (a Ray process)."""

    def __init__(self, run_id: str = ""):
        if not in_ray():
            self.restarts = self.stalls = self.checkpoints = self.stall_s = NullMetric()
            self.progress = {key: NullMetric() for key in PROGRESS}
            return
        from ray.util.metrics import Counter, Gauge

        self.restarts = Counter("rayps_restarts", "Shard restarts and worker replacements, by actor.",
                                ("run_id", "actor"))
        self.stalls = Counter("rayps_stalls", "Stall reports, by the worker that blocked.", ("run_id", "worker"))
        self.stall_s = Gauge("rayps_stalled_seconds", "How long the last stalled worker had not pushed.",
                             ("run_id", "worker"))
        self.checkpoints = Counter("rayps_checkpoints", "Consistent checkpoints written.", ("run_id",))
        self.progress = {key: Gauge(f"rayps_job_{key}", text, ("run_id",)) for key, text in PROGRESS.items()}
        for metric in (self.restarts, self.stalls, self.stall_s, self.checkpoints, *self.progress.values()):
            metric.set_default_tags({"run_id": run_id})

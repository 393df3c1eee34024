"""The job's metrics, recorded by its work-queue actor: restarts, stalls, checkpoints.

The driver is not a process Ray exports metrics from, so the controller asks
the coordinator (a Ray actor) to record what it did.
"""

from __future__ import annotations

from ...ps.core.metrics import NullMetric, in_ray


class JobMetrics:
    """What the controller does about failures, recorded by the job's work-queue actor (a Ray process)."""

    def __init__(self, run_id: str = ""):
        if not in_ray():
            self.restarts = self.stalls = self.checkpoints = self.stall_s = NullMetric()
            return
        from ray.util.metrics import Counter, Gauge

        self.restarts = Counter("rayps_restarts", "Shard restarts and worker replacements, by actor.",
                                ("run_id", "actor"))
        self.stalls = Counter("rayps_stalls", "Stall reports, by the worker that blocked.", ("run_id", "worker"))
        self.stall_s = Gauge("rayps_stalled_seconds", "How long the last stalled worker had not pushed.",
                             ("run_id", "worker"))
        self.checkpoints = Counter("rayps_checkpoints", "Consistent checkpoints written.", ("run_id",))
        for metric in (self.restarts, self.stalls, self.stall_s, self.checkpoints):
            metric.set_default_tags({"run_id": run_id})

"""A worker's metrics for the Ray dashboard and Prometheus: steps, samples/s, loss, push-pull latency, bytes.

Every name starts with ``rayps_`` and carries the run's ``run_id``; outside a
Ray worker process the recorders do nothing (ps/core/metrics.py).
"""

from __future__ import annotations

from ...ps.core.metrics import NullMetric, in_ray

LATENCY_BUCKETS_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


class WorkerMetrics:
    def __init__(self, worker_id: int, run_id: str = ""):
        tags = {"worker": str(worker_id), "run_id": run_id}
        if not in_ray():
            self.steps = self.samples_per_s = self.loss = self.latency = self.bytes = self.raw_push_bytes = \
                self.reported = NullMetric()
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        self.steps = Counter("rayps_worker_steps", "Training steps a worker completed.", ("run_id", "worker"))
        self.samples_per_s = Gauge("rayps_worker_samples_per_second", "A worker's recent training throughput.",
                                   ("run_id", "worker"))
        self.loss = Gauge("rayps_worker_loss", "A worker's latest training loss.", ("run_id", "worker"))
        self.latency = Histogram("rayps_push_pull_seconds",
                                 "Seconds per fused push-pull (transfer and any wait on the bound).",
                                 boundaries=LATENCY_BUCKETS_S, tag_keys=("run_id", "worker", "transport"))
        self.bytes = Counter("rayps_transfer_bytes", "Bytes a worker pushed and pulled.",
                             ("run_id", "worker", "direction", "transport"))
        self.raw_push_bytes = Counter("rayps_push_uncompressed_bytes",
                                      "Bytes a worker's pushes would have been without compression.",
                                      ("run_id", "worker"))
        self.reported = Gauge("rayps_worker_reported", "What a training loop reported (rayps.report), by metric.",
                              ("run_id", "worker", "metric"))
        for metric in (self.steps, self.samples_per_s, self.loss, self.latency, self.bytes, self.raw_push_bytes,
                       self.reported):
            metric.set_default_tags(tags)

"""A shard's metrics for the Ray dashboard and each node's Prometheus endpoint (``ray.util.metrics``).

A shard records what a person watching a job asks about: updates and their
staleness, pushes by outcome and rejections by reason, time spent held by the
consistency bound, each worker's clock lag, memory, its sparse tables. (The
worker's own are in worker/loop/metrics.py, the job's in worker/queue/metrics.py.) Every name starts with
``rayps_`` and carries a ``run_id`` tag (the run's id), so runs stay apart in
Prometheus. Outside a Ray worker process (unit tests of the plain classes)
the recorders do nothing, so the domain classes never need a cluster.
"""

from __future__ import annotations

STALENESS_BUCKETS = [0.5, 1.5, 2.5, 3.5, 4.5, 8.5, 16.5, 32.5, 64.5]


def in_ray() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return ray.is_initialized()


class NullMetric:
    """Stands in for every metric when not running under Ray."""

    def inc(self, *args, **kwargs) -> None: ...
    def set(self, *args, **kwargs) -> None: ...
    def observe(self, *args, **kwargs) -> None: ...


class ShardMetrics:
    def __init__(self, shard_id: int, run_id: str = ""):
        tags = {"shard": str(shard_id), "run_id": run_id}
        if not in_ray():
            self.updates = self.pushes = self.staleness = self.rejected = self.wait_s = self.clock_lag = \
                self.memory_bytes = self.table_rows = self.table_bytes = self.table_moved = NullMetric()
            self._moved: dict = {}
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        self.updates = Counter("rayps_shard_updates", "Optimizer steps applied by a shard.", ("run_id", "shard"))
        self.pushes = Counter("rayps_shard_pushes", "Gradient pushes by outcome (applied, duplicate, stale).",
                              ("run_id", "shard", "outcome"))
        self.staleness = Histogram("rayps_update_staleness", "Staleness of applied updates, in updates.",
                                   boundaries=STALENESS_BUCKETS, tag_keys=("run_id", "shard"))
        self.rejected = Counter("rayps_rejected_pushes", "Requests refused, by reason.", ("run_id", "shard", "reason"))
        self.wait_s = Counter("rayps_consistency_wait_seconds",
                              "Seconds workers were held back by the consistency bound.", ("run_id", "shard", "worker"))
        self.clock_lag = Gauge("rayps_worker_clock_lag", "Iterations a worker is behind the fastest live one.",
                               ("run_id", "shard", "worker"))
        self.memory_bytes = Gauge("rayps_shard_memory_bytes", "Bytes of parameters and optimizer state.",
                                  ("run_id", "shard"))
        self.table_rows = Gauge("rayps_table_rows", "Rows a sparse table holds on a shard.", ("run_id", "shard", "table"))
        self.table_bytes = Gauge("rayps_table_bytes", "Bytes a sparse table holds allocated on a shard.",
                                 ("run_id", "shard", "table"))
        self.table_moved = Counter("rayps_table_rows_moved", "Sparse rows pulled, pushed, created, evicted, filtered.",
                                   ("run_id", "shard", "table", "what"))
        for metric in (self.updates, self.pushes, self.staleness, self.rejected, self.wait_s, self.clock_lag,
                       self.memory_bytes, self.table_rows, self.table_bytes, self.table_moved):
            metric.set_default_tags(tags)
        self._moved = {}

    def table_gauges(self, tables: dict) -> None:
        """Each sparse table's rows and bytes, and what its row counters moved since the last call."""
        for name, t in tables.items():
            self.table_rows.set(t["rows"], tags={"table": name})
            self.table_bytes.set(t["bytes"], tags={"table": name})
            for what in ("rows_pulled", "rows_pushed", "rows_created", "rows_evicted", "rows_filtered"):
                now = t.get(what, 0)
                delta = now - self._moved.get((name, what), 0)
                if delta > 0:
                    self.table_moved.inc(delta, tags={"table": name, "what": what.removeprefix("rows_")})
                self._moved[(name, what)] = now

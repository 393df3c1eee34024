"""A job's metrics reach the node's Prometheus endpoint, and agree with its summary."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rayps.launcher import Job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("ray_rayps_")
    }


def value(samples, name: str, **labels) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return sum(found) if found else None


def test_metrics_on_the_prometheus_endpoint_match_the_job_summary(ray_session, tmp_path):
    result = Job(epochs=2, debug={"slow_workers": {0: 0.002}}).run(
        output=tmp_path / "run", progress=False, dashboard=False, report=False)
    s, run = result.summary, result.summary["run_id"]
    port = ray_session.nodes()[0]["MetricsExportPort"]
    steps = {w: int(n) for w, n in s["steps"].items()}
    expected = {("ray_rayps_shard_pushes_total", (("outcome", "applied"),)): s["pushes_applied"]}
    for key in ("step", "steps", "global_step", "replayed", "epoch"):
        expected[(f"ray_rayps_job_{key}", ())] = s["progress"][key]
    for shard in ("0", "1"):
        expected[("ray_rayps_shard_updates_total", (("shard", shard),))] = s["optimizer_steps"][shard]
        expected[("ray_rayps_update_staleness_count", (("shard", shard),))] = s["pushes_applied"] / s["servers"]
    for worker, n in steps.items():
        expected[("ray_rayps_worker_steps_total", (("worker", worker),))] = n
        expected[("ray_rayps_push_pull_seconds_count", (("worker", worker),))] = n
        expected[("ray_rayps_transfer_bytes_total", (("worker", worker), ("direction", "push")))] = \
            n * result.params.size * 4
    present = [("ray_rayps_shard_memory_bytes", ("shard", sh)) for sh in ("0", "1")] + \
        [(name, ("worker", w)) for w in steps for name in ("ray_rayps_worker_loss", "ray_rayps_worker_clock_lag")]

    def seen(samples):
        counts = {key: value(samples, key[0], run_id=run, **dict(key[1])) for key in expected}
        gauges = {key: value(samples, key[0], run_id=run, **dict([key[1]])) for key in present}
        return counts, gauges

    # The agent exports each actor's metrics on its own interval, so one shard's final count can
    # arrive a scrape before the other's: poll until every metric asserted on has caught up.
    deadline = time.monotonic() + 60
    while True:
        counts, gauges = seen(scrape(port))
        if all(counts[k] == v for k, v in expected.items()) and all(g is not None for g in gauges.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)

    assert {k: counts[k] for k in expected} == expected, f"metrics of run {run} never caught up"
    for key, gauge in gauges.items():
        assert gauge is not None, key
    assert all(gauges[("ray_rayps_shard_memory_bytes", ("shard", sh))] > 0 for sh in ("0", "1"))

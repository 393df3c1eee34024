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
    deadline = time.monotonic() + 60
    while True:  # the agent exports on an interval: poll until this job's final counts arrive
        samples = scrape(port)
        # every metric the asserts read, as each reaches the endpoint on its own export
        arrived = all(value(samples, name, run_id=run, **{key: who}) is not None
                      for name, key, whom in (
                          ("ray_rayps_update_staleness_count", "shard", ("0", "1")),
                          ("ray_rayps_shard_memory_bytes", "shard", ("0", "1")),
                          ("ray_rayps_push_pull_seconds_count", "worker", steps),
                          ("ray_rayps_transfer_bytes_total", "worker", steps),
                          ("ray_rayps_worker_loss", "worker", steps),
                          ("ray_rayps_worker_clock_lag", "worker", steps))
                      for who in whom)
        if arrived and all(value(samples, "ray_rayps_shard_updates_total", run_id=run, shard=sh) ==
                           s["optimizer_steps"][sh] for sh in ("0", "1")) \
                and all(value(samples, "ray_rayps_worker_steps_total", run_id=run, worker=w) == n
                        for w, n in steps.items()) \
                and value(samples, "ray_rayps_job_step", run_id=run) == s["progress"]["step"]:
            break
        assert time.monotonic() < deadline, f"metrics of run {run} never caught up: {samples}"
        time.sleep(1)

    for shard in ("0", "1"):
        assert value(samples, "ray_rayps_shard_updates_total", run_id=run, shard=shard) == s["optimizer_steps"][shard]
        assert value(samples, "ray_rayps_update_staleness_count", run_id=run, shard=shard) == \
            s["pushes_applied"] / s["servers"]
        assert value(samples, "ray_rayps_shard_memory_bytes", run_id=run, shard=shard) > 0
    for worker, n in steps.items():
        assert value(samples, "ray_rayps_worker_steps_total", run_id=run, worker=worker) == n
        assert value(samples, "ray_rayps_push_pull_seconds_count", run_id=run, worker=worker) == n
        pushed = value(samples, "ray_rayps_transfer_bytes_total", run_id=run, worker=worker, direction="push")
        assert pushed == n * result.params.size * 4
        assert value(samples, "ray_rayps_worker_loss", run_id=run, worker=worker) is not None
        assert value(samples, "ray_rayps_worker_clock_lag", run_id=run, worker=worker) is not None
    assert value(samples, "ray_rayps_shard_pushes_total", run_id=run, outcome="applied") == s["pushes_applied"]
    # the job's progress, as the progress line and the history count it
    for key in ("step", "steps", "global_step", "replayed", "epoch"):
        assert value(samples, f"ray_rayps_job_{key}", run_id=run) == s["progress"][key], key


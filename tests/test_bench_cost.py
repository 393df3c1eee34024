"""psctl bench --cost: how a step's overhead grows with shards and workers, and one shard's pushes/s with clients."""

from __future__ import annotations

import pytest

from rayps.launcher.bench.cost import cost_rows, cost_table
from rayps.launcher.bench.runner import chart


@pytest.mark.slow
def test_the_cost_rows_measure_overhead_against_the_ceiling_and_a_shards_pushes_against_its_clients(
        ray_session, tmp_path):
    rows = cost_rows(tmp_path / "jobs", steps=60, counts=(1, 2), clients=(1, 2), load_seconds=0.5)
    jobs = [r for r in rows if r.extra["axis"] != "clients"]
    # each count along each axis, under asp and bsp: shards 1 and 2 with 2 workers, workers 1 and 2 with 2 shards
    assert sorted((r.extra["axis"], r.extra["n"], r.extra["mode"]) for r in jobs) == sorted(
        (axis, n, mode) for axis in ("shards", "workers") for n in (1, 2) for mode in ("asp", "bsp"))
    for r in jobs:
        assert r.samples_per_s > 0
        assert r.extra["overhead_ms"] == pytest.approx(r.extra["step_ms"] - r.extra["ceiling_ms"])
        workers = 2 if r.extra["axis"] == "shards" else r.extra["n"]
        assert r.extra["step_ms"] == pytest.approx(1000 * workers * 128 / r.samples_per_s)
    clients = [r for r in rows if r.extra["axis"] == "clients"]
    assert sorted((r.extra["transport"], r.extra["n"]) for r in clients) == [("grpc", 1), ("grpc", 2), ("shm", 1),
                                                                              ("shm", 2)]
    assert all(r.samples_per_s > 0 and r.extra["errors"] == 0 for r in clients)
    text = cost_table(rows)
    assert text.count("\n") == len(rows) + 1 and "| shards | 2 | 2 workers, 2 shards, bsp |" in text
    chart(rows, tmp_path / "bench.png")  # the curves: a figure of the cost rows alone
    assert (tmp_path / "bench.png").stat().st_size > 10_000

"""psctl bench, cut short: every peer runs, and the table, JSON and chart land in the run directory.

Speed itself is never asserted here (2 shared cores make timings noise);
the benchmark's numbers go into the docs from a full run's bench.json (docs/results/).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayps.launcher.bench.runner import run_bench

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_short_bench_measures_every_system_and_writes_its_report(ray_session, tmp_path):
    out, rows = run_bench(output=tmp_path / "bench", models=["small"], transports=["shm"], modes=["asp"], steps=20,
                          stragglers=False, transport_mb=8,
                          sparse_steps=20, sparse_rows_in_table=100_000, sparse_repeats=1, wire=False,
                          cost=False)  # its rows: tests/test_bench_cost.py
    rows_all = rows
    wire = [r for r in rows if r.model == "transport"]
    assert [r.system for r in wire] == ["memcpy (numpy copyto), one copy", "push + pull through shm",
                                        "push + pull through shm, bsp", "push + pull through grpc",
                                        "push + pull through ray"]
    assert all(r.samples_per_s > 0 and r.extra["ms"] > 0 for r in wire)
    rows = [r for r in rows if r.model == "small"]
    systems = [r.system for r in rows]
    assert systems == ["rayps asp, shm", "rayps asp, shm, fp16", "Ray-docs-style PS, async", "Ray-docs-style PS, sync",
                       "PyTorch DDP (gloo)", "PyTorch DDP (gloo), fp16 hook", "no communication (ceiling)",
                       "single process"]
    assert all(r.samples_per_s > 0 for r in rows)
    by = {r.system: r for r in rows}
    ddp, ddp_fp16 = by["PyTorch DDP (gloo)"].samples_per_s, by["PyTorch DDP (gloo), fp16 hook"].samples_per_s
    assert rows[0].extra["x_ddp"] == pytest.approx(rows[0].samples_per_s / ddp)
    assert rows[1].extra["x_ddp"] == pytest.approx(rows[1].samples_per_s / ddp_fp16)  # like against like
    assert rows[0].extra["transport"] == "shm"
    # every row says what it ran
    assert rows[0].extra["config"] == "2 workers, 2 shards, shm, asp, batch 128, SGD lr 0.01, overlap off"
    assert rows[1].extra["config"].endswith("fp16 pushes")
    assert "fp16_compress_hook" in by["PyTorch DDP (gloo), fp16 hook"].extra["config"]
    assert all(r.extra.get("config") for r in rows_all), [r.system for r in rows_all if not r.extra.get("config")]
    saved = json.loads((out / "bench.json").read_text())
    assert saved["command"].startswith("run_bench(") and "date" in saved and "commit" in saved
    assert "cores" in saved["machine"] and "torch" in saved["machine"]
    assert [r["system"] for r in saved["rows"] if r["model"] == "small"] == systems
    assert (out / "bench.md").read_text().count("| small |") == len(rows)
    assert "push + pull through shm" in (out / "bench.md").read_text()
    assert (out / "bench.png").stat().st_size > 1000
    sparse = [r for r in rows_all if r.model == "sparse"]
    assert [r.system for r in sparse] == ["torch EmbeddingBag(sparse) + SparseAdam, one process",
                                          "rayps, 2 workers x 2 shards, shm"]
    assert all(r.samples_per_s > 0 for r in sparse) and sparse[1].extra["bytes_per_row"] > 0
    assert sparse[1].extra["x_single"] == pytest.approx(sparse[1].samples_per_s / sparse[0].samples_per_s)
    assert "rows/s" in (out / "bench.md").read_text()


def test_the_compression_rows_send_fewer_bytes_through_the_throttled_link(ray_session, tmp_path):
    from rayps.launcher.bench.wire import wire_rows, wire_table

    rows = wire_rows(tmp_path, steps=10, mbit=200, codecs=["none", "topk"])
    assert [r.system for r in rows] == ["none @ 200 Mbit/s", "topk 0.1, pull fp16 @ 200 Mbit/s",
                                        "topk 0.1, pull float32 @ 200 Mbit/s"]
    none, topk, topk_f32 = (r.extra for r in rows)
    assert none["push_sent_bytes"] == none["push_bytes"] == 814_120  # 203,530 float32 parameters
    assert topk["push_sent_bytes"] == pytest.approx(0.2 * none["push_bytes"], rel=0.01)  # 10%: index + value
    assert topk["pull_sent_bytes"] == none["pull_sent_bytes"] / 2 == topk_f32["pull_sent_bytes"] / 2
    # what really crossed the link, per push: the bytes sent plus a little gRPC framing
    for r in rows:
        per_push = r.extra["link"]["bytes_up"] / r.extra["steps"]
        assert r.extra["push_sent_bytes"] <= per_push < 1.03 * r.extra["push_sent_bytes"] + 4096, r.system
    assert rows[0].extra["link"]["bytes_down"] / rows[0].extra["steps"] > \
        1.8 * rows[1].extra["link"]["bytes_down"] / rows[1].extra["steps"]
    assert "| none @ 200 Mbit/s |" in wire_table(rows)


def test_ddp_ranks_are_held_back_by_the_same_seeded_delays_as_rayps_workers(tmp_path):
    # One straggler rule for every system: a multiple of one measured compute time, drawn per step from the
    # stream a rayps worker of the same id draws from (tests/test_training.py checks the rayps side).
    from rayps.launcher.bench import peers
    from rayps.launcher.bench.rows import model_fn
    from rayps.worker.datasets import synthetic_mnist
    from rayps.worker.loop.pace import straggle_s

    compute_s = peers.compute_seconds(model_fn((16,)), synthetic_mnist, 32, steps=8)
    assert 0 < compute_s < 1
    result = peers.processes(model_fn((16,)), synthetic_mnist, workers=2, batch=32, lr=0.01, steps=30,
                             communicate=True, slow={1: 0.5}, straggle=(0.3, 2.0), compute_s=0.004)
    for rank in (0, 1):
        rng = np.random.default_rng([0, rank, 7])
        expected = sum(straggle_s(rng, 0.004, 0.5 if rank else 0.0, 0.3, 2.0) for _ in range(30))
        assert result["held_s"][rank] == pytest.approx(expected, abs=1e-9)
    assert result["samples_per_s"] > 0

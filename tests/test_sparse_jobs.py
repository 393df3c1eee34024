"""Sparse tables in whole jobs: exactly once through failures, per-table consistency, a click model to
near its ceiling, a 10-million-row table with the workers' memory flat, and the trained rows handed back."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rayps
from rayps.runtime import RAY
from rayps.launcher.job.config import load_job_config
from rayps.launcher.job.driver import run_job

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


def run(tmp_path, name="run", runtime=RAY, **kwargs):
    return rayps.Job(**kwargs).run(output=tmp_path / name, progress=False, dashboard=False, report=False,
                                   runtime=runtime)


class SparseCounter(nn.Module):
    """Row i of the table goes up by exactly 1 each time example i's row gradient is applied (SGD, lr 1);
    the dense part is one unused parameter, so the dense path runs beside it."""

    def __init__(self, n: int = 600):
        super().__init__()
        self.rows = rayps.Embedding(n, 1, table="count")
        self.dense = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.rows(x[:, 0]).squeeze(1) + 0 * self.dense


def minus_sum(out, y):
    return -out.sum()


def counting_job(tmp_path, epochs: int = 6, **kwargs):
    x = np.arange(600, dtype=np.int64).reshape(-1, 1)
    data = {"train": (x[:500], np.zeros(500, np.float32)), "test": (x[500:], np.zeros(100, np.float32))}
    kwargs.setdefault("sparse", {"optimizer": {"name": "sgd", "lr": 1.0}, "init": "zeros"})
    return run(tmp_path, model=SparseCounter, data=data, loss="tests.test_sparse_jobs:minus_sum",
               optimizer={"name": "sgd", "lr": 1.0}, schedule={"name": "constant"}, servers=2, batch_size=10,
               epochs=epochs, eval_every_s=0,
               **{"debug": {"audit": True, "slow_workers": {0: 0.01, 1: 0.01}}, **kwargs})


def counts(result) -> np.ndarray:
    return result.model.rows._source.pull("count", np.arange(600, dtype=np.int64))[:, 0]


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_killed_worker_and_a_killed_shard_leave_every_row_gradient_applied_exactly_once(ray_session, tmp_path):
    """A worker SIGKILLed and replaced, then a shard SIGKILLed and its table rolled back to the
    checkpoint cut: every row still counts exactly 6 applications, and the trained rows come back."""
    result = counting_job(tmp_path, consistency={"mode": "asp"}, checkpoint={"every_s": 0.3},
                          chaos={"kill": ["worker-0@30", "ps-shard-1@70"]})
    s = result.summary
    assert s["restarts"] == {"worker-0": 1, "ps-shard-1": 1} and s["rollbacks"] == 1
    c = counts(result)
    assert (c[:500] == 6).all(), np.unique(c[:500], return_counts=True)  # 6 epochs, once each (grad -1, lr 1)
    assert (c[500:] == 0).all()  # the test rows were read (evaluation) but never created or trained
    table = s["sparse_tables"]["count"]
    assert table["rows"] == 500 and set(table["rows_per_shard"]) == {"0", "1"}
    saved = np.load(tmp_path / "run" / "tables" / "count.npz")
    assert len(saved["ids"]) == 500 and (saved["rows"] == 6).all()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_dense_bsp_and_an_ssp_table_each_keep_their_own_bound_and_report_it(ray_session, tmp_path):
    from tests.test_metrics import scrape, value

    result = counting_job(tmp_path, consistency={"mode": "bsp"},
                          sparse={"optimizer": {"name": "sgd", "lr": 1.0}, "init": "zeros",
                                  "consistency": {"mode": "ssp", "staleness": 1}},
                          debug={"audit": True, "slow_workers": {0: 0.03}})
    s = result.summary
    table = s["sparse_tables"]["count"]
    assert s["consistency"] == "bsp" and s["max_clock_gap"] == 0
    assert table["mode"] == "ssp" and table["max_clock_gap"] <= 1
    assert (counts(result)[:500] == 6).all()
    assert table["rows_pushed"] == 3000 and table["duplicates"] == 0
    assert set(table["staleness_histogram"]) <= {"0", "1", "2", "3"}
    # the same numbers reach the node's Prometheus endpoint
    run, port = s["run_id"], ray_session.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + 60

    def caught_up(samples) -> bool:  # the counters and every shard's gauges (exported on their own clocks)
        return value(samples, "ray_rayps_table_rows_moved_total", run_id=run, table="count",
                     what="pushed") == table["rows_pushed"] and all(
            value(samples, "ray_rayps_table_rows", run_id=run, table="count", shard=shard) is not None
            for shard in table["rows_per_shard"])
    while not caught_up(samples := scrape(port)):
        assert time.monotonic() < deadline, f"sparse metrics of run {run} never caught up"
        time.sleep(1)
    for shard, rows in table["rows_per_shard"].items():
        assert value(samples, "ray_rayps_table_rows", run_id=run, table="count", shard=shard) == rows
        assert value(samples, "ray_rayps_table_bytes", run_id=run, table="count", shard=shard) == \
            table["bytes_per_shard"][shard]
    assert value(samples, "ray_rayps_table_rows_moved_total", run_id=run, table="count", what="created") == 500


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_the_ctr_example_reaches_097_of_the_true_click_models_auc(ray_session, tmp_path):
    """examples/ctr.yaml as shipped (DeepFM: sparse wide and deep tables, a dense MLP), on the default wire
    (shared memory here; the other wires carry the same calls, tests/test_sparse_transports.py)."""
    config = load_job_config(EXAMPLES / "ctr.yaml")
    s = run_job(config, output=tmp_path / "ctr", dashboard=False, report=False).summary
    assert s["transport"] == "shm"
    assert s["auc_ratio"] >= 0.97, (s["test_auc"], s["reference_auc"])
    assert set(s["sparse_tables"]) == {"wide", "deep"} and s["sparse_tables"]["wide"]["mode"] == "asp"
    assert s["consistency"] == "ssp" and s["max_clock_gap"] <= 2


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_harder_ctr_example_trains_as_near_the_true_auc_as_one_torch_process_gets(ray_session, tmp_path):
    """examples/ctr-hard.yaml: the click model before it was eased (100,000 ids per field, a long Zipf tail,
    200,000 examples). One plain torch process gets 0.872 of the true AUC on it (benchmarks/ctr_one_process.py);
    the job measured 0.868 (docs/sparse.md). The bar is that, less 0.02 for run-to-run spread."""
    config = load_job_config(EXAMPLES / "ctr-hard.yaml")
    s = run_job(config, output=tmp_path / "ctr-hard", dashboard=False, report=False).summary
    assert s["auc_ratio"] >= 0.85, (s["test_auc"], s["reference_auc"])


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_table_of_100m_int64_ids_beyond_the_shards_memory_trains_as_one_that_fits(ray_session, tmp_path):
    """examples/ctr-int64.yaml: ids from the whole int64 space (100M of them, Zipf), 256 MB of rows per shard
    in memory and the rest on disk. The same job with every row in memory measured an AUC ratio of 0.8959
    (docs/sparse.md); the bar is that less 0.01. A shard's peak RSS must stay under its budget plus the
    overhead docs/sparse.md states (600 MB: the process itself, about 160 MB, and its working memory)."""
    config = load_job_config(EXAMPLES / "ctr-int64.yaml")
    s = run_job(config, output=tmp_path / "int64", dashboard=False, report=False).summary
    assert s["auc_ratio"] >= 0.8959 - 0.01, (s["test_auc"], s["reference_auc"])
    for name, t in s["sparse_tables"].items():
        # more rows than the budget holds: most of a shard's rows of each table went to disk and stayed there
        assert t["rows"] == t["memory_rows"] + t["disk_rows"] and t["disk_rows"] > 0.3 * t["rows"], name
        assert t["memory_rows"] <= t["memory_budget_rows"], name
    assert max(s["shard_peak_rss_mb"].values()) <= 256 + 600, s["shard_peak_rss_mb"]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_ten_million_row_table_trains_with_the_workers_memory_flat_in_its_size(ray_session, tmp_path):
    """The same job on a 10M x 16 table and on a 10k x 16 one: the workers' peak memory differs by far
    less than the 640 MB the big table would take, and the shards hold only the rows touched."""
    def job(rows, name):
        model = functools.partial(_BagModel, rows)
        rng = np.random.default_rng(0)
        x = (rng.zipf(1.3, size=(4096, 8)) % rows).astype(np.int64)
        y = rng.random(4096).astype(np.float32)
        return run(tmp_path, name, model=model, data={"train": (x, y)}, loss="mse",
                   sparse={"optimizer": {"name": "adam", "lr": 0.01}, "init_scale": 0.01},
                   batch_size=512, epochs=1, eval_every_s=0)

    big, small = job(10_000_000, "big").summary, job(10_000, "small").summary
    grew = max(big["worker_peak_rss_mb"].values()) - max(small["worker_peak_rss_mb"].values())
    assert grew < 64, (big["worker_peak_rss_mb"], small["worker_peak_rss_mb"])
    table = big["sparse_tables"]["bag"]
    assert table["rows"] == table["rows_created"] < 32_000  # only what the batches touched exists
    # what the shards hold per row: within 1.3x of a row and Adam's state (3 x 16 float32, a step count)
    assert table["bytes"] / table["rows"] <= 1.3 * (3 * 16 * 4 + 4), table


class _BagModel(nn.Module):
    def __init__(self, rows: int):
        super().__init__()
        self.bag = rayps.EmbeddingBag(rows, 16, mode="mean", table="bag")
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.bag(x)).squeeze(1)


@pytest.mark.timeout(240)
def test_int8_compressed_row_gradients_over_grpc_apply_every_row_once_per_epoch(in_process, tmp_path):
    """Each row's gradient is -1 per epoch: int8 carries it to 1e-6, so every count ends
    at the number of epochs, through the compressed sparse path of the gRPC wire."""
    result = counting_job(tmp_path, epochs=3, transport="grpc", compression="int8", runtime=in_process)
    s = result.summary
    c = s["compression"]
    # 10 one-value rows a push, each with its own 4-byte scale: 50 bytes against 40 of float32 (int8
    # saves bytes on rows of more than one value)
    assert c["codec"] == "int8" and c["sparse_sent_bytes_per_step"] == pytest.approx(
        50 / 40 * c["sparse_bytes_per_step"], rel=0.01)
    np.testing.assert_allclose(counts(result)[:500], 3.0, rtol=1e-5)
    assert s["applied_twice"] == 0


@pytest.mark.timeout(240)
def test_rows_asked_ahead_train_exactly_as_rows_pulled_by_the_forward(in_process, tmp_path):
    """One worker, asp: the next batch's rows asked behind each push (lookahead) are read after that push
    on every shard, as a pull from the forward would be, so the trained table is the same to the bit; and
    nearly every forward's pull was answered from them."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5_000, (2_048, 8)).astype(np.int64)
    data = {"train": (x, rng.random(2_048).astype(np.float32))}

    def job(name, lookahead):
        return run(tmp_path, name, runtime=in_process, model=functools.partial(_BagModel, 5_000), data=data,
                   loss="mse", optimizer={"name": "adam", "lr": 0.01}, consistency={"mode": "asp"},
                   sparse={"optimizer": {"name": "adam", "lr": 0.01}, "init_scale": 0.01, "lookahead": lookahead},
                   workers=1, servers=2, batch_size=64, epochs=2, eval_every_s=0)

    ahead, plain = job("ahead", True), job("plain", False)
    steps = int(ahead.summary["steps"]["0"])
    # every batch but a unit's first has its rows asked ahead (a unit's first follows a lease)
    assert steps // 2 <= ahead.summary["sparse_pulls_served_ahead"] < steps
    assert plain.summary["sparse_pulls_served_ahead"] == 0 and plain.summary["sparse_rows_ahead"] == 0
    ids = np.arange(5_000, dtype=np.int64)
    np.testing.assert_array_equal(ahead.model.bag._source.pull("bag", ids), plain.model.bag._source.pull("bag", ids))

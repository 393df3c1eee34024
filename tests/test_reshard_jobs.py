"""A job stopped at 2 shards and resumed at 3 or 1: every row gradient still applied once, the same accuracy.

A stop is made as a crashed driver leaves it: the run directory with its checkpoints up to some cut (the
later ones removed), and no summary. Jobs run in one process (tests/local_runtime.py): the claim is about
the cut and the layout, not about processes.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

import rayps
from rayps.launcher.job.resharding import shard_count
from rayps.ps.core.checkpoint import CheckpointStore
from tests.test_sparse_jobs import SparseCounter, counts


def run(tmp_path, name, runtime, **kwargs):
    return rayps.Job(**kwargs).run(output=tmp_path / name, progress=False, dashboard=False, report=False,
                                   runtime=runtime)


def stopped_at(run_dir, keep_through: int) -> int:
    """The run directory as a driver killed after checkpoint ``keep_through`` leaves it; that checkpoint."""
    store = CheckpointStore(run_dir / "checkpoints")
    steps = store.steps()
    assert len(steps) > keep_through + 1, steps
    for step in steps[keep_through + 1:]:
        shutil.rmtree(store.path(step))
    (run_dir / "summary.json").unlink()
    return steps[keep_through]


def counting(servers: int) -> dict:
    x = np.arange(600, dtype=np.int64).reshape(-1, 1)
    return dict(model=SparseCounter, data={"train": (x[:500], np.zeros(500, np.float32)),
                                           "test": (x[500:], np.zeros(100, np.float32))},
                loss="tests.test_sparse_jobs:minus_sum", optimizer={"name": "sgd", "lr": 1.0},
                schedule={"name": "constant"}, sparse={"optimizer": {"name": "sgd", "lr": 1.0}, "init": "zeros"},
                servers=servers, batch_size=10, epochs=4, eval_every_s=0,
                checkpoint={"every_steps": 10, "keep": 100},
                debug={"audit": True, "slow_workers": {0: 0.02, 1: 0.02}})


@pytest.mark.timeout(240)
@pytest.mark.parametrize("servers", [3, 1])
def test_a_sparse_job_resumed_on_another_number_of_shards_applies_every_row_gradient_once(
        in_process, tmp_path, servers):
    first = run(tmp_path, "run", in_process, **counting(2))
    assert (counts(first)[:500] == 4).all()
    cut = stopped_at(tmp_path / "run", 2)
    resumed = run(tmp_path, "run", in_process, **counting(servers))
    assert resumed.summary["servers"] == servers
    # each of rows 0..499 went up by one per epoch: none lost, none applied twice across the reshard
    got = counts(resumed)
    assert (got[:500] == 4).all(), np.flatnonzero(got[:500] != 4)[:10]
    assert (got[500:] == 0).all()
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    moved = store.read(cut + 1)
    assert shard_count(moved) == servers
    assert moved["job"]["resharded_from"] == {"checkpoint": cut, "servers": 2}
    assert shard_count(store.read(cut)) == 2  # the old cut stays: the run can go back to 2 shards


@pytest.mark.timeout(400)
def test_a_dense_job_resumed_at_3_and_at_1_shards_reaches_the_accuracy_of_one_uninterrupted(in_process, tmp_path):
    job = dict(servers=2, epochs=5, checkpoint={"every_steps": 10, "keep": 100},
               debug={"slow_workers": {0: 0.02, 1: 0.02}})
    first = run(tmp_path, "whole", in_process, **job).summary
    whole = first["test_accuracy"]
    for servers in (3, 1):
        run(tmp_path, f"to{servers}", in_process, **job)
        stopped_at(tmp_path / f"to{servers}", 3)
        s = run(tmp_path, f"to{servers}", in_process, **{**job, "servers": servers}).summary
        assert s["servers"] == servers
        # two workers under asp: the order pushes land in differs from run to run, so not the same bits
        assert abs(s["test_accuracy"] - whole) <= 0.02, (servers, s["test_accuracy"], whole)
        # every example trained once per epoch across the stop and the reshard
        assert s["examples_per_epoch"] == first["examples_per_epoch"], s["examples_per_epoch"]


@pytest.mark.timeout(300)
def test_psctl_scale_servers_changes_a_running_jobs_shards_and_every_row_gradient_is_applied_once(
        in_process, tmp_path):
    """What ``psctl scale JOB --servers 3`` asks (driver.scale_job): the job cuts a checkpoint, stops, and goes
    on from that cut on 3 shards; a counting table still applies every row gradient once per epoch."""
    import threading

    asked = threading.Event()

    def on_start(name):
        def ask():
            coordinator = in_process.named(f"coordinator-{name}")
            while in_process.get(coordinator.progress.remote())["remaining"] > 200:  # part way through the job
                time.sleep(0.01)
            in_process.get(coordinator.set_wanted_servers.remote(3))
            asked.set()
        threading.Thread(target=ask, daemon=True).start()

    config = counting(2)
    result = rayps.Job(**config).run(output=tmp_path / "run", progress=False, dashboard=False, report=False,
                                     on_start=on_start, runtime=in_process)
    assert asked.is_set()
    s = result.summary
    assert s["servers"] == 3
    (change,) = s["servers_changed"]
    assert change["from"] == 2 and change["to"] == 3 and change["seconds"] > 0
    got = counts(result)
    assert (got[:500] == 4).all(), np.flatnonzero(got[:500] != 4)[:10]
    assert s["progress"]["step"] == s["progress"]["steps"]

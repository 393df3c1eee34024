"""End-to-end jobs through the real driver: shard, work-queue and worker actors.

Each job is small (a few seconds); together they check what a user of the
system would: accuracy per consistency mode, the SSP bound, the BSP golden
equivalence with a single process, exact push accounting, and that uneven
shards and failing workers end the job instead of hanging it.

What is about training runs its actors on threads of this process
(``in_process``, tests/local_runtime.py): the same driver, shards, servers,
transport and workers, without five processes to start per job. The golden
test and the cluster's refusal run on the shared Ray instance, as a user's job
does.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from rayps.launcher import Job
from rayps.errors import JobError
from rayps.runtime import RAY
from rayps.worker.models import mlp
from tests.golden import plain_digits_loop

pytestmark = pytest.mark.slow


def run(tmp_path, runtime=RAY, **kwargs):
    return Job(**kwargs).run(output=tmp_path / "run", progress=False, dashboard=False, report=False, runtime=runtime)


def total_pushes(summary) -> int:
    """Every worker step pushes to every shard once."""
    return sum(summary["steps"].values()) * summary["servers"]


@pytest.mark.parametrize("consistency, bound", [
    ({"mode": "asp"}, None),
    ({"mode": "ssp", "staleness": 2}, 2),
    ({"mode": "bsp"}, 0),
    ({"mode": "ssp", "staleness": 3, "staleness_aware_lr": True}, 3),
])
def test_each_consistency_mode_trains_digits_to_high_accuracy(in_process, tmp_path, consistency, bound):
    result = run(tmp_path, in_process, consistency=consistency, epochs=10)
    s = result.summary
    assert s["test_accuracy"] >= 0.93, s
    assert s["consistency"] == consistency["mode"]
    assert s["staleness_bound"] == bound
    # 1437 examples / 32 per batch, 10 epochs: the work queue hands each worker its shard (23 batches
    # an epoch); under asp and ssp one that has nothing left takes the other's last units
    assert sum(s["steps"].values()) == 460
    assert s["examples_per_epoch"] == {str(e): 1437 for e in range(10)}
    if consistency["mode"] == "bsp":
        assert s["steps"] == {"0": 230, "1": 230}
    assert s["pushes_applied"] == total_pushes(s) and s["pushes_dropped"] == 0
    assert sum(s["staleness_histogram"].values()) == s["pushes_applied"]
    if bound is not None:
        assert s["max_clock_gap"] <= bound
    if consistency["mode"] == "bsp":
        assert s["staleness_histogram"] == {"0": s["pushes_applied"]}
    assert (result.run_dir / "summary.json").is_file()


def test_backup_workers_step_on_the_first_k_gradients_and_count_the_rest(in_process, tmp_path):
    s = run(tmp_path, in_process, workers=3, consistency={"mode": "bsp", "quorum": 2}, epochs=6,
            debug={"slow_workers": {2: 0.01}}).summary
    assert s["test_accuracy"] >= 0.9, s
    assert s["pushes_dropped"] > 0
    assert s["pushes_applied"] + s["pushes_dropped"] == total_pushes(s)
    # one optimizer step per clock, each made of exactly 2 gradients
    steps_per_clock = s["optimizer_steps"]["0"]
    assert steps_per_clock == max(s["steps"].values())


@pytest.mark.parametrize("staleness", [0, 2])
def test_ssp_bound_holds_and_is_reached_with_a_slowed_worker(in_process, tmp_path, staleness):
    s = run(tmp_path, in_process, consistency={"mode": "ssp", "staleness": staleness}, max_steps=40,
            debug={"slow_workers": {0: 0.02}}).summary
    assert s["steps"] == {"0": 40, "1": 40}
    assert s["max_clock_gap"] == staleness  # never above s, and the fast worker does get s ahead
    assert s["wait_s"]["1"] > s["wait_s"]["0"]  # the fast worker is the one held back


def test_asp_lets_the_fast_worker_run_far_ahead_of_a_slowed_one(in_process, tmp_path):
    s = run(tmp_path, in_process, consistency={"mode": "asp"}, max_steps=40, debug={"slow_workers": {0: 0.02}}).summary
    assert s["max_clock_gap"] > 5
    assert max(int(k) for k in s["staleness_histogram"]) > 2


@pytest.mark.ray
def test_one_worker_bsp_matches_a_plain_single_process_torch_loop(ray_session, tmp_path):
    seed, epochs, batch, lr = 3, 2, 64, 0.01
    result = run(tmp_path, workers=1, servers=2, seed=seed, epochs=epochs, batch_size=batch,
                 consistency={"mode": "bsp"},
                 optimizer={"name": "adamw", "lr": lr, "weight_decay": 0.05},
                 schedule={"name": "cosine", "warmup_steps": 5})

    def schedule(opt, total):
        return torch.optim.lr_scheduler.SequentialLR(opt, [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 5, total_iters=5),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - 5),
        ], milestones=[5])
    expected, total = plain_digits_loop(
        seed, epochs, batch, lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.05, foreach=False),
        schedule)

    assert result.summary["optimizer_steps"] == {"0": total, "1": total}
    np.testing.assert_allclose(result.params, expected, rtol=1e-4, atol=1e-5)


def test_uneven_shards_finish_every_epoch_without_hanging(in_process, tmp_path):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    s = run(tmp_path, in_process, model=mlp, model_args={"in_features": 4, "hidden": [8], "num_classes": 2},
            data={"train": (x, y), "test": (x, y)}, workers=3, servers=1, batch_size=1, epochs=2,
            consistency={"mode": "bsp"}).summary
    # 10 examples over 3 workers: shards of 4, 3 and 3, one example per batch
    assert s["steps"] == {"0": 8, "1": 6, "2": 6}
    assert s["pushes_applied"] == 20


def test_regression_from_arrays_with_mse(in_process, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(512, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5], dtype=np.float32))[:, None]
    result = run(tmp_path, in_process, model=torch.nn.Linear, model_args={"in_features": 3, "out_features": 1},
                 data=(x, y), loss="mse", optimizer={"name": "sgd", "lr": 0.05},
                 epochs=20, servers=1)
    assert result.summary["test_accuracy"] is None  # not a classification task
    assert result.summary["test_loss"] < 1e-3
    weight = result.model.weight.detach().numpy().ravel()
    np.testing.assert_allclose(weight, [1.5, -2.0, 0.5], atol=0.02)


def failing_loss(output, target):
    raise ValueError("loss exploded on purpose")


def test_a_failing_worker_fails_the_job_with_its_name_instead_of_hanging(in_process, tmp_path):
    with pytest.raises(JobError, match=r"worker-\d failed: .*loss exploded on purpose"):
        run(tmp_path, in_process, loss=failing_loss, consistency={"mode": "bsp"}, epochs=1)


@pytest.mark.ray
def test_a_job_asking_for_what_the_cluster_lacks_fails_at_once(ray_session, tmp_path):
    began = time.monotonic()
    with pytest.raises(JobError, match=r"each shard asks for \{ps_server: 1\}, but no node offers that"):
        run(tmp_path, server_resources={"ps_server": 1})
    assert time.monotonic() - began < 30  # not pending forever
    assert not (tmp_path / "run").exists()


def test_a_slowed_worker_falls_behind_and_the_time_to_a_target_loss_is_reported(in_process, tmp_path):
    s = run(tmp_path, in_process, consistency={"mode": "asp"}, max_steps=80, target_loss=1.0,
            debug={"slowdown": {1: 3.0}, "stragglers": {"probability": 0.2, "factor": 2.0}}).summary
    assert s["max_clock_gap"] > 5  # worker 1, at a quarter speed, is left behind under asp
    assert s["time_to_target_s"] is not None and 0 < s["time_to_target_s"] < s["train_s"]
    assert s["steady_samples_per_s"] > 0


def test_a_target_loss_never_reached_is_reported_as_none(in_process, tmp_path):
    s = run(tmp_path, in_process, max_steps=20, target_loss=1e-6).summary
    assert s["time_to_target_s"] is None


def test_a_fixed_compute_time_makes_the_straggler_delays_the_seeded_stream_says(in_process, tmp_path):
    # debug.compute_s: every delay a multiple of the same number, drawn from the worker's seeded stream
    # (what the bench holds DDP's ranks to as well: launcher/bench/peers.py)
    from rayps.worker.loop.pace import straggle_s

    knobs = {"slowdown": {1: 0.5}, "stragglers": {"probability": 0.3, "factor": 2.0}, "compute_s": 0.004}
    s = run(tmp_path, in_process, consistency={"mode": "asp"}, max_steps=30, debug=knobs).summary
    for worker in (0, 1):
        rng = np.random.default_rng([0, worker, 7])
        expected = sum(straggle_s(rng, 0.004, 0.5 if worker else 0.0, 0.3, 2.0) for _ in range(30))
        assert s["steps"][str(worker)] == 30
        assert s["straggled_s"][str(worker)] == pytest.approx(expected, abs=1e-6)
    assert s["straggled_s"]["1"] > s["straggled_s"]["0"] > 0


def test_with_max_steps_a_fast_worker_never_takes_a_unit_it_will_not_train(in_process, tmp_path):
    # A worker asks for its next unit while it trains this one. Under asp it may take another worker's; one at
    # its max_steps would then sit on it, and the slower worker, finding nothing left, would stop short.
    s = run(tmp_path, in_process, consistency={"mode": "asp"}, max_steps=8, chunk_batches=2,
            debug={"slow_workers": {1: 0.05}}).summary
    assert s["steps"] == {"0": 8, "1": 8}
    assert s["units_stolen"] == 0 and s["batches_returned"] == 0

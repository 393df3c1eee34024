"""Failures, with real processes killed by SIGKILL: the job recovers, and nothing is applied twice.

These are the claims about processes: a SIGKILLed worker or shard (on the
default transport, and a gRPC shard serving again at its port), a shard that
dies between applying and replying, a checkpoint writer killed mid-write,
a driver killed and resumed. What the controller does about each failure
(the accounting, exactly-once through kills and rollbacks, stalls, scaling,
the restart budget) runs in one process in tests/test_controller.py.

Every kill here is of a process this test's job started (an actor's own
process, through the chaos knobs, or a driver subprocess this test spawned),
never anything else on the machine; every test has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rayps
from rayps.launcher.cli import main
from rayps.launcher.job.driver import scale_job
from rayps.ps.core.checkpoint import CheckpointStore
from rayps.ps.served import ServedShard, part_name

from tests.counting import Counter, assert_counted_once_per_epoch

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXAMPLES = 1437  # digits' training split
SLOW = {"slow_workers": {0: 0.004, 1: 0.004}}  # ~4 s of training: the controller sees the job run


def run(tmp_path, name="run", **kwargs):
    return rayps.Job(**kwargs).run(output=tmp_path / name, progress=False, dashboard=False, report=False)


def assert_every_example_once_per_epoch(s, epochs):
    assert s["examples_per_epoch"] == {str(e): EXAMPLES for e in range(epochs)}
    assert s["epoch_coverage"] == {str(e): [[0, s["batches_per_epoch"]]] for e in range(epochs)}


def counting_job(tmp_path, **kwargs):
    x = np.arange(600, dtype=np.float32).reshape(-1, 1)
    data = {"train": (x[:500], np.zeros(500, np.int64)), "test": (x[500:], np.zeros(100, np.int64))}
    return run(tmp_path, model=Counter, data=data, loss="tests.counting:minus_sum",
               optimizer={"name": "sgd", "lr": 1.0}, schedule={"name": "constant"}, servers=1, batch_size=10, epochs=6,
               eval_every_s=0, debug={"audit": True, "slow_workers": {0: 0.01, 1: 0.01}}, **kwargs)


@pytest.mark.timeout(240)
def test_a_killed_worker_is_replaced_and_every_gradient_is_applied_exactly_once_per_epoch(ray_session, tmp_path):
    result = counting_job(tmp_path, consistency={"mode": "ssp"}, chaos={"kill": ["worker-0@40"]})
    s = result.summary
    assert s["restarts"] == {"worker-0": 1} and s["workers_replaced"] == 1
    assert_counted_once_per_epoch(result, epochs=6)


LOCAL_COUNTING = {"inner_steps": 8, "inner_optimizer": {"name": "sgd", "lr": 1.0},
                  "outer_optimizer": {"name": "sgd", "lr": 1.0}}  # a pseudo-gradient is its batches' counts


@pytest.mark.timeout(240)
def test_a_worker_killed_mid_outer_step_loses_only_its_inner_steps_and_nothing_is_applied_twice(ray_session,
                                                                                                tmp_path):
    """Local steps: worker-0 dies before its 20th batch, 3 inner steps into its third outer step of 8. That
    outer step goes back to the queue and is trained again from its start; under ssp each pseudo-gradient
    adds its batches' counts, so every example counts exactly once per epoch."""
    x = np.arange(600, dtype=np.float32).reshape(-1, 1)
    data = {"train": (x[:500], np.zeros(500, np.int64)), "test": (x[500:], np.zeros(100, np.int64))}
    result = run(tmp_path, model=Counter, data=data, loss="tests.counting:minus_sum", servers=1, batch_size=10,
                 epochs=6, eval_every_s=0, schedule={"name": "constant"}, consistency={"mode": "ssp"},
                 local_steps=LOCAL_COUNTING, chaos={"kill": ["worker-0@20"]},
                 debug={"audit": True, "slow_workers": {0: 0.01, 1: 0.01}})
    s = result.summary
    assert s["restarts"] == {"worker-0": 1} and s["workers_replaced"] == 1
    assert s["batches_returned"] >= 1  # the outer step it died in (and any it had leased) went back
    assert_counted_once_per_epoch(result, epochs=6)


@pytest.mark.timeout(240)
def test_a_bsp_job_with_local_steps_survives_a_worker_killed_mid_outer_step_at_its_accuracy(ray_session, tmp_path):
    s = run(tmp_path, epochs=10, consistency={"mode": "bsp"}, local_steps={"inner_steps": 8},
            chaos={"kill": ["worker-1@12"]}, debug={"audit": True, **SLOW}).summary
    assert s["restarts"] == {"worker-1": 1} and s["applied_twice"] == 0
    assert s["test_accuracy"] >= 0.94, s
    assert s["examples_per_epoch"] == {str(e): EXAMPLES for e in range(10)}


@pytest.mark.timeout(240)
def test_a_killed_shard_is_restored_and_the_replayed_batches_are_applied_exactly_once(ray_session, tmp_path):
    result = counting_job(tmp_path, consistency={"mode": "asp"}, chaos={"kill": ["ps-shard-0@60"]},
                          checkpoint={"every_s": 0.3})
    s = result.summary
    assert s["restarts"] == {"ps-shard-0": 1} and s["rollbacks"] == 1
    assert s["restored_checkpoint"] is not None and s["steps_replayed"] >= 0
    assert (result.model.p.detach().numpy()[:500] == 6).all()  # the rolled-back stretch was trained again
    assert s["applied_twice"] == 0


@pytest.mark.timeout(300)
def test_a_killed_grpc_shard_restores_its_checkpoint_and_serves_again_where_the_workers_reconnect(ray_session,
                                                                                                 tmp_path):
    """The restarted process serves gRPC again at the port its previous life bound. (Shared memory, the
    default, is killed by the exactly-once tests here and in test_sparse_jobs.py; the object store's client
    recovers the same way in one process, tests/test_controller.py.)"""
    s = run(tmp_path, transport="grpc", epochs=10, checkpoint={"every_s": 0.5},
            chaos={"kill": ["ps-shard-1@80"]}, debug={"audit": True, **SLOW}).summary
    assert s["test_accuracy"] >= 0.93, s
    assert s["restarts"] == {"ps-shard-1": 1} and s["restored_checkpoint"] is not None
    assert s["transport"] == "grpc" and s["resyncs"] >= 2  # both workers registered again, carried on
    assert s["applied_twice"] == 0
    assert_every_example_once_per_epoch(s, 10)


class ShardThatDiesAfterApplying(ServedShard):
    """A shard that, once it has applied seq ``crash_after_seq`` of a worker, writes its checkpoint and SIGKILLs
    its own process before the reply leaves. Only the first life is armed: the restarted one finds the
    checkpoint it wrote, and answers the retry."""

    def __init__(self, *args, crash_after_seq: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._crash_after_seq = crash_after_seq if self.restored() is None else None

    async def push(self, step):
        outcome = await super().push(step)
        if self._crash_after_seq is not None and outcome == "applied" \
                and self.ledger()[step.worker_id][1] >= self._crash_after_seq:
            CheckpointStore(self._checkpoints).write(0, {part_name(self.shard_id): self.state_dict()})
            self.die()
        return outcome


@pytest.mark.timeout(120)
def test_a_shard_that_dies_after_applying_and_before_replying_applies_the_retry_once(ray_session, tmp_path):
    import ray

    from rayps.ps.transport.object_store import RayTransport
    from rayps.ps.core.consistency import ConsistencyConfig
    from rayps.ps.core.optimizers import OptimizerConfig
    from rayps.ps.core.partition import partition
    from rayps.ps.core.schedules import ScheduleConfig

    # Ray retries the task on the restarted actor (at-least-once); the checkpoint it wrote before dying
    # holds the push, so the retry must be answered as a duplicate, not applied a second time.
    shard = ray.remote(ShardThatDiesAfterApplying).options(max_restarts=1, max_task_retries=1, num_cpus=0).remote(
        0, np.zeros(4, np.float32), [0], OptimizerConfig(name="sgd", lr=1.0), ScheduleConfig(),
        ConsistencyConfig(mode="asp"), checkpoints=str(tmp_path / "ckpt"), crash_after_seq=3)
    client = RayTransport((shard,), tuple(partition(4, 1))).connect(0)
    params = np.zeros(4, np.float32)
    client.register(params)
    pid = ray.get(shard.life.remote())["pid"]
    for clock in (1, 2, 3):
        client.push_pull(clock, np.ones(4, np.float32), params, 1, 0.0)
    stats = ray.get(shard.stats.remote())
    assert ray.get(shard.life.remote())["pid"] != pid  # it really died and came back
    assert (stats["version"], stats["pushes_applied"], stats["duplicates"]) == (3, 3, 1)
    assert (params == -3).all()
    assert client.register(params) == 3  # the restored shard says where to carry on
    for clock in (4, 5):
        client.push_pull(clock, np.ones(4, np.float32), params, 1, 0.0)
    assert (params == -5).all() and ray.get(shard.stats.remote())["version"] == 5
    ray.kill(shard)


@pytest.mark.timeout(120)
def test_a_corrupt_newest_checkpoint_is_skipped_by_a_restarting_shard(tmp_path, caplog):
    from rayps.ps.core.consistency import ConsistencyConfig
    from rayps.ps.core.optimizers import OptimizerConfig
    from rayps.ps.core.schedules import ScheduleConfig
    from rayps.ps.core.step import Step
    from rayps.ps.served import ServedShard

    def shard():
        return ServedShard(0, np.zeros(4, np.float32), [0], OptimizerConfig(name="sgd", lr=1.0), ScheduleConfig(),
                           ConsistencyConfig(mode="asp"), checkpoints=str(tmp_path))

    first = shard()
    store = CheckpointStore(tmp_path)
    for step in (1, 2):
        asyncio.run(first.push(Step(0, step, np.ones(4, np.float32), 0, 1, 0.0)))
        store.write(step, {"shard-0": first.state_dict()})
    newest = store.path(2) / "shard-0.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in a tensor byte
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        again = shard()
    assert again.restored() == 1 and again.version == 1
    assert "skipping a corrupt checkpoint" in caplog.text and "sha256" in caplog.text
    (store.path(1) / "shard-0.json").write_text("{")  # and a truncated file in the older one too
    assert shard().restored() is None


@pytest.mark.timeout(120)
def test_a_process_killed_while_writing_a_checkpoint_leaves_none_that_is_chosen(tmp_path):
    CheckpointStore(tmp_path).write(1, {"part": {"x": np.ones(3)}})
    writer = subprocess.Popen([sys.executable, "-c", (
        "import numpy as np, sys; from rayps.ps.core.checkpoint import CheckpointStore;"
        "CheckpointStore(sys.argv[1]).write(2, {f'p{i}': {'x': np.ones(2_000_000)} for i in range(20)})"),
        str(tmp_path)])
    deadline = time.monotonic() + 60
    def partial():  # a temporary directory holding some of the files already
        return [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-") and any(p.iterdir())]

    while not partial():
        assert time.monotonic() < deadline and writer.poll() is None, "the writer never began"
        time.sleep(0.005)
    os.kill(writer.pid, signal.SIGKILL)  # our own subprocess, mid-write (20 files of 16 MB, each fsynced)
    writer.wait(timeout=30)
    assert partial(), "the writer was not killed part way"
    assert CheckpointStore(tmp_path).steps() == [1]
    step, parts = CheckpointStore(tmp_path).latest()
    assert step == 1 and (parts["part"]["x"] == 1).all()


@pytest.mark.timeout(300)
def test_resume_after_sigkill_of_the_driver_completes_the_job(ray_session, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "rayps", "run", "--output", str(run_dir), "--no-dashboard",
                               "--set", "epochs=10", "--set", "checkpoint.every_s=0.3",
                               "--set", "debug.slow_workers={0: 0.01, 1: 0.01}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(CheckpointStore(run_dir / "checkpoints").steps()) < 3:
            assert time.monotonic() < deadline and driver.poll() is None, "the driver never checkpointed"
            time.sleep(0.1)
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # our own subprocess
        driver.wait(timeout=30)
    assert not (run_dir / "summary.json").exists()
    # what the killed job's shards and workers could not remove, as the driver noted it
    noted = json.loads((run_dir / "shm.json").read_text())
    left = [os.path.join(noted["root"], n) for n in os.listdir(noted["root"])
            if n in noted["directories"] or n.startswith(f"rayps-{noted['tag']}-")]
    assert left
    assert main(["run", "--resume", str(run_dir), "--no-dashboard"]) == 0
    assert not any(os.path.exists(p) for p in left), left  # removed by the resumed run
    assert not (run_dir / "shm.json").exists()  # and its own, by its own end
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["test_accuracy"] >= 0.93
    assert_every_example_once_per_epoch(s, 10)
    # the history carries on from the checkpoint's: its step column never goes back, and it ends N/N with
    # the batches the crash cost counted as replayed
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in history if "event" not in r]
    assert steps == sorted(steps) and steps[-1] == s["progress"]["step"] == s["progress"]["steps"] >= 230
    assert abs(s["progress"]["global_steps"] - 460 - 2 * s["progress"]["replayed"]) <= 1  # the plan (10 x 46) and replays
    assert [r["event"] for r in history if r.get("event") == "worker-joined"] == ["worker-joined"] * 2


@pytest.mark.timeout(120)
def test_scale_job_reaches_a_running_jobs_work_queue_by_its_name(ray_session):
    """What ``psctl scale`` does: find the job's work queue by name on the cluster and ask it for workers
    (how the controller follows the ask is tested in one process, tests/test_controller.py)."""
    import ray

    from rayps.launcher.job.driver import COORDINATORS
    from rayps.worker.queue.coordinator import WorkCoordinator
    from rayps.worker.queue.workqueue import EpochBatches, WorkQueue

    batches = EpochBatches(100, 2, 10)
    queue = ray.remote(WorkCoordinator).options(name="coordinator-scaled", namespace=COORDINATORS, num_cpus=0).remote(
        WorkQueue(batches.stretches, 1, 2), batches, 2)
    try:
        scale_job("scaled", 3)
        assert ray.get(queue.get_wanted.remote()) == 3
        with pytest.raises(rayps.JobError, match="no running rayps job named 'elsewhere' on this Ray cluster"):
            scale_job("elsewhere", 3)
        with pytest.raises(rayps.ConfigError, match=r"workers \(0\) must be an integer >= 1"):
            scale_job("scaled", 0)
    finally:
        ray.kill(queue)


def test_resume_needs_a_run_directory_with_checkpoints(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no config.json there" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 2}))
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint under" in capsys.readouterr().err

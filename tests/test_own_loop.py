"""A loop the user writes (``rayps.train``): the same guarantees as a ``Job``, through the same context.

The built-in loop is one user of the context (worker/loop/context.py), so a
user's loop written the plain way trains the same parameters, bit for bit.
The claims about training run the job's actors on threads of this process
(``in_process``); the claims about processes (a worker SIGKILLed, the
dashboard's metrics) run on the session's Ray instance.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import rayps
from rayps.errors import ConfigError, JobError
from rayps.worker.loop.context import LoopError, LossScale

from tests.counting import Counter, assert_counted_once_per_epoch
from tests.test_metrics import scrape, value


def plain_loop():
    """The loop people write, on the context."""
    ctx = rayps.get_context()
    for x, y in ctx.batches():
        loss = nn.functional.cross_entropy(ctx.model(x), y)
        ctx.backward(loss)
        ctx.step()


def train(tmp_path, runtime, loop, name="run", **keys):
    return rayps.train(loop, output=tmp_path / name, progress=False, dashboard=False, report=False,
                       runtime=runtime, **keys)


def job(tmp_path, runtime, name="job", **keys):
    return rayps.Job(**keys).run(output=tmp_path / name, progress=False, dashboard=False, report=False,
                                 runtime=runtime)


ONE_WORKER = dict(workers=1, seed=3, epochs=2, batch_size=64, eval_every_s=0, consistency={"mode": "bsp"},
                  optimizer={"name": "sgd", "lr": 0.5})


def test_the_default_job_trains_to_its_bar_through_a_loop_of_ones_own(in_process, tmp_path):
    result = train(tmp_path, in_process, plain_loop)
    assert result.summary["test_accuracy"] >= 0.95
    assert result.summary["examples_per_epoch"] == {str(e): 1437 for e in range(30)}  # every example, every epoch


def test_a_loop_written_the_plain_way_trains_what_the_job_does(in_process, tmp_path):
    """Torch's habits (an optimizer with zero_grad and step, loss.backward) on the context's optimizer."""
    def torch_habits(config):
        ctx = rayps.get_context()
        opt = ctx.optimizer
        assert config == {"scale": 1.0}
        for x, y in ctx.batches():
            opt.zero_grad()
            (config["scale"] * nn.functional.cross_entropy(ctx.model(x), y)).backward()
            opt.step()

    ours = train(tmp_path, in_process, torch_habits, train_loop_config={"scale": 1.0}, **ONE_WORKER)
    theirs = job(tmp_path, in_process, **ONE_WORKER)
    assert ours.summary["steps"] == theirs.summary["steps"]
    np.testing.assert_array_equal(ours.params, theirs.params)


def test_clipping_and_accumulation_apply_to_ones_own_loop_as_to_a_job(in_process, tmp_path):
    knobs = dict(ONE_WORKER, clip_grad_norm=0.5, accumulate=4)
    ours = train(tmp_path, in_process, plain_loop, **knobs)
    theirs = job(tmp_path, in_process, **knobs)
    np.testing.assert_array_equal(ours.params, theirs.params)
    whole = job(tmp_path, in_process, "whole", **dict(ONE_WORKER, clip_grad_norm=0.5))
    torch.testing.assert_close(torch.from_numpy(ours.params), torch.from_numpy(whole.params), rtol=1e-4, atol=1e-5)


def test_a_loop_with_two_losses_and_its_own_metrics_reports_to_the_history(in_process, tmp_path):
    def two_heads():
        ctx = rayps.get_context()
        for x, y in ctx.batches():
            logits = ctx.model(x)
            main = nn.functional.cross_entropy(logits, y)
            aux = 1e-3 * logits.pow(2).mean()  # an auxiliary loss beside the task's
            ctx.backward(main + aux)
            ctx.step()
            rayps.report({"main_loss": main, "aux_loss": aux.item()})

    result = train(tmp_path, in_process, two_heads, epochs=4)
    reported = [r for r in result.history if r.get("by") == "report"]
    assert reported and {r["worker"] for r in reported} == {0, 1}
    assert all(np.isfinite(r["main_loss"]) and r["aux_loss"] >= 0 for r in reported)
    assert reported[-1]["main_loss"] < reported[0]["main_loss"]  # it trained
    rows = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert sum(r.get("by") == "report" for r in rows) == len(reported)  # in the run directory too
    assert any("main_loss" in r.get("reported", {}) for r in rows)  # the tick rows the progress line shows
    assert result.summary["test_accuracy"] >= 0.9


def test_a_loop_that_breaks_the_one_step_per_batch_rule_is_told_so(in_process, tmp_path):
    def two_batches_one_step():
        ctx = rayps.get_context()
        for x, y in ctx.batches():
            ctx.backward(nn.functional.cross_entropy(ctx.model(x), y))

    def two_steps():
        ctx = rayps.get_context()
        for x, y in ctx.batches():
            ctx.backward(nn.functional.cross_entropy(ctx.model(x), y))
            ctx.step()
            ctx.step()

    def accumulate_by_hand():
        ctx = rayps.get_context()
        for x, y in ctx.batches():
            nn.functional.cross_entropy(ctx.model(x), y).backward()
            ctx.step()

    with pytest.raises(JobError, match="LoopError: the next batch was taken before step"):
        train(tmp_path, in_process, two_batches_one_step, "a", max_steps=5)
    with pytest.raises(JobError, match="LoopError: step\\(\\) was called twice for one batch"):
        train(tmp_path, in_process, two_steps, "b", max_steps=5)
    with pytest.raises(JobError, match="with accumulate: 2, backpropagate through ctx.backward"):
        train(tmp_path, in_process, accumulate_by_hand, "c", max_steps=5, accumulate=2)
    with pytest.raises(JobError, match="with precision: fp16, backpropagate through ctx.backward"):
        train(tmp_path, in_process, accumulate_by_hand, "d", max_steps=5, precision="fp16")


def test_a_loop_is_checked_before_any_actor_starts():
    def two_args(config, other):
        pass

    with pytest.raises(ConfigError, match="takes at most one argument"):
        rayps.train(two_args, progress=False, dashboard=False)
    with pytest.raises(ConfigError, match="train_loop_per_worker \\(42\\) must be"):
        rayps.train(42, progress=False, dashboard=False)
    with pytest.raises(LoopError, match="get_context\\(\\) is called from inside a training loop"):
        rayps.get_context()


# ---- fp16: a loss scale, and an overflowing batch computed again -------------------------------------------

class Spiky(nn.Module):
    """The digits MLP whose first forward's loss is huge: at the initial scale its fp16 gradient overflows."""

    seen = 0

    def __init__(self):
        super().__init__()
        from rayps.worker.models import mlp
        self.net = mlp()

    def forward(self, x):
        out = self.net(x)
        if self.training:
            Spiky.seen += 1
            if Spiky.seen == 1:
                return out * 3e4
        return out


def test_fp16_scales_the_loss_and_computes_an_overflowing_batch_again(in_process, tmp_path):
    Spiky.seen = 0
    result = train(tmp_path, in_process, plain_loop, model=Spiky, precision="fp16", **ONE_WORKER)
    steps = result.summary["steps"]["0"]
    assert Spiky.seen == steps + 1  # the first batch went twice through the forward, and was pushed once
    assert np.isfinite(result.params).all()
    assert result.summary["loss_scale_overflows"] == 1
    assert result.summary["test_accuracy"] >= 0.9


def test_the_loss_scale_halves_on_an_overflow_and_grows_after_a_run_of_finite_steps():
    scale = LossScale(initial=1024.0, growth_every=3)
    scale.update(False)
    assert scale.value == 512.0 and scale.overflows == 1
    for _ in range(3):
        scale.update(True)
    assert scale.value == 1024.0


# ---- failures, in one process (tests/local_job.py), then in real ones ---------------------------------------

@pytest.mark.parametrize("mode", ["ssp", "bsp"])
def test_a_killed_shard_is_restored_under_ones_own_loop_and_every_example_applied_once(in_process, tmp_path,
                                                                                      mode):
    """The failed push is recovered inside step(); the loop carries on with the batches the queue hands out."""
    from tests.local_job import LocalJob, counting
    from tests.test_controller import assert_every_example_once_per_epoch

    job = LocalJob(tmp_path, in_process, **counting(
        consistency={"mode": mode}, servers=2, checkpoint={"every_s": None, "every_steps": 30},
        debug={"slow_workers": {0: 0.003, 1: 0.003}}, train_loop_per_worker=counting_loop))
    job.when(lambda: job.checkpointer.written >= 2 and job.since_checkpoint(0) >= 10,
             lambda: in_process.kill(job.shards[0], no_restart=False))
    s = job.run()
    assert s["restarts"] == {"ps-shard-0": 1} and s["rollbacks"] == 1
    assert s["resyncs"] >= 2 and 0 < s["steps_lost"] <= s["steps_replayed"]
    assert_every_example_once_per_epoch(job, s)
    assert {r["worker"] for r in job.monitor.history if r.get("by") == "report"} == {0, 1}  # the loop ran



def counting_loop():
    ctx = rayps.get_context()
    for x, y in ctx.batches():
        ctx.backward(-ctx.model(x).sum())
        ctx.step()
        rayps.report({"seen": float(ctx.steps)})


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ones_own_loop_survives_a_worker_sigkill_with_every_example_once_per_epoch(ray_session, tmp_path):
    x = np.arange(600, dtype=np.float32).reshape(-1, 1)
    data = {"train": (x[:500], np.zeros(500, np.int64)), "test": (x[500:], np.zeros(100, np.int64))}
    result = rayps.train(counting_loop, model=Counter, data=data, loss="tests.counting:minus_sum",
                         optimizer={"name": "sgd", "lr": 1.0}, schedule={"name": "constant"}, servers=1,
                         batch_size=10, epochs=6,
                         eval_every_s=0, debug={"audit": True, "slow_workers": {0: 0.01, 1: 0.01}},
                         consistency={"mode": "ssp"}, chaos={"kill": ["worker-0@40"]},
                         output=tmp_path / "run", progress=False, dashboard=False, report=False)
    s = result.summary
    assert s["restarts"] == {"worker-0": 1} and s["workers_replaced"] == 1
    assert_counted_once_per_epoch(result, epochs=6)
    assert any(r.get("by") == "report" and r["worker"] == 0 for r in result.history)
    assert (result.run_dir / "summary.json").exists() and (result.run_dir / "model.safetensors").exists()
    # the dashboard: the loop's reports beside the job's own metrics, on the node's Prometheus endpoint
    port, run = ray_session.nodes()[0]["MetricsExportPort"], s["run_id"]
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(port)
        seen = value(samples, "ray_rayps_worker_reported", run_id=run, metric="seen", worker="1")
        if seen == s["steps"]["1"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == s["steps"]["1"]  # worker-1's last report: its step count
    assert value(samples, "ray_rayps_job_step", run_id=run) == s["progress"]["step"]

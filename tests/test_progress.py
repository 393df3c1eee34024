"""Progress as a user reads it: the counts behind the progress line and the history, in one process.

The shard writes a row every K steps (ps/core/series.py); the monitor reads
them with the odometer, so the step column never goes back, a rollback's
replay is counted, and the last line of a finished job reads N/N. The real
jobs (tests/test_report.py, tests/test_controller.py) check the same on the
default job and through a killed shard.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from rayps.errors import ConfigError
from rayps.launcher.job.config import JobConfig
from rayps.launcher.job.monitor import Monitor, default_history_every
from rayps.launcher.job.progress import Extent, Odometer, Progress, describe
from rayps.launcher.job.report import plot_data
from rayps.launcher.job.terminal import ProgressLine
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.series import StepSeries
from rayps.ps.core.step import Step
from rayps.ps.shard import ParameterShard
from rayps.settings import build

EXTENT = Extent(batches=1380, per_epoch=46, workers=2)  # the default job: 2 workers x 23 batches x 30 epochs


def test_progress_counts_steps_per_worker_and_epochs_against_the_plan():
    p = Progress(EXTENT, taken=690, position=690)
    assert (p.step, p.steps, p.epoch, p.epochs) == (345, 690, 15.0, 30.0)
    done = Progress(EXTENT, taken=1380, position=1380)
    assert (done.step, done.steps, done.fraction) == (690, 690, 1.0)
    assert done.fields() == {"step": 690, "steps": 690, "global_step": 1380, "replayed": 0, "epoch": 30.0}


def test_after_a_rollback_the_replay_is_added_to_the_total_and_a_finished_job_still_reads_n_of_n():
    odometer = Odometer()
    assert odometer.read("a.0", {"steps": 1000})["steps"] == 1000
    odometer.went_back(steps=420)  # the controller's count: batches applied after the cut
    # the shard restored to the cut (600): the step column carries on from 1,020, not from 600
    assert odometer.read("a.1", {"steps": 600})["steps"] == 1020
    assert odometer.baseline("steps") == 420
    end = odometer.read("a.1", {"steps": 1380})["steps"]
    p = Progress(EXTENT, taken=end, replayed=odometer.baseline("steps"), position=1380)
    assert (p.step, p.steps, p.epoch) == (900, 900, 30.0)
    line = describe(p, "ssp s=2", 1234.0, {"loss": 0.5, "staleness_mean": 0.8, "staleness_max": 3,
                                           "max_clock_gap": 2})
    assert line.startswith("[ssp s=2] step 900/900 (210 replayed, 0 left)  epoch 30/30  1,234 samples/s")


def test_the_odometer_never_goes_back_even_when_a_rollback_was_not_announced():
    odometer = Odometer({"steps": 50})  # a resumed job: its history ended at 50
    assert odometer.read("b.1", {"steps": 40})["steps"] == 50  # restored to 40: 10 go round again
    assert odometer.baseline("steps") == 10
    assert odometer.read("b.1", {"steps": 41})["steps"] == 51
    # rows of an older era read late keep their own baseline
    assert odometer.read("c.0", {"steps": 10})["steps"] == 51
    assert odometer.read("b.1", {"steps": 45})["steps"] == 55


def test_a_shard_writes_a_row_every_k_steps_and_forgets_the_rows_read():
    series = StepSeries(every=4)
    for n in range(1, 13):
        series.stepped(n, lambda: {"steps": {0: n}})
    rows = series.since(None)
    assert [r["steps"][0] for r in rows] == [4, 8, 12] and len({r["era"] for r in rows}) == 1
    assert [r["steps"][0] for r in series.since((series.process, rows[1]["id"]))] == [12]
    assert series.since(("another-process", 0)) == series.since(None)  # a new life: everything it has
    series.restored()
    series.stepped(16, lambda: {"steps": {0: 16}})
    assert series.since(None)[-1]["era"] != rows[0]["era"]


def _shard(every: int) -> ParameterShard:
    return ParameterShard(0, np.zeros(4, np.float32), [0, 1], OptimizerConfig(name="sgd", lr=0.1),
                          ScheduleConfig(), ConsistencyConfig(mode="asp"), history_every=every)


def test_the_shard_counts_steps_per_worker_and_its_rows_come_with_its_stats():
    async def go():
        shard = _shard(every=2)
        for clock in range(1, 4):
            for w in (0, 1):
                await shard.push(Step(w, clock, np.ones(4, np.float32), 0, num_samples=8, loss=0.5))
        stats = await shard.stats(rows=True)
        again = await shard.stats(rows=True, rows_after=(stats["era"].split(".")[0], stats["rows"][-1]["id"]))
        state = shard.state_dict()
        restored = _shard(every=2)
        restored.load_state_dict(state)
        return stats, again, await restored.stats()
    stats, again, restored = asyncio.run(go())
    assert stats["steps"] == {0: 3, 1: 3}
    assert [sum(r["steps"].values()) for r in stats["rows"]] == [2, 4, 6]
    assert [sum(r["samples"].values()) for r in stats["rows"]] == [16, 32, 48]
    assert again["rows"] == []
    assert restored["steps"] == {0: 3, 1: 3} and restored["era"] != stats["era"]


def _counts(steps: int, era: str = "p.0", rows: list | None = None) -> dict:
    return {"steps": {0: steps // 2, 1: steps - steps // 2}, "samples": {0: 16 * (steps // 2), 1: 16 * (steps - steps // 2)},
            "loss": {0: 0.5, 1: 0.4}, "staleness_mean": 0.5, "staleness_max": 1, "max_clock_gap": 1, "era": era,
            **({"rows": rows} if rows is not None else {})}


def test_the_monitor_records_rows_by_work_and_by_time_and_its_last_line_reads_n_of_n():
    out = io.StringIO()  # not a terminal: a line every 5 s, and the last one whatever the time
    monitor = Monitor(EXTENT, "ssp s=2", ProgressLine(out))
    monitor.start()
    rows = [{**_counts(n), "id": i, "time": monitor._wall0 + 0.01 * i} for i, n in enumerate(range(6, 1381, 6))]
    monitor.tick(_counts(600, rows=rows[:100]), t=1.0)  # the stats, read after its rows
    monitor.event("chaos", "chaos: SIGKILL of ps-shard-1")
    monitor.tick(_counts(1380, rows=rows[100:]), t=2.0)
    monitor.close()
    measured = [r for r in monitor.history if "event" not in r]
    assert len(measured) == len(rows) + 2
    steps = [r["step"] for r in measured]
    assert steps == sorted(steps) and steps[-1] == 690
    assert {r["by"] for r in measured} == {"steps", "time"}
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("[ssp s=2] step 690/690  epoch 30/30")
    assert any(line.endswith("chaos: SIGKILL of ps-shard-1") for line in lines)
    event = next(r for r in monitor.history if r.get("event") == "chaos")
    assert event["step"] == 300 and event["text"] == "chaos: SIGKILL of ps-shard-1"
    # the plots draw the event where it happened
    data = plot_data(monitor.history, "steps")
    assert data["events"] == [(300, "chaos", "chaos: SIGKILL of ps-shard-1")]
    assert data["x"] == steps


def test_rows_come_every_k_steps_so_a_short_job_gets_tens_and_a_long_one_hundreds():
    assert 1380 / default_history_every(EXTENT) >= 100  # the default job: a row every 6 of its 1,380 steps
    huge = Extent(batches=10_000_000, per_epoch=100_000, workers=8)
    assert 150 <= huge.batches / default_history_every(huge) <= 250
    assert default_history_every(Extent(batches=10, per_epoch=5, workers=2)) == 2  # a round of the workers


@pytest.mark.parametrize("key", ["eval_every_steps", "history_every_steps"])
def test_a_cadence_in_steps_is_auto_or_a_whole_number(key):
    with pytest.raises(ConfigError, match=f"{key} \\('often'\\) must be auto or an integer"):
        build(JobConfig, {key: "often"}, "job")
    with pytest.raises(ConfigError, match=f"{key} \\(2.5\\) must be an integer"):
        build(JobConfig, {key: 2.5}, "job")
    assert getattr(build(JobConfig, {key: 7}, "job"), key) == 7

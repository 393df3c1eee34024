"""A run directory holds plots and TensorBoard events, and psctl report draws them again."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rayps.launcher.cli import main
from rayps.launcher.job.report import PLOTS

pytestmark = [pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_run_leaves_plots_and_tensorboard_events_that_psctl_report_redraws(default_run, capsys):
    code, stdout = default_run.finished()  # the default job, psctl run in its own process (tests/default_run.py)
    assert code == 0, stdout[-3000:]
    run_dir = default_run.out
    summary = json.loads((run_dir / "summary.json").read_text())
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    rows = [row for row in history if "event" not in row]
    # by work as well as by time: tens of rows for a job of seconds, the step column rising to the summary's
    assert sum(row["by"] == "steps" for row in rows) >= 100
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps) and steps[-1] == summary["progress"]["step"] == 690
    assert rows[-1]["epoch"] == 30.0 and rows[-1]["global_step"] == 1380
    assert rows[-1]["test_accuracy"] == summary["test_accuracy"]
    assert sum(row.get("test_accuracy") is not None for row in rows) >= 4  # scored while training too
    cuts = [row for row in history if row.get("event") == "checkpoint"]
    assert len(cuts) >= 3 and all(row["step"] <= 690 for row in cuts)  # by steps, too (checkpoint.every_steps)
    for name in PLOTS:
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = events.Scalars("job/loss")
    assert [e.value for e in losses] == pytest.approx([row["loss"] for row in rows if row["loss"] is not None],
                                                      rel=1e-6)
    assert [e.step for e in losses] == [row["step"] for row in rows if row["loss"] is not None]
    # each event a line of text at its step (one text per step), and a count of its kind
    assert [e.step for e in events.Tensors("events/text_summary")] == sorted({row["step"] for row in cuts})
    assert [e.step for e in events.Scalars("events/checkpoint")] == sorted({row["step"] for row in cuts})
    assert events.Scalars("job/test_accuracy")[-1].value == pytest.approx(summary["test_accuracy"])
    assert {"worker-0/samples_per_s", "worker-1/samples_per_s"} <= set(events.Tags()["scalars"])

    for name in PLOTS:
        (run_dir / name).unlink()
    assert main(["report", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    for name in PLOTS:
        assert (run_dir / name).read_bytes()[:8] == PNG_MAGIC
        assert name in printed


def test_psctl_report_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run directory (no summary.json)" in capsys.readouterr().err

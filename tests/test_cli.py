"""psctl as a user runs it: the default job in its own process, and cluster.yaml with overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayps.launcher.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {
    "test_accuracy", "test_loss", "consistency", "staleness_bound", "max_clock_gap",
    "staleness_histogram", "steps", "pushes_applied", "pushes_dropped", "samples_per_s", "wall_s",
}


@pytest.mark.slow
def test_psctl_run_trains_the_default_job_past_the_accuracy_bar(default_run):
    """The newcomer's command, in a fresh process with its own local Ray and dashboard (tests/default_run.py:
    its workers slowed a little, so the dashboard test sees it running)."""
    code, stdout = default_run.finished()
    out = default_run.out
    assert code == 0, stdout[-6000:]
    assert "Ray dashboard: http://127.0.0.1:" in stdout
    progress = [line for line in stdout.splitlines() if line.startswith("[ssp s=2] step ")]
    assert progress and "samples/s" in progress[-1]  # the progress line, and its last line: the whole job
    assert progress[-1].startswith("[ssp s=2] step 690/690  epoch 30/30  "), progress
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["test_accuracy"] >= 0.95
    assert summary["consistency"] == "ssp" and summary["staleness_bound"] == 2
    assert 0 <= summary["max_clock_gap"] <= 2
    assert summary["steps"] == {"0": 690, "1": 690}
    assert summary["progress"] == {"step": 690, "steps": 690, "global_step": 1380, "global_steps": 1380,
                                   "replayed": 0, "epoch": 30.0, "epochs": 30.0}
    assert f"run directory: {out}" in stdout


@pytest.mark.ray
@pytest.mark.slow
def test_psctl_run_cluster_yaml_applies_command_line_overrides(ray_session, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "cluster.yaml"), "--set", "consistency.mode=bsp", "--set", "workers=3",
                 "--set", "epochs=3", "--output", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["consistency"] == "bsp" and summary["staleness_bound"] == 0
    assert sorted(summary["steps"]) == ["0", "1", "2"]
    config = json.loads((out / "config.json").read_text())
    assert config["workers"] == 3 and config["consistency"]["mode"] == "bsp"
    assert config["optimizer"]["name"] == "adam"  # the file's section, untouched by the overrides
    assert "test accuracy" in capsys.readouterr().out


def broken_model():
    raise RuntimeError("this model factory is broken\nsecond line of detail")


def test_an_unexpected_failure_is_one_line_with_the_log_that_holds_the_traceback(capsys):
    code = main(["run", "--set", "model=tests.test_cli:broken_model", "--no-dashboard"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("psctl: error: unexpected RuntimeError: this model factory is broken (log: ")
    log = Path(lines[0].rsplit("(log: ", 1)[1].rstrip(")"))
    text = log.read_text()
    assert "Traceback" in text and "second line of detail" in text and "broken_model" in text


@pytest.mark.ray
@pytest.mark.slow
def test_a_failed_job_is_one_line_naming_the_worker_with_its_log(ray_session, tmp_path, capsys):
    code = main(["run", "--set", "loss=tests.test_training:failing_loss", "--set", "epochs=1",
                 "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("psctl: error: worker-") and "loss exploded on purpose" in err[0]
    assert Path(err[0].rsplit("(log: ", 1)[1].rstrip(")")).is_file()

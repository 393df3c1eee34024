"""``psctl export`` on the default job's run: every variant meets its bar and loads back in a fresh process.

One module fixture trains the default job (digits, the 64-256-10 MLP, ssp s=2) and exports it with
every variant: 50% global magnitude pruning (no fine-tuning), filter pruning to half the hidden units
with 200 fine-tuning steps through the parameter servers, int8 (dynamic: the MLP has no convolutions)
and a 64-32-10 student distilled through the parameter servers, beside the same student on hard labels.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rayps.errors import ConfigError
from rayps.launcher import Job
from rayps.launcher.export.variants import export_run
from rayps.launcher.cli import main

from tests.local_runtime import local_runtime

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def exported(ray_session, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    with local_runtime() as runtime:  # the job to export trains on threads of this process: the export is checked
        Job().run(output=run, progress=False, dashboard=False, report=False, runtime=runtime)
    assert main(["export", str(run), "--all"]) == 0
    return run, json.loads((run / "export" / "report.json").read_text())


def test_the_run_and_its_export_hold_the_model_its_variants_and_a_report(exported):
    run, report = exported
    assert (run / "model.safetensors").exists() and json.loads((run / "model.json").read_text())["model"] == \
        "rayps.worker.models:mlp"
    out = run / "export"
    assert json.loads((out / "config.json").read_text())["model"] == "rayps.worker.models:mlp"
    assert set(report["variants"]) == {"teacher", "pruned", "filter_pruned", "int8", "student", "student_hard"}
    for name in report["variants"]:
        meta = json.loads((out / name / "model.json").read_text())
        assert (out / name / meta["weights"]).stat().st_size == report["variants"][name]["bytes"]
    table = (out / "report.md").read_text()
    assert "| teacher | 0.9" in table and "| int8 |" in table
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_variant_meets_its_bar(exported):
    _, report = exported
    v = report["variants"]
    teacher = v["teacher"]
    assert teacher["accuracy"] >= 0.95
    # 50% global magnitude pruning: at most 1 point lost, half the weights zero
    assert v["pruned"]["accuracy"] >= teacher["accuracy"] - 0.01
    assert v["pruned"]["nonzero_parameters"] <= 0.52 * teacher["parameters"]
    # half the hidden units, fine-tuned: at most 2 points lost, at most 0.6x the file
    assert v["filter_pruned"]["accuracy"] >= teacher["accuracy"] - 0.02
    assert v["filter_pruned"]["bytes"] <= 0.6 * teacher["bytes"]
    assert v["filter_pruned"]["parameters"] <= 0.51 * teacher["parameters"]
    # int8: within 1 point, under 0.35x the bytes
    assert abs(v["int8"]["accuracy"] - teacher["accuracy"]) <= 0.01
    assert v["int8"]["bytes"] < 0.35 * teacher["bytes"] and v["int8"]["quantization"] == "dynamic"
    # the student: at most half the teacher's parameters, within 2 points, better than hard labels alone
    assert v["student"]["parameters"] <= 0.5 * teacher["parameters"]
    assert v["student"]["accuracy"] >= teacher["accuracy"] - 0.02
    assert v["student"]["accuracy"] > v["student_hard"]["accuracy"]
    for row in v.values():
        assert row["latency_ms"] > 0


def test_each_variant_loads_back_in_a_fresh_process_with_the_reported_accuracy(exported):
    run, report = exported
    script = (
        "import json, sys, numpy as np, torch\n"
        "import rayps\n"
        "from rayps.worker.data.sources import resolve_data\n"
        "test = resolve_data('rayps.worker.datasets:digits', seed=0).test\n"
        "x, y = test.batch(np.arange(len(test)))\n"
        "out = {}\n"
        "for name in sys.argv[2:]:\n"
        "    model = rayps.load_model(sys.argv[1] + '/' + name)\n"
        "    with torch.no_grad():\n"
        "        out[name] = float((model(x).argmax(1) == y).float().mean())\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(run / "export"), *report["variants"]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, row in report["variants"].items():
        assert got[name] == pytest.approx(row["accuracy"], abs=1e-6), name  # float32 mean; 1 row is 2.8e-3


def mlp_with(act=torch.nn.ReLU):
    return torch.nn.Sequential(torch.nn.Linear(64, 16), act(), torch.nn.Linear(16, 10))


def test_a_model_taking_objects_finishes_its_job_and_export_says_why_it_cannot(ray_session, tmp_path):
    result = Job(model="tests.test_export_jobs:mlp_with", model_args={"act": torch.nn.Tanh}, epochs=2,
                 eval_every_s=0).run(output=tmp_path / "run", progress=False, dashboard=False, report=False)
    assert result.summary["test_accuracy"] > 0.5
    assert json.loads((tmp_path / "run" / "model.json").read_text())["model"] is None
    with pytest.raises(ConfigError, match="arguments that are not plain data"):
        export_run(tmp_path / "run")

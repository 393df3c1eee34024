"""What a run or model directory may run: rayps's bundled models and the user's own code, or anything once
the user trusts it (worker/trust.py, launcher/job/runcode.py).

Nothing here starts Ray: each test writes a run directory the way a job does (write_run_dir, save_run_model,
a checkpoint) and calls the loaders on it: ``load_model``, ``resumed_config``, ``export_run``, psctl.
A module "inside the run directory" is on sys.path as when one runs ``python -m rayps`` from within a
directory one was sent; the user's own project is on sys.path as an installed-editable project would be.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from rayps.errors import ConfigError, UntrustedCodeError
from rayps.launcher.cli import main
from rayps.launcher.export.config import ExportConfig
from rayps.launcher.export.variants import export_run
from rayps.launcher.job.config import JobConfig
from rayps.launcher.job.resume import resumed_config
from rayps.launcher.job.rundir import write_run_dir
from rayps.launcher.job.saved_model import load_model, save_model, save_run_model
from rayps.ps.core.checkpoint import CheckpointStore
from rayps.worker.compress.variants import ModelSpec
from rayps.worker.models import mlp

# A model factory, and data, as a module; on import it leaves a file "ran" beside itself, so a test can
# tell that refused code never ran.
MODULE = """\
from pathlib import Path
(Path(__file__).parent / "ran").write_text("imported")

from rayps.worker.datasets import digits
from rayps.worker.models import mlp


def net(hidden=(8,)):
    return mlp(hidden=hidden)


def data():
    return digits()
"""


@pytest.fixture
def module(monkeypatch):
    """``module(folder)``: a new module of MODULE in ``folder``, on sys.path; its name. Forgotten after."""
    names = []

    def make(folder: Path) -> str:
        name = f"trust_{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.py").write_text(MODULE)
        monkeypatch.syspath_prepend(str(folder))
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def write_run(run_dir: Path, **job) -> JobConfig:
    """What a job leaves: config.json (and summary, history), model.safetensors and model.json, a checkpoint."""
    config = JobConfig(**job)
    write_run_dir(run_dir, config, {"test_accuracy": 0.5})
    save_run_model(run_dir, mlp(**config.model_args), config)  # what net(hidden) and mlp() build
    CheckpointStore(run_dir / "checkpoints").write(1, {"part": {"x": np.zeros(2)}})
    return config


def test_a_model_whose_code_lives_in_its_directory_loads_only_when_trusted(tmp_path, module):
    where = tmp_path / "sent"
    name = module(where)  # the directory itself on sys.path: `python -m` from inside it
    torch.manual_seed(0)
    model = mlp(hidden=(8,))
    save_model(where, model, ModelSpec(f"{name}:net", {"hidden": [8]}), [])
    with pytest.raises(UntrustedCodeError) as refused:
        load_model(where)
    message = str(refused.value)
    assert f"model.json: model names '{name}:net'" in message and f"module {name!r} lives inside that directory" in message
    assert "--trust" in message and "trust=True" in message
    assert not (where / "ran").exists()  # refused before it was imported
    x = torch.randn(3, 64)
    model.eval()
    torch.testing.assert_close(load_model(where, trust=True)(x), model(x))
    assert (where / "ran").exists()


def test_a_model_of_the_users_own_project_loads_without_a_word(tmp_path, module):
    name = module(tmp_path / "project")
    save_model(tmp_path / "model", mlp(hidden=(8,)), ModelSpec(f"{name}:net", {"hidden": [8]}), [])
    assert load_model(tmp_path / "model")(torch.randn(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("spec", ["rayps.worker.models:mlp", "worker.models:mlp"])  # the old name too
def test_bundled_models_load_without_a_word(tmp_path, spec):
    save_model(tmp_path, mlp(), ModelSpec(spec), [])
    assert load_model(tmp_path)(torch.randn(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("spec, why", [
    ("os:system", "module 'os' is (part of Python itself|in Python's standard library)"),  # frozen in 3.11
    ("subprocess:run", "module 'subprocess' is in Python's standard library"),
    ("torch.hub:load", "module 'torch' is an installed package"),
    ("rayps.launcher.cli:main", "a part of rayps other than its bundled models"),
    ("rayps.worker.models:torch.hub.load", "goes through another module: module 'torch' is an installed package"),
    ("rayps.worker.models:mlp.__globals__", "'__globals__' is one of Python's internal attributes"),
])
def test_code_that_is_not_the_users_own_is_refused_whatever_its_arguments(tmp_path, spec, why):
    # what a file could name to run a command without shipping any code: a library function, arguments
    save_model(tmp_path, mlp(), ModelSpec(spec, {"command": f"touch {tmp_path / 'ran'}"}), [])
    with pytest.raises(UntrustedCodeError, match=why):
        load_model(tmp_path)
    assert not (tmp_path / "ran").exists()


def test_a_name_the_users_module_imported_from_elsewhere_is_not_its_own(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "trust_reexports.py").write_text("from os import system\nimport subprocess\n")
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    save_model(tmp_path / "m", mlp(), ModelSpec("trust_reexports:system"), [])
    with pytest.raises(UntrustedCodeError, match="'system' is imported from elsewhere"):
        load_model(tmp_path / "m")
    save_model(tmp_path / "m", mlp(), ModelSpec("trust_reexports:subprocess.run"), [])
    with pytest.raises(UntrustedCodeError, match="goes through another module"):
        load_model(tmp_path / "m")
    sys.modules.pop("trust_reexports", None)


def test_resume_runs_the_code_config_json_names_only_when_trusted(tmp_path, module, capsys):
    run_dir = tmp_path / "run"
    name = module(run_dir)
    write_run(run_dir, model=f"{name}:net", model_args={"hidden": [8]}, data={"train": f"{name}:data"})
    with pytest.raises(UntrustedCodeError, match=f"config.json: (model|data.train) names '{name}:"):
        resumed_config(run_dir)
    assert not (run_dir / "ran").exists()
    assert resumed_config(run_dir, trust=True).model == f"{name}:net"
    # what the user names with --set is the user's own: only the file's names left in the job are checked
    with pytest.raises(UntrustedCodeError, match=r"config.json: data.train names"):
        resumed_config(run_dir, ["model=rayps.worker.models:mlp"])
    config = resumed_config(run_dir, ["model=rayps.worker.models:mlp", "data=rayps.worker.datasets:digits"])
    assert config.model == "rayps.worker.models:mlp" and not (run_dir / "ran").exists()
    # psctl: one line that says what to do, exit 2, before anything starts
    assert main(["run", "--resume", str(run_dir), "--no-dashboard"]) == 2
    err = capsys.readouterr().err
    assert "psctl: error:" in err and "psctl run --resume RUN_DIR --trust" in err
    assert main(["run", "--trust"]) == 2
    assert "--trust is for --resume RUN_DIR" in capsys.readouterr().err


def test_resume_of_a_run_of_bundled_or_own_code_needs_no_word(tmp_path, module):
    write_run(tmp_path / "bundled")
    assert resumed_config(tmp_path / "bundled").model == "rayps.worker.models:mlp"
    name = module(tmp_path / "project")
    write_run(tmp_path / "own", model=f"{name}:net", loss="rayps.worker.loop.losses:mse",
              data={"train": f"{name}:data", "test": "rayps.worker.datasets:digits"})
    assert resumed_config(tmp_path / "own").model == f"{name}:net"


def test_export_runs_the_run_directorys_code_only_when_trusted(tmp_path, module, capsys):
    run_dir = tmp_path / "run"
    name = module(run_dir)
    write_run(run_dir, model=f"{name}:net", model_args={"hidden": [8]})
    fast = ExportConfig(latency_batch=8, latency_repeats=1)
    with pytest.raises(UntrustedCodeError, match=f"model.json: model names '{name}:net'"):
        export_run(run_dir, fast)
    assert not (run_dir / "ran").exists() and not (run_dir / "export").exists()
    assert main(["export", str(run_dir)]) == 2
    assert "psctl export RUN_DIR --trust" in capsys.readouterr().err
    report = export_run(run_dir, fast, trust=True)
    assert set(report["variants"]) == {"teacher"} and (run_dir / "ran").exists()


def test_export_checks_the_data_and_loss_config_json_names_too(tmp_path, module):
    run_dir = tmp_path / "run"
    name = module(run_dir)
    write_run(run_dir, data=f"{name}:data")  # a bundled model, the run directory's own data
    with pytest.raises(UntrustedCodeError, match=f"config.json: data names '{name}:data'"):
        export_run(run_dir)
    assert not (run_dir / "ran").exists()
    (run_dir / "config.json").write_text(json.dumps({**json.loads((run_dir / "config.json").read_text()),
                                                     "data": "rayps.worker.datasets:digits", "loss": "os:system"}))
    with pytest.raises(UntrustedCodeError, match="config.json: loss names 'os:system'"):
        export_run(run_dir)


def test_a_module_that_is_nowhere_is_the_import_error_it_always_was(tmp_path):
    save_model(tmp_path, mlp(), ModelSpec("trust_nowhere_at_all:net"), [])
    with pytest.raises(ConfigError, match="cannot import module 'trust_nowhere_at_all'") as raised:
        load_model(tmp_path)
    assert not isinstance(raised.value, UntrustedCodeError)  # --trust would not help: nothing to trust

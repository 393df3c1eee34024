"""The built wheel, installed into a fresh virtual environment, is one package: rayps.

The environment gets the wheel and nothing else of this project; its third-party
dependencies (torch, Ray, ...) are borrowed from the running interpreter by a
path file, which adds their folder to sys.path without running any of its path
hooks, so the editable install of this checkout stays out of it.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.test_readme import readme_example

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "__init__.py", "__main__.py", "errors.py", "settings.py", "runtime.py",
           "ps", "worker", "protos", "launcher")

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:  # a copy: building writes build/ and egg-info where it runs
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, timeout=300, capture_output=True)
    (found,) = out.glob("rayps-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "borrowed-dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--ignore-installed", "-q", str(wheel)], check=True, timeout=300, capture_output=True)
    return env


def in_venv(env: Path, code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    return subprocess.run([str(env / "bin" / "python"), "-c", code], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"rayps", "rayps-0.1.0.dist-info"}
    top_level = zipfile.ZipFile(wheel).read("rayps-0.1.0.dist-info/top_level.txt").decode().split()
    assert top_level == ["rayps"]
    for module in ("rayps/ps/shard.py", "rayps/worker/loop/trainer.py", "rayps/launcher/cli.py",
                   "rayps/protos/ps_pb2.py", "rayps/protos/ps.proto", "rayps/errors.py", "rayps/settings.py"):
        assert module in names


def test_installed_it_imports_as_rayps_and_no_old_name_exists(venv, tmp_path):
    probe = in_venv(venv, (
        "import importlib.util, rayps, rayps.ps.shard, rayps.worker.loop.trainer\n"
        "print(rayps.__file__)\n"
        "print(rayps.Job.__module__, rayps.JobConfig.__module__, rayps.JobResult.__module__)\n"
        "print([n for n in ('ps', 'worker', 'protos', 'launcher') if importlib.util.find_spec(n)])\n"
    ), tmp_path)
    assert probe.returncode == 0, probe.stderr
    where, modules, old_names = probe.stdout.splitlines()
    assert Path(where).is_relative_to(venv)  # the wheel's copy, not this checkout
    assert modules == "rayps.launcher.job.api rayps.launcher.job.config rayps.launcher.job.driver"
    assert old_names == "[]"
    failed = in_venv(venv, "import ps", tmp_path)
    assert failed.returncode != 0 and "No module named 'ps'" in failed.stderr
    cli = subprocess.run([str(venv / "bin" / "python"), "-m", "rayps", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert cli.returncode == 0 and "psctl" in cli.stdout
    assert (venv / "bin" / "psctl").is_file()


def test_the_readme_example_trains_from_the_installed_wheel(venv, tmp_path):
    code = readme_example() + (
        "\nimport rayps as _r, pathlib as _p\n"
        "assert _p.Path(_r.__file__).is_relative_to(_p.Path(__import__('sys').prefix))\n"
    )
    proc = in_venv(venv, code, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    accuracy = float(proc.stdout.strip().splitlines()[-1].split()[0])
    assert accuracy >= 0.9
    assert list((tmp_path / "runs").glob("*/summary.json"))

"""The Python examples of the README and the docs pages run as written and train to what they promise.

tests/test_docs.py runs every other code block; the examples here are checked
for the values a reader would look at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SPARSE = ROOT / "docs" / "sparse.md"
DATA = ROOT / "docs" / "data.md"
#: The examples checked here, by page and heading (tests/test_docs.py leaves them to these tests).
CHECKED = ((README, "## Python API"), (README, "## A loop of your own"), (SPARSE, "# Sparse embedding tables"), (DATA, "## The data section"))


def readme_example(heading: str = "## Python API", page: Path = README) -> str:
    """The first Python block after ``heading`` on ``page``."""
    section = ("\n" + page.read_text()).split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_example(heading: str, tmp_path, monkeypatch, page: Path = README) -> dict:
    """Run a section's Python example in ``tmp_path`` (examples write runs/ and data/ under the working
    directory); the names it defined."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(readme_example(heading, page), str(page), "exec"), namespace)
    return namespace


@pytest.mark.ray
@pytest.mark.slow
def test_readme_python_example_trains_to_high_accuracy(ray_session, tmp_path, monkeypatch):
    result = run_example("## Python API", tmp_path, monkeypatch)["result"]
    assert result.summary["test_accuracy"] >= 0.9
    assert (result.run_dir / "summary.json").is_file()
    assert result.run_dir.is_relative_to(tmp_path)


@pytest.mark.ray
@pytest.mark.slow
def test_readme_own_loop_example_trains_and_reports(ray_session, tmp_path, monkeypatch):
    example = readme_example("## A loop of your own")
    assert len(example.strip().splitlines()) < 20  # the quick start stays short
    result = run_example("## A loop of your own", tmp_path, monkeypatch)["result"]
    assert result.summary["test_accuracy"] >= 0.9
    assert any(r.get("by") == "report" and "loss" in r for r in result.history)
    assert result.run_dir.is_relative_to(tmp_path)


@pytest.mark.ray
@pytest.mark.slow
def test_the_sparse_example_trains_near_the_true_click_models_auc(ray_session, tmp_path, monkeypatch):
    s = run_example("# Sparse embedding tables", tmp_path, monkeypatch, SPARSE)["result"].summary
    assert s["test_auc"] >= 0.95 * s["reference_auc"], (s["test_auc"], s["reference_auc"])
    assert s["sparse_tables"]["deep"]["rows"] > 0 and s["sparse_tables"]["wide"]["rows"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_the_data_example_counts_the_injected_defects_and_trains(ray_session, tmp_path, monkeypatch):
    namespace = run_example("## The data section", tmp_path, monkeypatch, DATA)
    s, truth = namespace["result"].summary, namespace["truth"]
    assert s["data"]["filled"] == truth["missing"] and s["data"]["clipped"] == truth["outliers"]
    assert len(s["data"]["features"]["out"]) == 6 and s["test_accuracy"] >= 0.8
    assert namespace["kept"].all() and namespace["inputs"].shape == (5, 6)

"""bench.json says which command at which commit made its rows, and its tables render again from it.

No bench runs here: the rows are made by hand, in the form ``psctl bench``
writes them (launcher/bench/runner.py) and in the older bare list.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import rayps
from rayps.launcher.bench.runner import Row, bench_record, checkout_commit, table, transport_table
from rayps.launcher.bench.tables import load_bench, main, render, updated

ROWS = [
    Row("small", "rayps asp, shm", 60_000.0, {"x_ddp": 1.2, "x_raydocs": 3.0, "x_ceiling": 0.4, "overhead_ms": 2.5}),
    Row("small", "PyTorch DDP (gloo)", 50_000.0, {"x_ddp": 1.0, "x_raydocs": 2.5, "x_ceiling": 0.33,
                                                  "overhead_ms": 3.0}),
    Row("transport", "push + pull through shm", 2.5, {"ms": 80.0, "x_memcpy": 0.4}),
]


def test_bench_json_records_the_command_the_commit_and_the_date(tmp_path):
    record = bench_record(ROWS, "psctl bench --quick")
    assert record["command"] == "psctl bench --quick"
    assert record["rows"] == [r.__dict__ for r in ROWS]
    assert len(record["date"]) == len("2026-12-01T20:59:09Z") and record["date"].endswith("Z")
    root = Path(rayps.__file__).resolve().parent
    top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == root:  # run from a checkout
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert record["commit"] == head
    else:  # an installed copy: no commit to name
        assert record["commit"] is None
    assert checkout_commit() == record["commit"]


def test_a_bench_json_renders_the_tables_the_bench_printed(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench_record(ROWS, "psctl bench --models small")))
    bench = load_bench(path)
    speed = render(bench, "speed")
    assert speed.startswith(table(ROWS[:2]) + "\n\n")
    assert speed.endswith(f"\n\n{bench.provenance()}\n")
    assert bench.provenance().startswith("Measured by `psctl bench --models small` at ")
    assert render(bench, "transport").startswith(transport_table(ROWS[2:]))
    with pytest.raises(ValueError, match="no sparse rows"):
        render(bench, "sparse")


def test_an_older_bench_json_a_bare_list_of_rows_still_reads(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([r.__dict__ for r in ROWS]))
    bench = load_bench(path)
    assert [r.system for r in bench.rows] == [r.system for r in ROWS] and bench.command is None
    assert main([str(path), "--table", "speed"]) == 0
    out = capsys.readouterr().out
    assert "| small | rayps asp, shm | 60,000 | 1.20 | 3.00 | 0.40 | 2.50 |" in out
    assert "Measured by an unrecorded command at an unrecorded commit." in out


def test_update_rewrites_only_what_the_markers_hold(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "b.json").write_text(json.dumps(
        {"command": "psctl bench", "commit": "abc1234", "date": "2026-12-01", "rows": [r.__dict__ for r in ROWS]}))
    page = tmp_path / "page.md"
    page.write_text("# Results\n\n<!-- bench-table: results/b.json transport -->\nstale\n<!-- /bench-table -->\n\nafter\n")
    assert main(["--update", str(page)]) == 0
    text = page.read_text()
    assert "stale" not in text and text.startswith("# Results\n\n<!-- bench-table: results/b.json transport -->\n")
    assert "| push + pull through shm | 80.0 | 2.50 | 0.40 |" in text
    assert "Measured by `psctl bench` at commit abc1234 on 2026-12-01." in text
    assert text.endswith("<!-- /bench-table -->\n\nafter\n") and updated(page) == text


def test_psctl_bench_hands_its_own_command_line_to_bench_json(monkeypatch, tmp_path, capsys):
    from rayps.launcher import cli
    from rayps.launcher.bench import runner

    seen = {}

    def run_bench(*args, command=None, **keys):  # the bench itself is never run here
        seen["command"] = command
        (tmp_path / "bench.md").write_text("| table |\n")
        return tmp_path, []

    monkeypatch.setattr(runner, "run_bench", run_bench)
    assert cli.main(["bench", "--quick", "--modes", "ssp s=1,bsp", "--output", str(tmp_path)]) == 0
    assert seen["command"] == f"psctl bench --quick --modes 'ssp s=1,bsp' --output {tmp_path}"
    assert "| table |" in capsys.readouterr().out

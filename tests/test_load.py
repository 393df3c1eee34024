"""benchmarks/load.py, cut short: one shard under 1 and 4 clients, over each transport.

Speed is never asserted (2 shared cores make timings noise); what must hold
under any load is: every push answered OK and APPLIED, and the shard's
version moved by exactly the pushes its clients counted (asp: one update per
push, none lost, none applied twice). The docs' table is the one its JSON
file renders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import load
from benchmarks.load import load_rows, load_table

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_every_push_under_load_is_applied_once_and_none_is_refused(transport):
    rows = load_rows([transport], clients=(1, 4), seconds=0.5)
    assert [(r["transport"], r["clients"]) for r in rows] == [(transport, 1), (transport, 4)]
    for r in rows:
        assert r["pushes"] > 0 and r["pushes_per_s"] > 0
        assert (r["errors"], r["first_error"], r["rejected"], r["duplicates"]) == (0, None, {}, 0)
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["version_after"] - r["version_before"] == r["pushes"]
        assert r["rss_before_mb"] > 0 and r["rss_after_mb"] > 0 and r["server_cpu_pct"] > 0
    assert rows[1]["version_before"] == rows[0]["version_after"]  # the 4 clients carried on where it stood
    assert f"| {transport} | 4 |" in load_table(rows)


def test_a_push_the_shard_refuses_is_counted_as_an_error(monkeypatch):
    class SkipsASeq(load.GrpcClient):
        async def open(self):
            await super().open()
            self.seq += 1  # its first push skips a seq: FAILED_PRECONDITION, nothing applied

    monkeypatch.setitem(load.CLIENT_CLASSES, "grpc", SkipsASeq)
    (row,) = load_rows(["grpc"], clients=(2,), seconds=0.3)
    assert (row["errors"], row["pushes"], row["version_after"]) == (2, 0, 0)
    assert "FAILED_PRECONDITION" in row["first_error"]
    assert "| grpc | 2 | 0 | – | – | 2 | yes |" in load_table([row])


def test_the_docs_load_table_is_what_its_json_renders():
    page = (ROOT / "docs" / "results.md").read_text()
    (name,) = re.findall(r"results/(load-\w+\.json)", page)
    record = json.loads((ROOT / "docs" / "results" / name).read_text())
    assert record["command"] in page and f"commit {record['commit']}" in page
    assert load_table(record["rows"]) in page, f"docs/results.md differs from docs/results/{name}"

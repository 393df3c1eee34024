"""``psctl bench --table-memory 10,50,100``: rows/s of a sparse table whose shards keep part of it in memory.

The sparse rows' workload (sparse.py: a 10M x 16 table, 4,096 Zipf ids a
batch, Adam), 2 workers and 2 shards over shared memory. First the table
whole in memory, which measures the hot set: the rows the job makes and what
each shard holds allocated for them. Then, for each percentage, the same job
with every shard's ``memory_mb`` at that share of what it held: the other rows
go to its local disk and come back when asked (ps/sparse/tiers.py). Beside
them, the same lookups and updates in one torch process, the table whole in
memory. Every system runs ``repeats`` times, interleaved, and its row is the
run of median rows/s.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from ..job.api import Job
from .rows import Row
from .sparse import BAG, BAGS, ROWS, BagModel, bench_data, median_run, single_process


def tiered_run(steps: int, out: Path, memory_mb: float | None, rows: int = ROWS, eviction: str = "lru") -> dict:
    s = Job(model=functools.partial(BagModel, rows),
            data=functools.partial(bench_data, steps, workers=2, rows=rows), loss="mse",
            optimizer={"name": "adam", "lr": 0.01},
            sparse={"optimizer": {"name": "adam", "lr": 0.01}, "init_scale": 0.01, "consistency": {"mode": "asp"},
                    "memory_mb": memory_mb, "eviction": eviction},
            consistency={"mode": "asp"}, workers=2, servers=2, batch_size=BAGS, epochs=1, eval_every_s=0,
            checkpoint={"every_steps": None}, transport="shm",
            ).run(output=out, progress=False, dashboard=False, report=False).summary
    table = s["sparse_tables"]["bag"]
    return {"rows_per_s": s["steady_samples_per_s"] * BAG, "rows": table["rows"], "bytes": table["bytes"],
            "bytes_per_shard": max(table["bytes_per_shard"].values()),
            "read_from_disk": table.get("rows_read_from_disk", 0), "written_to_disk": table.get("rows_written_to_disk", 0),
            "memory_rows": table.get("memory_rows", table["rows"]),
            "shard_peak_rss_mb": s.get("shard_peak_rss_mb")}


def tier_rows(out: Path, percents: list[int], steps: int = 300, repeats: int = 3, rows: int = ROWS) -> list[Row]:
    whole = tiered_run(steps, out / "measure", None, rows)
    hot_mb = whole["bytes_per_shard"] / 2**20  # what a shard held for its part of the hot set
    runs: dict[str, list[dict]] = {"single": [], **{str(p): [] for p in percents}}
    for attempt in range(repeats):
        runs["single"].append(single_process(steps, rows))
        for p in percents:
            mb = None if p >= 100 else hot_mb * p / 100
            runs[str(p)].append(tiered_run(steps, out / f"try{attempt}-{p}", mb, rows))
    base, spread = median_run(runs["single"])
    out_rows = [Row("tiers", "torch EmbeddingBag(sparse) + SparseAdam, one process", base["rows_per_s"],
                    {"x_single": 1.0, "runs": spread, "config": f"the table whole in memory, median of {repeats}"})]
    for p in percents:
        r, spread = median_run(runs[str(p)])
        budget = "unlimited (the hot set fits)" if p >= 100 else f"{hot_mb * p / 100:.1f} MB per shard"
        out_rows.append(Row("tiers", f"rayps, memory {p}% of the hot set", r["rows_per_s"],
                            {"x_single": r["rows_per_s"] / base["rows_per_s"], "runs": spread, "rows": r["rows"],
                             "memory_rows": r["memory_rows"], "read_from_disk": r["read_from_disk"],
                             "written_to_disk": r["written_to_disk"], "shard_peak_rss_mb": r["shard_peak_rss_mb"],
                             "config": f"2 workers, 2 shards, shm, asp, row Adam, memory_mb {budget}, lru,"
                                       f" median of {repeats}"}))
        print(f"  {out_rows[-1].system}: {r['rows_per_s']:,.0f} rows/s (runs: {spread})", flush=True)
    return out_rows


def tier_table(rows: list[Row]) -> str:
    lines = ["| system (10M x 16 table, 4,096 Zipf ids per batch) | rows/s | x one process | rows in memory / held"
             " | rows read from disk | configuration |", "|---|---|---|---|---|---|"]
    for r in rows:
        held = f"{r.extra['memory_rows']:,} / {r.extra['rows']:,}" if "rows" in r.extra else ""
        read = f"{r.extra['read_from_disk']:,}" if "read_from_disk" in r.extra else ""
        lines.append(f"| {r.system} | {r.samples_per_s:,.0f} | {r.extra['x_single']:.2f} | {held} | {read} |"
                     f" {r.extra.get('config', '')} |")
    return "\n".join(lines)


def run_tier_bench(percents: list[int], output: str | Path | None, command: str,
                   steps: int | None = None) -> tuple[Path, list[Row]]:
    """The memory-tier rows alone, written as ``psctl bench`` writes its others (bench.json, bench.md)."""
    from .runner import bench_record

    began = time.gmtime()
    out = Path(output or f"runs/bench-tiers-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rows = tier_rows(out / "jobs", percents, steps or 300)
    (out / "bench.md").write_text(tier_table(rows) + "\n")
    (out / "bench.json").write_text(json.dumps(bench_record(rows, command, began), indent=2))
    return out, rows

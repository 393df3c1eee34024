"""The sparse-table rows of ``psctl bench``: embedding rows pulled and pushed per second.

Workload: a 10M x 16 table, batches of 4,096 ids (512 bags of 8, ids drawn
from a Zipf law with exponent 1.1 over the whole table, seeded), Adam on the
touched rows, a sum-mode EmbeddingBag followed by a linear head.

- rayps: a real job, 2 workers and 2 shards, through each transport; rows/s is
  the ids looked up (and their gradients pushed) per second, summed over the
  workers after their first tenth of steps.
- the same lookups and updates in one process: ``torch.nn.EmbeddingBag(sparse=
  True)`` and ``torch.optim.SparseAdam`` (the head on plain Adam), the table
  whole in memory.

Server memory per row is what the shards hold allocated for the table divided
by the rows they created: the rows (weights, Adam's two moments, the step
count, the id, the step last seen) and the index (4 bytes per possible row).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..job.api import Job
from ...worker.loop.embedding import EmbeddingBag
from .rows import Row

ROWS, DIM, BAG, BAGS = 10_000_000, 16, 8, 512  # 512 bags of 8 ids: 4,096 ids per batch
ZIPF = 1.1


def zipf_ids(n: int, rows: int = ROWS, exponent: float = ZIPF, seed: int = 0) -> np.ndarray:
    """``n`` ids in [0, rows), Zipf-ranked with the ranks shuffled over the ids (numpy, seeded)."""
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(exponent, size=n * 2)
    ranks = ranks[ranks <= rows][:n] - 1
    while len(ranks) < n:  # the law's tail beyond the table: draw again
        more = rng.zipf(exponent, size=n)
        ranks = np.concatenate([ranks, more[more <= rows] - 1])[:n]
    # a fixed odd multiplier mod rows spreads hot ranks over ids (and so over shards) without a table
    return (ranks.astype(np.int64) * 2_654_435_761) % rows


class BagModel(nn.Module):
    def __init__(self, rows: int = ROWS, dim: int = DIM):
        super().__init__()
        self.bag = EmbeddingBag(rows, dim, mode="sum", table="bag")
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.bag(x)).squeeze(1)


@dataclass(frozen=True)
class SparseRun:
    """How much of the sparse workload a bench runs: steps per worker, runs per system, the table's rows."""

    steps: int = 300
    repeats: int = 3
    table_rows: int = ROWS


def bench_data(steps: int, workers: int = 2, rows: int = ROWS) -> dict:
    n = steps * workers * BAGS
    x = zipf_ids(n * BAG, rows).reshape(n, BAG)
    y = np.random.default_rng(1).random(n).astype(np.float32)
    return {"train": (x, y)}


def single_process(steps: int, rows: int = ROWS) -> dict:
    """The same lookups and updates with torch alone: EmbeddingBag(sparse=True) and SparseAdam."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = bench_data(steps, workers=1, rows=rows)["train"]
    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    bag = nn.EmbeddingBag(rows, DIM, mode="sum", sparse=True)
    head = nn.Linear(DIM, 1)
    sparse, dense = torch.optim.SparseAdam(bag.parameters(), lr=0.01), torch.optim.Adam(head.parameters(), lr=0.01)
    times = []
    for step in range(steps):
        began = time.perf_counter()
        xb, yb = x[step * BAGS:(step + 1) * BAGS], y[step * BAGS:(step + 1) * BAGS]
        sparse.zero_grad()
        dense.zero_grad()
        loss = nn.functional.mse_loss(head(bag(xb)).squeeze(1), yb)
        loss.backward()
        sparse.step()
        dense.step()
        times.append(time.perf_counter() - began)
    steady = times[len(times) // 10:]
    return {"rows_per_s": BAGS * BAG * len(steady) / sum(steady), "table_bytes": 3 * rows * DIM * 4}


def rayps_rows(steps: int, transport: str, out: Path, rows: int = ROWS, workers: int = 2, servers: int = 2,
               **placement) -> dict:
    """One sparse job; ``placement``: the job's resource keys (the namespace cluster's rows place shards and
    workers by them)."""
    s = Job(model=functools.partial(BagModel, rows),
            data=functools.partial(bench_data, steps, workers=workers, rows=rows), loss="mse",
            optimizer={"name": "adam", "lr": 0.01},
            sparse={"optimizer": {"name": "adam", "lr": 0.01}, "init_scale": 0.01, "consistency": {"mode": "asp"}},
            consistency={"mode": "asp"}, workers=workers, servers=servers, batch_size=BAGS, epochs=1,
            eval_every_s=0, checkpoint={"every_steps": None}, transport=transport, **placement,
            ).run(output=out / f"sparse-{transport}", progress=False, dashboard=False, report=False).summary
    table = s["sparse_tables"]["bag"]
    return {"rows_per_s": s["steady_samples_per_s"] * BAG, "transport": s["transport"], "rows": table["rows"],
            "bytes": table["bytes"], "bytes_per_row": table["bytes"] / max(1, table["rows"]),
            "unique_per_batch": table["rows_pulled"] / max(1, sum(int(v) for v in s["steps"].values())),
            "shards_over_shm": s.get("shards_over_shm")}


def sparse_rows(out: Path, steps: int = 300, transports=("shm", "grpc", "ray"), table_rows: int = ROWS,
                repeats: int = 3):
    """Rows for the bench table (``table_rows``: smaller for a quick check of the machinery). Every system
    runs ``repeats`` times, interleaved (the single process, then each transport, then again), and its
    row is the run of median rows/s: on this machine the single process alone has ranged 0.72M to 1.49M
    rows/s (docs/results.md), so one run each could not tell which side moved."""
    runs: dict[str, list[dict]] = {"single": [], **{name: [] for name in transports}}
    for attempt in range(repeats):
        runs["single"].append(single_process(steps, table_rows))
        for name in transports:
            runs[name].append(rayps_rows(steps, name, out / f"try{attempt}", table_rows))
    base, spread = median_run(runs["single"])
    rows = [Row("sparse", "torch EmbeddingBag(sparse) + SparseAdam, one process", base["rows_per_s"],
                {"x_single": 1.0, "bytes_per_row": base["table_bytes"] / table_rows, "runs": spread,
                 "config": f"1 process, {BAGS} bags of {BAG} ids a step, SparseAdam lr 0.01, all rows allocated,"
                           f" median of {repeats}"})]
    for name in transports:
        r, spread = median_run(runs[name])
        rows.append(Row("sparse", f"rayps, 2 workers x 2 shards, {r['transport']}", r["rows_per_s"],
                        {"x_single": r["rows_per_s"] / base["rows_per_s"], "bytes_per_row": r["bytes_per_row"],
                         "rows": r["rows"], "unique_per_batch": r["unique_per_batch"], "runs": spread,
                         "config": f"2 workers, 2 shards, {r['transport']}, asp, {BAGS} bags of {BAG} ids a step"
                                   f" per worker, row Adam lr 0.01, rows made when first touched, median of"
                                   f" {repeats}"}))
        print(f"  {rows[-1].system}: {r['rows_per_s']:,.0f} rows/s (runs: {spread})", flush=True)
    return rows


def median_run(runs: list[dict]) -> tuple[dict, list[int]]:
    """The run of median rows/s, and every run's rows/s (rounded) in the order they ran."""
    ranked = sorted(runs, key=lambda r: r["rows_per_s"])
    return ranked[(len(ranked) - 1) // 2], [round(r["rows_per_s"]) for r in runs]


def sparse_table(rows) -> str:
    lines = ["| system (10M x 16 table, 4,096 Zipf ids per batch) | rows/s | x one process | bytes per row held"
             " | configuration |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.system} | {r.samples_per_s:,.0f} | {r.extra['x_single']:.2f} |"
                     f" {r.extra['bytes_per_row']:,.0f} | {r.extra.get('config', '')} |")
    return "\n".join(lines)

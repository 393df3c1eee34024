"""How cost grows: a step's overhead against the number of shards and of workers, one shard under 1 to 64 clients.

- **Shards** (1 to 8, 2 workers) and **workers** (1 to 8, 2 shards): the
  bench's small model over shared memory, asp and bsp. A step's overhead is
  its time (workers x batch / samples/s) less the time of the same number of
  processes training with no communication at all (the ceiling, measured in
  the same run): on a 2-core machine 8 workers share 2 cores whatever the
  system, so only what the parameter server adds is counted.
- **Clients** (1 to 64): one shard in a process of its own under clients
  that push small gradients as fast as they can, over gRPC and shm
  (``benchmarks/load.py``, run as a command; its rows say pushes/s and
  latency per client count).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from . import peers
from .rows import BATCH, LR, Row, bench_job, model_fn, rayps_config
from ..job.driver import run_job
from ...worker.datasets import synthetic_mnist

COUNTS = (1, 2, 4, 8)
HIDDEN, STEPS = (256,), 300
CLIENTS = (1, 2, 4, 8, 16, 32, 64)
LOAD_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"


def cost_rows(out: Path, steps: int = STEPS, counts=COUNTS, clients=CLIENTS, load_seconds: float = 2.0) -> list[Row]:
    net = model_fn(HIDDEN)
    ceilings = {n: peers.processes(net, synthetic_mnist, n, BATCH, LR, steps, communicate=False)["samples_per_s"]
                for n in sorted({*counts, 2})}
    rows = []
    for axis, n, workers, servers in ([("shards", n, 2, n) for n in counts] + [("workers", n, n, 2) for n in counts]):
        for mode in ("asp", "bsp"):
            config = bench_job(HIDDEN, steps, {"mode": mode}, transport="shm", workers=workers, servers=servers)
            s = run_job(config, output=out / f"cost-{axis}{n}-{mode}", dashboard=False, report=False).summary
            sps = s["steady_samples_per_s"]
            step_ms, ceiling_ms = 1000 * workers * BATCH / sps, 1000 * workers * BATCH / ceilings[workers]
            rows.append(Row("cost", f"{workers} workers, {servers} shards, {mode}", sps, {
                "axis": axis, "n": n, "mode": mode, "step_ms": step_ms, "ceiling_ms": ceiling_ms,
                "overhead_ms": step_ms - ceiling_ms, "config": rayps_config(config, s["transport"])}))
            print(f"  cost: {rows[-1].system}: {sps:,.0f} samples/s, overhead {step_ms - ceiling_ms:.2f} ms/step",
                  flush=True)
    return rows + load_cost_rows(clients, load_seconds)


def load_cost_rows(clients=CLIENTS, seconds: float = 2.0) -> list[Row]:
    """One shard's pushes/s against its clients (benchmarks/load.py, as a command of its own)."""
    if not LOAD_SCRIPT.is_file():
        print(f"  cost: {LOAD_SCRIPT} is not in this installation; the clients' rows are left out", flush=True)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "load.json"
        subprocess.run([sys.executable, str(LOAD_SCRIPT), "--clients", ",".join(map(str, clients)),
                        "--seconds", str(seconds), "--json", str(record)], check=True, stdout=subprocess.DEVNULL)
        loaded = json.loads(record.read_text())["rows"]
    return [Row("cost", f"one shard, {r['clients']} clients, {r['transport']}", r["pushes_per_s"], {
        "axis": "clients", "n": r["clients"], "transport": r["transport"], "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"], "errors": r["errors"],
        "config": f"{r['transport']}, 1,000 float32, asp, SGD, {seconds:g} s per count, clients on one event loop"})
        for r in loaded]


def cost_table(rows: list[Row]) -> str:
    lines = ["| grows with | n | system | samples/s (clients: pushes/s) | ms/step | ceiling ms/step | overhead ms/step"
             " (clients: p50 / p99 ms) | configuration |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r.extra
        if e["axis"] == "clients":
            timing = f" | | | {e['p50_ms'] or 0:.2f} / {e['p99_ms'] or 0:.2f}"
        else:
            timing = f" | {e['step_ms']:.2f} | {e['ceiling_ms']:.2f} | {e['overhead_ms']:.2f}"
        lines.append(f"| {e['axis']} | {e['n']} | {r.system} | {r.samples_per_s:,.0f}{timing} | {e.get('config', '')} |")
    return "\n".join(lines)


def cost_axes(rows: list[Row], axes) -> None:
    """The curves, on three matplotlib axes: overhead against shards, against workers; pushes/s against clients."""
    for ax, axis in zip(axes, ("shards", "workers", "clients")):
        mine = [r for r in rows if r.extra.get("axis") == axis]
        for series in sorted({r.extra.get("mode") or r.extra.get("transport") for r in mine}):
            points = sorted((r.extra["n"], r.samples_per_s if axis == "clients" else r.extra["overhead_ms"])
                            for r in mine if series in (r.extra.get("mode"), r.extra.get("transport")))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=series)
        ax.set_xscale("log", base=2)
        ax.set_xlabel({"shards": "shards (2 workers)", "workers": "workers (2 shards)", "clients": "clients"}[axis])
        ax.set_ylabel("pushes/s" if axis == "clients" else "overhead ms/step")
        ax.set_title({"shards": "step overhead vs shards", "workers": "step overhead vs workers",
                      "clients": "one shard: pushes/s vs clients"}[axis])
        ax.legend()

"""The chaos soak: the default job under random, overlapping SIGKILLs, for each mode and transport; one table.

    python benchmarks/chaos.py [--minutes M] [--modes asp,ssp,bsp] [--transports shm,grpc,ray]
                               [--mean-gap S] [--seed N] [--set KEY=VALUE ...]

Each cell is one job on one local Ray instance, trained for about M minutes
(the default digits job, its epochs scaled to the time, 4 ms added per step
so the controller has something to interrupt), with ``debug.audit`` on and
``chaos.random`` SIGKILLing a random shard or worker every ``--mean-gap``
seconds on average (an exponential: short gaps land inside the recovery from
the last kill). Every cell is checked for what the soak promises:

- nothing applied twice (the shards' audit logs);
- every example exactly once per epoch (the work queue's coverage);
- the accuracy bar (0.93 on the digits' test split, as tests/test_failures.py);
- flat memory: the driver's and the shards' RSS at the end within 64 MB of the
  first sample (taken as training begins), and the job's shared memory
  within 1 MB of it (segments are per worker id, reused by every life);

and prints the counts: kills sent (and of what), restarts, rollbacks, steps
lost and batches replayed, seconds trained. It exits 1 if any cell failed a
check or raised. tests/test_chaos.py runs a short form of it in CI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback

from rayps.launcher.job.config import load_job_config
from rayps.launcher.job.driver import run_job
from rayps.runtime import RAY

EXAMPLES = 1437  # the digits' training split
ACCURACY_BAR = 0.93
GROWTH_MB = 64.0
# about how long one epoch of the default job takes with 4 ms a step, per mode (measured on 2 cores); the
# epochs of a cell are the minutes over this, so a cell trains for about --minutes whatever the mode
EPOCH_S = {"asp": 0.13, "ssp": 0.13, "bsp": 0.16}


def soak_config(mode: str, transport: str, minutes: float, mean_gap_s: float, seed: int, extra: list[str]):
    epochs = max(5, round(minutes * 60 / EPOCH_S.get(mode, 0.15)))
    kills = max(1, round(minutes * 60 / mean_gap_s)) + 1
    return load_job_config(None, [
        f"consistency.mode={mode}", f"transport={transport}", f"epochs={epochs}", "debug.audit=true",
        "debug.slow_workers={0: 0.004, 1: 0.004}", "eval_every_s=0", "eval_every_steps=0",
        "checkpoint.every_s=1", "checkpoint.every_steps=null",
        f"fault.max_restarts={kills}", f"chaos.random.kills={kills}", f"chaos.random.mean_gap_s={mean_gap_s}",
        f"chaos.random.seed={seed}", *extra])


def violations(summary: dict, epochs: int) -> list[str]:
    """What the soak promises and this run broke (an empty list: nothing)."""
    s, out = summary, []
    if s.get("applied_twice") != 0:
        out.append(f"applied twice: {s.get('applied_twice')}")
    if s["examples_per_epoch"] != {str(e): EXAMPLES for e in range(epochs)}:
        wrong = {e: n for e, n in s["examples_per_epoch"].items() if n != EXAMPLES}
        out.append(f"epoch coverage: {len(wrong)} epochs not {EXAMPLES} examples, e.g. {dict(list(wrong.items())[:3])}")
    if s["epoch_coverage"] != {str(e): [[0, s["batches_per_epoch"]]] for e in range(epochs)}:
        out.append("epoch coverage: a batch missing or repeated")
    if s["test_accuracy"] < ACCURACY_BAR:
        out.append(f"accuracy {s['test_accuracy']:.4f} < {ACCURACY_BAR}")
    memory = s["chaos"]["memory_mb"]
    for key in ("driver", "shards"):
        if key in memory and memory[key]["last"] - memory[key]["first"] > GROWTH_MB:
            out.append(f"{key} RSS grew {memory[key]['first']} -> {memory[key]['last']} MB")
    if "shm" in memory and memory["shm"]["last"] > memory["shm"]["first"] + 1:
        out.append(f"shared memory grew {memory['shm']['first']} -> {memory['shm']['last']} MB")
    return out


def row(mode: str, transport: str, s: dict, broken: list[str]) -> str:
    chaos = s["chaos"]
    killed = ", ".join(f"{k} {n}" for k, n in sorted(chaos["killed"].items())) or "-"
    restarts = sum(s["restarts"].values())
    memory = chaos["memory_mb"]
    mem = " / ".join(f"{memory[k]['first']:.0f}->{memory[k]['last']:.0f}" for k in ("driver", "shards") if k in memory)
    return (f"| {mode} | {transport} | {s['train_s']:.0f} | {chaos['sent']} ({killed}) | {restarts} | {s['rollbacks']}"
            f" | {s['steps_lost']} | {s['steps_replayed']} | {s.get('applied_twice')} | {s['test_accuracy']:.4f}"
            f" | {mem} | {'ok' if not broken else '; '.join(broken)} |")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=2.0, help="about how long each cell trains")
    parser.add_argument("--modes", default="asp,ssp,bsp")
    parser.add_argument("--transports", default="shm,grpc,ray")
    parser.add_argument("--mean-gap", type=float, default=3.0, help="mean seconds between kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    RAY.start(dashboard=False)
    print("| mode | transport | train s | kills sent | restarts | rollbacks | steps lost | batches replayed"
          " | applied twice | test accuracy | RSS MB driver / shards | checks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    failed = 0
    totals = {"kills": 0, "cells": 0, "twice": 0}
    for i, (mode, transport) in enumerate((m, t) for m in args.modes.split(",") for t in args.transports.split(",")):
        config = soak_config(mode, transport, args.minutes, args.mean_gap, args.seed + i, args.overrides)
        with tempfile.TemporaryDirectory() as out:
            began = time.monotonic()
            try:
                s = run_job(config, output=out, dashboard=False, report=False).summary
            except Exception as e:  # noqa: BLE001 - a cell that raised is a result: printed, counted, the rest run
                traceback.print_exc()
                print(f"| {mode} | {transport} | {time.monotonic() - began:.0f} | | | | | | | | |"
                      f" RAISED {type(e).__name__}: {' '.join(str(e).split())[:300]} |", flush=True)
                failed += 1
                continue
        broken = violations(s, config.epochs)
        failed += bool(broken)
        totals["kills"] += s["chaos"]["sent"]
        totals["cells"] += 1
        totals["twice"] += s.get("applied_twice") or 0
        print(row(mode, transport, s, broken), flush=True)
    print(f"\n{totals['kills']} SIGKILLs across {totals['cells']} finished cells, {totals['twice']} pushes applied"
          f" twice; {failed} cell(s) failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

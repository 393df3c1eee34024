"""The default job, clean and with a failure injected, and what each failure cost; one table.

    python benchmarks/failures.py [--repeats N] [--set KEY=VALUE ...]

Rows (each a full job on one local Ray instance, run back to back, so they
compare fairly; a slowdown of 4 ms a step gives the controller a job long
enough to act in): clean; a worker SIGKILLed just before its 300th step; a
shard SIGKILLed once the leading worker passes clock 300 (checkpoints every
second); a worker that hangs at step 300 (stall timeout 2 s, replaced). Each
prints test accuracy, training seconds, restarts, steps lost and replayed,
and the longest pause a checkpoint cut caused.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from rayps.launcher.job.config import load_job_config
from rayps.launcher.job.driver import run_job
from rayps.runtime import RAY

# Checkpoints by time only, as when docs/results.md's table was measured (the default also cuts every tenth of
# the job); no test scores while training, which would take the driver's time.
BASE = ["debug.slow_workers={0: 0.004, 1: 0.004}", "checkpoint.every_s=1", "checkpoint.every_steps=null",
        "eval_every_s=0", "eval_every_steps=0"]
ROWS = [
    ("clean", []),
    ("worker-0 SIGKILLed at step 300", ["chaos.kill=worker-0@300"]),
    ("ps-shard-1 SIGKILLed at step 300", ["chaos.kill=ps-shard-1@300"]),
    ("worker-1 hangs at step 300", ["chaos.hang=worker-1@300", "fault.stall_s=2", "fault.on_stall=replace"]),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    RAY.start(dashboard=False)  # started once, outside every row's time
    print("| run | test accuracy | train s | restarts | steps lost | batches replayed | longest cut pause s |")
    print("|---|---|---|---|---|---|---|")
    for name, extra in ROWS:
        results = []
        for _ in range(args.repeats):
            config = load_job_config(None, [*BASE, *extra, *args.overrides])
            with tempfile.TemporaryDirectory() as out:
                results.append(run_job(config, output=out, dashboard=False, report=False).summary)
        acc = statistics.median(s["test_accuracy"] for s in results)
        train = statistics.median(s["train_s"] for s in results)
        s = results[-1]
        restarts = ", ".join(f"{a} {n}" for a, n in sorted(s["restarts"].items())) or "-"
        print(f"| {name} | {acc:.4f} | {train:.1f} | {restarts} | {s['steps_lost']} | {s['steps_replayed']}"
              f" | {s['checkpoint_pause_s']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

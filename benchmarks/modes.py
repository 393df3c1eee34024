"""Train the default job under each consistency mode and print one table.

    python benchmarks/modes.py [--epochs N] [--slow-worker SECONDS] [--set KEY=VALUE ...]

Every row is a full job on one local Ray instance, run back to back, so the
rows compare fairly with each other; absolute samples/s depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from rayps.launcher.job.config import load_job_config
from rayps.launcher.job.driver import run_job
from rayps.runtime import RAY

MODES = [
    ("asp", ["consistency.mode=asp"]),
    ("ssp s=0", ["consistency.mode=ssp", "consistency.staleness=0"]),
    ("ssp s=2", ["consistency.mode=ssp", "consistency.staleness=2"]),
    ("ssp s=2, staleness-aware lr", ["consistency.mode=ssp", "consistency.staleness_aware_lr=true"]),
    ("bsp", ["consistency.mode=bsp"]),
    ("bsp, quorum 1 of 2", ["consistency.mode=bsp", "consistency.quorum=1"]),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--slow-worker", type=float, default=0.0, help="seconds added to each step of worker 0")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    extra = [f"epochs={args.epochs}", *args.overrides]
    if args.slow_worker:
        extra.append(f"debug.slow_workers={{0: {args.slow_worker}}}")
    RAY.start(dashboard=False)  # started once, outside every row's wall time
    print("| mode | test accuracy | test loss | max clock gap | mean staleness | pushes dropped | samples/s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(MODES):
            s = run_job(load_job_config(None, overrides + extra), output=f"{tmp}/{i}",
                        dashboard=False).summary
            hist = {int(k): v for k, v in s["staleness_histogram"].items()}
            mean = sum(k * v for k, v in hist.items()) / max(1, sum(hist.values()))
            print(f"| {name} | {s['test_accuracy']:.4f} | {s['test_loss']:.4f} | {s['max_clock_gap']} | {mean:.2f}"
                  f" | {s['pushes_dropped']} | {s['samples_per_s']:,.0f} | {s['wall_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the default checkpoint rule costs: the default job with checkpoints every tenth of the job as well as
every 10 s (``checkpoint.every_steps: auto``, the default) against by time only (``null``), alternating, in one
Ray session. Prints a markdown table: cuts, train_s, the longest push pause, accuracy; and the median ratio.

    python benchmarks/checkpoint_cost.py --repeats 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from rayps.launcher.job.config import load_job_config
from rayps.launcher.job.driver import run_job
from rayps.runtime import RAY

RULES = {"auto": "auto", "time only": "null"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    RAY.start(dashboard=False)  # started once, outside every run's time
    runs: dict[str, list[dict]] = {name: [] for name in RULES}
    with tempfile.TemporaryDirectory() as out:
        for rep in range(args.repeats):
            for name, every in RULES.items():
                config = load_job_config(None, [f"checkpoint.every_steps={every}", *args.overrides])
                runs[name].append(run_job(config, output=f"{out}/{rep}-{every}", dashboard=False,
                                          report=False).summary)
    print("| checkpoint.every_steps | cuts | median train s | longest pause s | test accuracy |")
    print("|---|---|---|---|---|")
    for name, summaries in runs.items():
        cuts = sorted(s["checkpoints_written"] for s in summaries)
        pauses = sorted(s["checkpoint_pause_s"] for s in summaries)
        accuracy = sorted(s["test_accuracy"] for s in summaries)
        print(f"| {name} | {cuts[0]} to {cuts[-1]} | {statistics.median(s['train_s'] for s in summaries):.3f} |"
              f" {pauses[0]:.2f} to {pauses[-1]:.2f} | {accuracy[0]:.4f} to {accuracy[-1]:.4f} |")
    ratio = statistics.median(s["train_s"] for s in runs["auto"]) / \
        statistics.median(s["train_s"] for s in runs["time only"])
    print(f"\nauto / time only, median train_s: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

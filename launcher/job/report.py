"""What a finished run shows: PNG plots and TensorBoard event files from its run directory.

``write_report(run_dir)`` reads ``summary.json`` and ``history.jsonl`` and draws:

- ``loss_accuracy.png``: training loss, and test accuracy where it was measured, over time;
- ``staleness.png``: the histogram of the staleness of applied updates;
- ``throughput.png``: samples/s of each worker over time;
- ``tensorboard/``: the same series as TensorBoard scalars (``tensorboard --logdir RUN_DIR``).

``psctl report RUN_DIR`` runs it again on any run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ConfigError

PLOTS = ("loss_accuracy.png", "staleness.png", "throughput.png")


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no summary.json)")
    summary = json.loads(summary_path.read_text())
    history_path = run_dir / "history.jsonl"
    history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()] \
        if history_path.is_file() else []
    return summary, history


def write_report(run_dir: Path, tensorboard: bool = True) -> list[Path]:
    """Draw the plots (and TensorBoard events) of ``run_dir``; return the files written."""
    run_dir = Path(run_dir)
    summary, history = read_run(run_dir)
    written = _plots(run_dir, summary, history)
    if tensorboard:
        written.append(_tensorboard(run_dir, summary, history))
    return written


def _plots(run_dir: Path, summary: dict, history: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    title = f"{summary.get('consistency', '?')} | {summary.get('workers', '?')} workers," \
            f" {summary.get('servers', '?')} shards | {summary.get('transport', 'ray')}"
    t = [row["t"] for row in history]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(t, [row.get("loss") for row in history], color="tab:blue")
    ax_loss.set(xlabel="seconds", ylabel="training loss (mean over workers)", title="loss")
    scored = [(row["t"], row["test_accuracy"]) for row in history if row.get("test_accuracy") is not None]
    if scored:
        ax_acc.plot(*zip(*scored), marker="o", color="tab:green")
        ax_acc.set(ylim=(0, 1.02))
    else:
        ax_acc.text(0.5, 0.5, "no accuracy (not a classification task)", ha="center", va="center")
    ax_acc.set(xlabel="seconds", ylabel="test accuracy", title="accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    paths = [_save(fig, run_dir / PLOTS[0])]

    hist = {int(k): v for k, v in summary.get("staleness_histogram", {}).items()}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(list(hist), list(hist.values()), color="tab:orange")
    bound = summary.get("staleness_bound")
    ax.set(xlabel="staleness of an applied update (updates)", ylabel="updates",
           title=f"staleness (bound s={bound}, max clock gap {summary.get('max_clock_gap')})")
    fig.tight_layout()
    paths.append(_save(fig, run_dir / PLOTS[1]))

    fig, ax = plt.subplots(figsize=(6, 4))
    workers = sorted({w for row in history for w in row.get("worker_samples_per_s", {})}, key=int)
    for w in workers:
        ax.plot(t, [row.get("worker_samples_per_s", {}).get(w) for row in history], label=f"worker-{w}")
    ax.set(xlabel="seconds", ylabel="samples/s", title="throughput per worker")
    if workers:
        ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, run_dir / PLOTS[2]))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tensorboard(run_dir: Path, summary: dict, history: list[dict]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    out = run_dir / "tensorboard"
    writer = SummaryWriter(log_dir=str(out))
    try:
        for row in history:
            step = int(row["step"])
            for key in ("loss", "samples_per_s", "staleness_mean", "max_clock_gap", "test_accuracy", "test_loss"):
                if row.get(key) is not None:
                    writer.add_scalar(f"job/{key}", row[key], step, walltime=None)
            for w, rate in row.get("worker_samples_per_s", {}).items():
                writer.add_scalar(f"worker-{w}/samples_per_s", rate, step)
        for staleness, count in summary.get("staleness_histogram", {}).items():
            writer.add_scalar("staleness/count", count, int(staleness))
        writer.add_text("summary", "```\n" + json.dumps(summary, indent=2, sort_keys=True) + "\n```")
    finally:
        writer.close()
    return out

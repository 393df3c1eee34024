"""What a finished run shows: PNG plots and TensorBoard event files from its run directory.

``write_report(run_dir)`` reads ``summary.json`` and ``history.jsonl`` and draws:

- ``loss_accuracy.png``: training loss, and test accuracy where it was measured;
- ``staleness.png``: the histogram of the staleness of applied updates;
- ``throughput.png``: samples/s of each worker;
- ``tensorboard/``: the same series as TensorBoard scalars, and the job's events as text
  (``tensorboard --logdir RUN_DIR``).

The x axis is the job's step (per worker, replays included: it never goes
back), or, with ``x="epochs"`` or ``x="seconds"``, where the job stood in its
data or how long it had trained. The job's events (a kill, a restore, a
worker replaced, a stall) are marked where they happened: a dashed line and
its name; checkpoints are small ticks along the bottom, so a rollback's
target shows too.

``psctl report RUN_DIR [--x steps|epochs|seconds]`` runs it again on any run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ConfigError

PLOTS = ("loss_accuracy.png", "staleness.png", "throughput.png")
#: history key and axis label of each x axis
AXES = {"steps": ("step", "step (per worker, replays included)"), "epochs": ("epoch", "epoch"),
        "seconds": ("t", "seconds of training")}
#: events drawn as a line across the plots (checkpoints get a tick at the bottom instead)
MARKED = ("chaos", "shard-died", "restore", "worker-died", "worker-joined", "worker-added", "worker-removed",
          "stall")
SCALARS = ("loss", "samples_per_s", "staleness_mean", "max_clock_gap", "test_accuracy", "test_loss", "epoch",
           "replayed")


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


def split_history(history: list[dict]) -> tuple[list[dict], list[dict]]:
    """The history's measurements and its events."""
    return [r for r in history if "event" not in r], [r for r in history if "event" in r]


def write_report(run_dir: Path, tensorboard: bool = True, x: str = "steps") -> list[Path]:
    """Draw the plots (and TensorBoard events) of ``run_dir`` against ``x``; return the files written."""
    if x not in AXES:
        raise ConfigError(f"x ({x!r}) must be one of {', '.join(AXES)}")
    run_dir = Path(run_dir)
    summary, history = read_run(run_dir)
    data = plot_data(history, x, str(run_dir))
    written = _plots(run_dir, summary, data, x)
    if tensorboard:
        written.append(_tensorboard(run_dir, summary, *split_history(history)))
    return written


def plot_data(history: list[dict], x: str = "steps", where: str = "history") -> dict:
    """What the plots draw, against ``x``: the rows' x values, loss and throughput, the test scores
    where they were measured, and the events where they happened (``(x, kind, text)``)."""
    if x not in AXES:
        raise ConfigError(f"x ({x!r}) must be one of {', '.join(AXES)}")
    key = AXES[x][0]
    rows, events = split_history(history)
    if any(key not in r for r in rows + events):
        raise ConfigError(f"{where}: its history has no {key!r} column (written before it was recorded);"
                          " draw it with x=seconds")
    return {
        "x": [r[key] for r in rows],
        "loss": [r.get("loss") for r in rows],
        "worker_samples_per_s": {w: [r.get("worker_samples_per_s", {}).get(w) for r in rows]
                                 for w in sorted({w for r in rows for w in r.get("worker_samples_per_s", {})},
                                                 key=int)},
        "accuracy": [(r[key], r["test_accuracy"]) for r in rows if r.get("test_accuracy") is not None],
        "events": [(e[key], e["event"], e["text"]) for e in events if e["event"] in MARKED],
        "checkpoints": [e[key] for e in events if e["event"] == "checkpoint"],
    }


def _plots(run_dir: Path, summary: dict, data: dict, x: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    label = AXES[x][1]
    title = f"{summary.get('consistency', '?')} | {summary.get('workers', '?')} workers," \
            f" {summary.get('servers', '?')} shards | {summary.get('transport', 'ray')}"
    xs = data["x"]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_loss.plot(xs, data["loss"], color="tab:blue")
    ax_loss.set(xlabel=label, ylabel="training loss (mean over workers)", title="loss")
    scored = data["accuracy"]
    if scored:
        ax_acc.plot(*zip(*scored), marker="o", color="tab:green")
        ax_acc.set(ylim=(0, 1.02))
    else:
        ax_acc.text(0.5, 0.5, "no accuracy (not a classification task)", ha="center", va="center",
                    transform=ax_acc.transAxes)
    ax_acc.set(xlabel=label, ylabel="test accuracy", title="test accuracy, where it was measured")
    for ax in (ax_loss, ax_acc):
        _mark(ax, data)
        _epochs_on_top(ax, summary, x)
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

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for w, rates in data["worker_samples_per_s"].items():
        ax.plot(xs, rates, label=f"worker-{w}")
    ax.set(xlabel=label, ylabel="samples/s", title="throughput per worker")
    _mark(ax, data)
    if data["worker_samples_per_s"]:
        ax.legend(loc="lower left")
    fig.tight_layout()
    paths.append(_save(fig, run_dir / PLOTS[2]))
    return paths


def _mark(ax, data: dict) -> None:
    """The job's events where they happened: a dashed line and its name; checkpoints as ticks."""
    if data["checkpoints"]:
        ax.plot(data["checkpoints"], [0.0] * len(data["checkpoints"]), "^", color="grey", markersize=5,
                transform=ax.get_xaxis_transform(), clip_on=False)
    for n, (at, kind, _) in enumerate(data["events"]):
        ax.axvline(at, color="tab:red", linestyle="--", linewidth=0.8, alpha=0.8)
        ax.text(at, 0.98 - 0.07 * (n % 4), f" {kind}", transform=ax.get_xaxis_transform(),
                color="tab:red", fontsize=7, va="top")


def _epochs_on_top(ax, summary: dict, x: str) -> None:
    """Against steps, the epochs along the top, while one maps to the other (no step was replayed)."""
    progress = summary.get("progress") or {}
    if x != "steps" or progress.get("replayed") or not progress.get("steps") or not progress.get("epochs"):
        return
    per_step = progress["epochs"] / progress["steps"]
    top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda e: e / per_step))
    top.set_xlabel("epoch", fontsize=8)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tensorboard(run_dir: Path, summary: dict, rows: list[dict], events: list[dict]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    out = run_dir / "tensorboard"
    for old in out.glob("events.out.tfevents.*"):  # drawn again: one file, or TensorBoard shows both
        old.unlink()
    writer = SummaryWriter(log_dir=str(out))
    try:
        for row in rows:
            step = int(row["step"])
            for key in SCALARS:
                if row.get(key) is not None:
                    writer.add_scalar(f"job/{key}", row[key], step)
            for w, rate in row.get("worker_samples_per_s", {}).items():
                writer.add_scalar(f"worker-{w}/samples_per_s", rate, step)
        # Each event: a line of text at its step (TensorBoard keeps one text per step, so the events of one
        # step are one text), and a count of its kind.
        by_step: dict[int, list[str]] = {}
        for e in events:
            step = int(e["step"])
            by_step.setdefault(step, []).append(f"- **{e['event']}** ({e['t']:.1f} s): {e['text']}")
            writer.add_scalar(f"events/{e['event']}", 1, step)
        for step, lines in by_step.items():
            writer.add_text("events", "\n".join(lines), step)
        for staleness, count in summary.get("staleness_histogram", {}).items():
            writer.add_scalar("staleness/count", count, int(staleness))
        writer.add_text("summary", "```\n" + json.dumps(summary, indent=2, sort_keys=True) + "\n```")
    finally:
        writer.close()
    return out

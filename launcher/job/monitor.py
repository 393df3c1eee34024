"""Watching a running job: progress, a time series of its vital signs, and naming failures.

The controller (launcher/job/controller.py) calls ``Monitor.tick`` twice a second
with shard 0's stats (every push reaches every shard, so one shard sees the
whole job): it redraws the progress line and appends a row to the history;
every ``eval_every_s`` it also scores the current parameters on the test
split. The history becomes ``history.jsonl`` in the run directory, the source
of the report's plots and TensorBoard events.

``name_failure`` turns an error into a JobError naming the actor at fault.
When a shard's process dies, every worker then fails in its push, so it asks
which actors are gone (shards first) and names the dead one (``ps-shard-0
died: ...``) rather than the worker that noticed.
"""

from __future__ import annotations

from typing import Callable

from .progress import ProgressLine, describe
from ...errors import JobError
from ...runtime import RAY, Runtime

#: How long a liveness probe waits: a dead actor answers at once, a busy one not at all.
PROBE_S = 2.0


class Monitor:
    def __init__(self, total_steps: int, label: str, progress: ProgressLine | None = None,
                 evaluate: Callable[[], tuple[float, float | None]] | None = None, eval_every_s: float = 0.0,
                 history: list[dict] | None = None):
        self.total_steps = total_steps
        self.label = label
        self.progress = progress
        self.evaluate = evaluate
        self.eval_every_s = eval_every_s
        self.history: list[dict] = list(history or [])  # a resumed job carries on its history
        self._t0 = self.history[-1]["t"] if self.history else 0.0
        self._last_samples: dict[int, int] = {}
        self._last_t = 0.0
        self._next_eval = eval_every_s if eval_every_s and evaluate else float("inf")

    def tick(self, stats: dict, t: float) -> dict:
        """Record one row from shard 0's ``stats``, ``t`` seconds into training."""
        row = self._record(stats, t)
        if t >= self._next_eval:
            row["test_loss"], row["test_accuracy"] = self.evaluate()
            self._next_eval = t + self.eval_every_s
        if self.progress is not None:
            self.progress.update(describe(row, self.total_steps, t, self.label),
                                 fraction=min(1.0, row["step"] / max(1, self.total_steps)))
        return row

    def note_stall(self, report: dict) -> None:
        if self.history:
            self.history[-1].setdefault("stalls", []).append(
                {k: report[k] for k in ("worker", "step", "stuck_s", "waiting")})

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def _record(self, stats: dict, t: float) -> dict:
        samples = {int(k): v for k, v in stats["samples"].items()}
        dt = max(t - self._last_t, 1e-9)
        per_worker = {w: (n - self._last_samples.get(w, 0)) / dt for w, n in samples.items()}
        hist = {int(k): v for k, v in stats["staleness_histogram"].items()}
        applied = sum(hist.values())
        losses = list(stats["loss"].values())
        row = {
            "t": round(self._t0 + t, 3),
            # the leading worker's step; finished workers leave the clock table, so never go back
            "step": max(max(stats["clocks"].values(), default=0), self.history[-1]["step"] if self.history else 0),
            "samples": sum(samples.values()),
            "samples_per_s": sum(per_worker.values()),
            "worker_samples_per_s": {str(w): v for w, v in sorted(per_worker.items())},
            "loss": sum(losses) / len(losses) if losses else None,
            "staleness_mean": sum(k * v for k, v in hist.items()) / applied if applied else 0.0,
            "staleness_max": max(hist, default=0),
            "max_clock_gap": stats["max_clock_gap"],
        }
        self._last_samples, self._last_t = samples, t
        self.history.append(row)
        return row


def name_failure(shards: list, workers: list, name: str, error: Exception, runtime: Runtime = RAY) -> JobError:
    """A JobError naming the actor at fault: a dead one if any (shards first), else ``name``."""
    dead = _first_dead(shards, workers, runtime)
    if dead is not None:
        dead_name, died = dead
        cause = getattr(died, "cause", None) or died
        lines = [line for line in str(cause).strip().splitlines() if line.strip()] or [""]
        what = lines[0]
        if "creation task" in what and len(lines) > 1:  # its constructor raised: say what it raised
            what += f" {lines[-1].strip()}"
        seen = f" (noticed by {name})" if name != dead_name else ""
        return JobError(f"{dead_name} died{seen}: {type(cause).__name__}: {what}")
    cause = getattr(error, "cause", None) or error  # the worker's own exception, not Ray's wrapper
    return JobError(f"{name} failed: {type(cause).__name__}: {cause}")


def _first_dead(shards: list, workers: list, runtime: Runtime) -> tuple[str, Exception] | None:
    named = [(f"ps-shard-{i}", s) for i, s in enumerate(shards)]
    named += [(f"worker-{i}", w) for i, w in enumerate(workers)]
    probes = [actor.__ray_ready__.remote() for _, actor in named]
    runtime.wait(probes, num_returns=len(probes), timeout=PROBE_S)
    for (name, _), probe in zip(named, probes):
        try:
            runtime.get(probe, timeout=0)
        except runtime.ActorError as e:
            return name, e
        except Exception:  # still busy (a worker inside run) or slow: alive as far as we know
            continue
    return None

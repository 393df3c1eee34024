"""Watching a running job: progress, its history by work and by time, its events, and naming failures.

The controller (launcher/job/controller.py) calls ``Monitor.tick`` twice a second
with shard 0's stats (every push reaches every shard, so one shard sees the
whole job). The stats bring the rows shard 0 wrote every ``history_every``
steps since the last tick (ps/core/series.py), so a job of one second still
draws a curve; the tick adds a row of its own (``"by": "time"``), which
shows a job that stands still, and redraws the progress line. Every
``eval_every_s`` seconds or ``eval_every_steps`` steps it also scores the
current parameters on the test split, in the tick's row.

``event`` puts what the controller did or saw (a kill, a restore and what it
replays, a worker replaced, added or removed, a stall, a checkpoint) on the
record: a row of the history (``"event": kind``), a line in the terminal.

Every figure of progress comes from ``progress.py``: the history's ``step``
never goes back, and the last row of a finished job is its step count.
The history becomes ``history.jsonl`` in the run directory, the source of the
report's plots and TensorBoard events.

``name_failure`` turns an error into a JobError naming the actor at fault.
When a shard's process dies, every worker then fails in its push, so it asks
which actors are gone (shards first) and names the dead one (``ps-shard-0
died: ...``) rather than the worker that noticed.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from .progress import Extent, Odometer, Progress, describe
from .terminal import ProgressLine
from ...errors import JobError
from ...runtime import RAY, Runtime

#: How long a liveness probe waits: a dead actor answers at once, a busy one not at all.
PROBE_S = 2.0
#: samples/s is measured over this much of the recent past (a row every few ms would be noise).
RATE_WINDOW_S = 1.0
#: How many rows by work a job gets, about, when nobody says how often.
ROWS_PER_JOB = 200


def default_history_every(extent: Extent) -> int:
    """Every how many of the job's steps (every worker's) a shard writes a history row: about
    ROWS_PER_JOB rows in all, a whole number of rounds of the workers."""
    per_worker = max(1, round(extent.batches / max(1, extent.workers) / ROWS_PER_JOB))
    return per_worker * max(1, extent.workers)


class Monitor:
    def __init__(self, extent: Extent, label: str, progress: ProgressLine | None = None,
                 evaluate: Callable[[], tuple[float, float | None]] | None = None, eval_every_s: float = 0.0,
                 history: list[dict] | None = None, eval_every_steps: int = 0,
                 say: Callable[[str], None] | None = None):
        """``say``: where event lines go when there is no progress line (default: print)."""
        self.extent = extent
        self.label = label
        self.terminal = progress
        self.evaluate = evaluate
        self.eval_every_s = eval_every_s
        self.eval_every_steps = eval_every_steps
        self.say = say
        self.history: list[dict] = list(history or [])  # a resumed job carries on its history
        carried = [r for r in self.history if "event" not in r]
        last = carried[-1] if carried else {}
        self._t0 = self.history[-1]["t"] if self.history else 0.0
        self._odometer = Odometer({"steps": last.get("global_step", 0), "samples": last.get("samples", 0)})
        self.progress = Progress(extent, taken=last.get("global_step", 0))
        self.cursor: tuple[str, int] | None = None  # the last row read from shard 0's series
        self.report_cursor = 0  # the last report collected from the work queue
        self._latest: dict[int, dict] = {}  # each worker's latest reported metrics
        # (t, samples, {worker: samples}) of the last RATE_WINDOW_S; a resumed job's workers start unknown
        self._recent: deque = deque([(0.0, last.get("samples", 0), {} if not last else None)])
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self._next_eval = eval_every_s if eval_every_s and evaluate else float("inf")
        self._next_eval_step = eval_every_steps if eval_every_steps and evaluate else float("inf")

    def start(self) -> None:
        """Training starts now: rows are timed from here."""
        self._wall0, self._mono0 = time.time(), time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._mono0

    def tick(self, stats: dict, reported: list[dict] = (), t: float | None = None) -> dict:
        """The rows in shard 0's ``stats``, the loops' ``reported`` metrics, and a row of its own, ``t``
        seconds into training (default: now)."""
        for row in stats.get("rows", ()):
            self._record(row, row["era"], row["time"] - self._wall0, "steps")
            self.cursor = (row["era"].split(".")[0], row["id"])
        row = self._record(stats, stats["era"], self.now() if t is None else t, "time")
        self._take_reported(reported, row)
        if self.now() >= self._next_eval or self.progress.step >= self._next_eval_step:
            row["test_loss"], row["test_accuracy"] = self.evaluate()
            self._next_eval = self.now() + self.eval_every_s if self.eval_every_s else float("inf")
            while self._next_eval_step <= self.progress.step:
                self._next_eval_step += self.eval_every_steps
        if self.terminal is not None:
            self.terminal.update(describe(self.progress, self.label, row["samples_per_s"], row),
                                 fraction=self.progress.fraction)
        return row

    def _take_reported(self, reported: list[dict], row: dict) -> None:
        """Each report a history row (``"by": "report"``); the latest of each worker, averaged, in the tick's
        row (``reported``), which the progress line shows."""
        for r in reported:
            self.report_cursor = max(self.report_cursor, r["id"])
            worker, metrics = r["worker"], {k: v for k, v in r.items() if k not in ("id", "worker", "step")}
            self._latest[worker] = metrics
            self.history.insert(len(self.history) - 1, {
                "t": row["t"], "by": "report", "worker": worker, "worker_step": r.get("step"),
                **self.progress.fields(), **metrics})
        if self._latest:
            names = {k for m in self._latest.values() for k in m}
            row["reported"] = {k: sum(m[k] for m in self._latest.values() if k in m)
                               / sum(k in m for m in self._latest.values()) for k in sorted(names)}

    def went_back(self, replayed: int) -> None:
        """A rollback sends ``replayed`` of the job's steps (every worker's) round again."""
        self._odometer.went_back(steps=replayed)

    def event(self, kind: str, text: str, quiet: bool = False, **fields) -> dict:
        """Put ``kind`` on the record: a history row and (unless ``quiet``) a line in the terminal."""
        t = self.now()
        row = {"t": round(self._t0 + t, 3), "event": kind, "text": text, **self.progress.fields(), **fields}
        self.history.append(row)
        if not quiet:
            line = f"[{self.label}] step {self.progress.step:,}, {t:.1f} s: {text}"
            if self.terminal is not None:
                self.terminal.note(line)
            else:
                (self.say or print)(line)
        return row

    def close(self) -> None:
        if self.terminal is not None:
            self.terminal.close()

    def _record(self, counts: dict, era: str, t: float, by: str) -> dict:
        samples = {int(k): v for k, v in counts["samples"].items()}
        position = sum(counts["steps"].values())  # the shard's own count: goes back with a restore
        read = self._odometer.read(era, {"steps": position, "samples": sum(samples.values()),
                                         **{f"samples/{w}": n for w, n in samples.items()}})
        self.progress = Progress(self.extent, taken=read["steps"], replayed=self._odometer.baseline("steps"),
                                 position=position)
        worker_samples = {w: read[f"samples/{w}"] for w in samples}
        rate, worker_rate = self._rates(t, read["samples"], worker_samples)
        losses = list(counts["loss"].values())
        row = {
            "t": round(self._t0 + t, 3),
            "by": by,
            **self.progress.fields(),
            "samples": read["samples"],
            "samples_per_s": rate,
            "worker_samples_per_s": {str(w): v for w, v in sorted(worker_rate.items())},
            "loss": sum(losses) / len(losses) if losses else None,
            "staleness_mean": counts["staleness_mean"],
            "staleness_max": counts["staleness_max"],
            "max_clock_gap": counts["max_clock_gap"],
        }
        self.history.append(row)
        return row

    def _rates(self, t: float, samples: int, per_worker: dict[int, int]) -> tuple[float, dict[int, float]]:
        """samples/s, overall and per worker, over the rows of the last RATE_WINDOW_S (from the start, early
        on; over the gap itself, for the first row after a job stood still)."""
        recent = self._recent
        recent.append((t, samples, per_worker))
        while len(recent) > 2 and recent[0][0] < t - RATE_WINDOW_S:  # after a pause, the pause is one row's
            recent.popleft()
        t0, s0, w0 = recent[0]
        dt = t - t0
        if dt <= 0:
            return 0.0, {w: 0.0 for w in per_worker}
        if w0 is None:  # a resumed job's first window: what each worker had done before is not known
            return (samples - s0) / dt, {w: 0.0 for w in per_worker}
        return (samples - s0) / dt, {w: (n - w0.get(w, 0)) / dt for w, n in per_worker.items()}


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

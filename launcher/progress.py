"""The live progress line: step, samples/s, loss and staleness while a job runs.

On a terminal the line is redrawn in place; otherwise (CI, a log file) a
plain line is written every ``every_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def describe(stats: dict, steps: int, total_steps: int, elapsed_s: float, label: str) -> str:
    """One progress line from a shard's stats (every push reaches every shard) and the leading step."""
    samples = sum(stats["samples"].values())
    losses = list(stats["loss"].values())
    hist = stats["staleness_histogram"]
    applied = sum(hist.values())
    mean_stale = sum(int(k) * v for k, v in hist.items()) / applied if applied else 0.0
    max_stale = max((int(k) for k in hist), default=0)
    loss = f"{sum(losses) / len(losses):.4f}" if losses else "-"
    return (
        f"[{label}] step {steps}/{total_steps}  {samples / max(elapsed_s, 1e-9):,.0f} samples/s"
        f"  loss {loss}  staleness mean {mean_stale:.2f} max {max_stale}  clock gap {stats['max_clock_gap']}"
    )


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._last = 0.0
        self._width = 0

    def update(self, line: str, fraction: float | None = None) -> None:
        if self.tty:
            if fraction is not None:  # a bar in front of the line, on a terminal only
                filled = int(round(BAR_WIDTH * max(0.0, min(1.0, fraction))))
                line = f"|{'#' * filled}{'.' * (BAR_WIDTH - filled)}| {fraction:4.0%} {line}"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
        elif time.monotonic() - self._last >= self.every_s:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last = time.monotonic()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()

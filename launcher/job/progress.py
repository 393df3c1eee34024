"""The live progress line: step, samples/s, loss and staleness while a job runs.

On a terminal the line is redrawn in place; otherwise (CI, a log file) a
plain line is written every ``every_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def describe(row: dict, total_steps: int, elapsed_s: float, label: str) -> str:
    """One progress line from the monitor's latest history row."""
    loss = f"{row['loss']:.4f}" if row["loss"] is not None else "-"
    return (
        f"[{label}] step {row['step']}/{total_steps}  {row['samples'] / max(elapsed_s, 1e-9):,.0f} samples/s"
        f"  loss {loss}  staleness mean {row['staleness_mean']:.2f} max {row['staleness_max']}"
        f"  clock gap {row['max_clock_gap']}"
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

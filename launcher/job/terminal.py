"""The terminal's view of a running job: one progress line, redrawn, and the job's events above it.

On a terminal the line is redrawn in place behind a bar; otherwise (CI, a log
file) a plain line is written every ``every_s`` seconds. An event (a kill, a
restore, a stall) is a line of its own, printed once, above the progress line
on a terminal. The last line of a job is always written, wherever it goes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._last = 0.0
        self._width = 0
        self._line = ""  # the latest line, written at close() if it was not yet

    def update(self, line: str, fraction: float | None = None) -> None:
        if self.tty:
            if fraction is not None:  # a bar in front of the line, on a terminal only
                filled = int(round(BAR_WIDTH * max(0.0, min(1.0, fraction))))
                line = f"|{'#' * filled}{'.' * (BAR_WIDTH - filled)}| {fraction:4.0%} {line}"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
            self._line = ""
        elif time.monotonic() - self._last >= self.every_s:
            self._write(line)
        else:
            self._line = line

    def note(self, line: str) -> None:
        """An event: a line of its own, kept above the progress line."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
        elif self._line:  # the job's last line, however soon it came after the one before
            self._write(self._line)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last = time.monotonic()
        self._line = ""

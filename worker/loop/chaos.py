"""Fault injection, for users who want to see a job survive and for the tests that check it.

A kill is a real SIGKILL of the actor's own process (no cleanup runs, exactly
like the OOM killer or a lost node); a hang stops the training loop in a
sleep, with the process alive and answering nothing useful. Only a worker's
first incarnation and a shard's first life are armed: a replacement that
died the same way again would never let a job finish.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass


def kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class WorkerChaos:
    kill_at_step: int | None = None  # SIGKILL just before this step (this incarnation's, from 1; local steps: inner)
    kill_after_s: float | None = None  # SIGKILL this long after training starts
    hang_at_step: int | None = None  # stop making progress just before this step

    def arm(self) -> "ArmedChaos":
        if self.kill_after_s is not None:
            timer = threading.Timer(self.kill_after_s, kill_this_process)
            timer.daemon = True
            timer.start()
        return ArmedChaos(self)


class ArmedChaos:
    def __init__(self, chaos: WorkerChaos):
        self.chaos = chaos

    def before_step(self, step: int) -> None:
        if step == self.chaos.kill_at_step:
            kill_this_process()
        if step == self.chaos.hang_at_step:
            while True:  # a hung worker: alive, holding its data, never pushing again
                time.sleep(3600)

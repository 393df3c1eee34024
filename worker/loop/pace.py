"""How fast a training loop goes: steady-state throughput, time to a target loss, injected stragglers.

One place for what the worker and the peers ``psctl bench`` runs against
(launcher/bench/peers.py) both measure, so every row of the benchmark is counted
the same way.

- ``StepClock``: samples per second after a warm-up of a tenth of the
  planned steps, and the seconds until the mean loss of the last 10 steps
  first fell below a target.
- ``straggle_s``: how long a step is held back by a persistent slowdown
  (a multiple of its compute time) and a transient straggle (with
  probability p, f times its compute time).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

#: Steps in the moving mean the target loss is compared with.
LOSS_WINDOW = 10


class StepClock:
    def __init__(self, planned_steps: int, target_loss: float | None = None):
        self.warmup = max(1, planned_steps // 10)
        self.target_loss = target_loss
        self.began = time.monotonic()
        self.steps = 0
        self.steady_from: float | None = None
        self.steady_samples = 0
        self.reached_s: float | None = None
        self._recent: deque = deque(maxlen=LOSS_WINDOW)

    def step(self, samples: int, loss: float) -> None:
        """Count one finished step of ``samples`` examples and its loss."""
        self.steps += 1
        now = time.monotonic()
        if self.steps == self.warmup:
            self.steady_from = now
        elif self.steady_from is not None:
            self.steady_samples += samples
        self._recent.append(loss)
        if (self.target_loss is not None and self.reached_s is None and len(self._recent) == LOSS_WINDOW
                and sum(self._recent) / LOSS_WINDOW < self.target_loss):
            self.reached_s = now - self.began

    @property
    def steady_s(self) -> float:
        return time.monotonic() - self.steady_from if self.steady_from is not None else 0.0

    @property
    def samples_per_s(self) -> float:
        span = self.steady_s
        return self.steady_samples / span if span > 0 else 0.0


def straggle_s(rng: np.random.Generator, compute_s: float, slowdown: float = 0.0,
               probability: float = 0.0, factor: float = 0.0) -> float:
    """Seconds to hold a step back: ``slowdown`` x its compute, plus ``factor`` x it with ``probability``."""
    extra = compute_s * slowdown
    if probability and rng.random() < probability:
        extra += compute_s * factor
    return extra

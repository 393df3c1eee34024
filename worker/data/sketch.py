"""A mergeable quantile sketch with a rank error it can state for itself.

The data of a job is summarized chunk by chunk on different workers, so the
quantiles (medians for imputation, quartiles for the IQR rule, bin edges for
mutual information) come from sketches merged in any order.

The sketch is a stack of compactors (Manku-Rajagopalan-Lindsay, as in KLL):
level h holds values that each stand for 2**h inputs. When a level holds more
than ``k`` values it is sorted and every other value (odd or even positions,
by a seeded coin) moves up a level with twice the weight.

Why the error is known: compacting a sorted level changes the weight counted
at or below any x by at most one pair's worth, 2**h. The sketch adds that up
over every compaction it (and everything merged into it) ever did, so
``rank_error()`` is a guaranteed bound, not an estimate: a value the sketch
returns for quantile q has a true rank within ``rank_error() * n`` of q * n.
For n values arriving in chunks of c, that is about log2(n / k) * n / k in the
worst case and far less in practice (the coins cancel).
"""

from __future__ import annotations

import numpy as np


class QuantileSketch:
    def __init__(self, k: int = 2048, seed: int = 0):
        if k < 8:
            raise ValueError(f"k ({k}) must be >= 8")
        self.k = k
        self.levels: list[np.ndarray] = [np.empty(0)]
        self.n = 0
        self.error = 0  # the sum of 2**h over every compaction: a bound on any rank's error
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        """Add finite values (callers drop NaN and inf first)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if not len(values):
            return
        self.n += len(values)
        if len(values) > 2 * self.k:
            # A big batch goes straight to the level where it fits: one sort, then every 2**h-th value
            # from a random start. For any x that miscounts the weight at or below x by less than
            # 2**h, the bound of the h compactions it replaces (1 + 2 + ... + 2**(h-1)), at a
            # fraction of their sorting.
            h = int(np.ceil(np.log2(len(values) / self.k)))
            step = 2 ** h
            values = np.sort(values)[int(self._rng.integers(step))::step]
            while len(self.levels) <= h:
                self.levels.append(np.empty(0))
            self.levels[h] = np.concatenate([self.levels[h], values])
            self.error += step
        else:
            self.levels[0] = np.concatenate([self.levels[0], values])
        self._compact()

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Fold ``other`` in (in place); the error bounds add."""
        while len(self.levels) < len(other.levels):
            self.levels.append(np.empty(0))
        for h, level in enumerate(other.levels):
            self.levels[h] = np.concatenate([self.levels[h], level])
        self.n += other.n
        self.error += other.error
        self._compact()
        return self

    def _compact(self) -> None:
        h = 0
        while h < len(self.levels):
            level = self.levels[h]
            if len(level) > self.k:
                level = np.sort(level)
                keep_odd = len(level) % 2  # an odd one out stays at this level
                rest, pairs = level[:keep_odd], level[keep_odd:]
                promoted = pairs[int(self._rng.integers(2))::2]
                self.levels[h] = rest
                if h + 1 == len(self.levels):
                    self.levels.append(np.empty(0))
                self.levels[h + 1] = np.concatenate([self.levels[h + 1], promoted])
                self.error += 2 ** h
            h += 1

    def _weighted(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.concatenate(self.levels)
        weights = np.concatenate([np.full(len(level), 2.0 ** h) for h, level in enumerate(self.levels)])
        order = np.argsort(values, kind="stable")
        return values[order], np.cumsum(weights[order])

    def quantiles(self, qs) -> np.ndarray:
        """Values at quantiles ``qs`` (in [0, 1]); NaN for an empty sketch."""
        qs = np.atleast_1d(np.asarray(qs, dtype=np.float64))
        if self.n == 0:
            return np.full(len(qs), np.nan)
        values, cumulative = self._weighted()
        # the first value whose cumulative weight reaches q * n (q = 0: the smallest)
        at = np.searchsorted(cumulative, np.maximum(qs * cumulative[-1], cumulative[0]), side="left")
        return values[np.minimum(at, len(values) - 1)]

    def quantile(self, q: float) -> float:
        return float(self.quantiles([q])[0])

    def rank_error(self) -> float:
        """A bound on the rank error of any answer, as a fraction of n: the compactions' error plus the
        weight of one value at the top level (an answer is a value the sketch holds)."""
        if self.n == 0:
            return 0.0
        return (self.error + 2 ** (len(self.levels) - 1)) / self.n

    def state(self) -> dict:
        return {"k": self.k, "n": self.n, "error": self.error, "levels": [lv.tolist() for lv in self.levels]}

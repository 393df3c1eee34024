"""Sufficient statistics of data chunks, and how two of them merge into one.

Every statistic the data pipeline fits (means, variances, ranges, quantiles,
co-moment matrices, class-conditional sums and scatters, binned counts) is
computed per chunk where the chunk is read, and merged in any order and any
grouping: merge(a, merge(b, c)) == merge(merge(a, b), c) up to rounding. The
moments use Chan, Golub and LeVeque's pairwise update (a mean and a centered
co-moment, not raw sums), so 20 million rows of float32 data keep their
digits. Pure numpy: unit-tested without Ray.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .sketch import QuantileSketch


@dataclass
class Moments:
    """Count, mean and centered co-moment matrix (sum of outer products of deviations) of rows."""

    n: int
    mean: np.ndarray
    comoment: np.ndarray | None  # None when only the means were asked for

    @classmethod
    def of(cls, x: np.ndarray, cov: bool = True) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        n = len(x)
        mean = x.mean(axis=0) if n else np.zeros(x.shape[1])
        centered = x - mean
        return cls(n, mean, centered.T @ centered if cov else None)

    @classmethod
    def empty(cls, p: int, cov: bool = True) -> Moments:
        return cls(0, np.zeros(p), np.zeros((p, p)) if cov else None)

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        if other.n == 0:
            return self
        if self.n == 0:
            return Moments(other.n, other.mean.copy(), None if other.comoment is None else other.comoment.copy())
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        comoment = None
        if self.comoment is not None and other.comoment is not None:
            comoment = self.comoment + other.comoment + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, comoment)

    @property
    def sums(self) -> np.ndarray:
        return self.mean * self.n

    def covariance(self, ddof: int = 0) -> np.ndarray:
        return self.comoment / max(1, self.n - ddof)


@dataclass
class ColumnProfile:
    """Per column: rows, missing (null or NaN), infinite, and over the finite values their count, mean,
    centered second moment, min, max and a quantile sketch."""

    rows: int
    missing: np.ndarray
    infinite: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    sketches: list[QuantileSketch] | None = None

    @classmethod
    def of(cls, x: np.ndarray, sketch: bool = True, k: int = 2048, seed: int = 0) -> ColumnProfile:
        x = np.asarray(x, dtype=np.float64)
        finite = np.isfinite(x)
        count = finite.sum(axis=0)
        values = np.where(finite, x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, values.sum(axis=0) / np.maximum(count, 1), 0.0)
        m2 = (np.where(finite, x - mean, 0.0) ** 2).sum(axis=0)
        lo = np.where(finite, x, np.inf).min(axis=0, initial=np.inf)
        hi = np.where(finite, x, -np.inf).max(axis=0, initial=-np.inf)
        sketches = None
        if sketch:
            sketches = [QuantileSketch(k, seed=seed + j) for j in range(x.shape[1])]
            for j, s in enumerate(sketches):
                s.add(x[finite[:, j], j])
        return cls(len(x), np.isnan(x).sum(axis=0), np.isinf(x).sum(axis=0), count, mean, m2, lo, hi, sketches)

    def merge(self, other: ColumnProfile) -> ColumnProfile:
        n = self.count + other.count
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(n > 0, other.count / np.maximum(n, 1), 0.0)
        mean = self.mean + delta * share
        m2 = self.m2 + other.m2 + delta ** 2 * self.count * share
        sketches = None
        if self.sketches is not None and other.sketches is not None:
            sketches = [a.merge(b) for a, b in zip(self.sketches, other.sketches)]
        return ColumnProfile(self.rows + other.rows, self.missing + other.missing, self.infinite + other.infinite,
                             n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max), sketches)

    def std(self, ddof: int = 0) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(1, self.count - ddof))

    def quantiles(self, q: float) -> np.ndarray:
        return np.array([s.quantile(q) for s in self.sketches])


def _merge_dicts(a: dict, b: dict, merge) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = merge(out[key], value) if key in out else value
    return out


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass
class Summary:
    """One pass over some chunks: everything the pipeline fits and reports, mergeable.

    The first pass reads raw values (``train``, ``test`` profiles, label counts, weight total); the
    second sees the rows as the fitted quality fix leaves them (``fixed`` moments of the train rows
    with the label as the last column, per-class moments, binned counts, the fix's counts)."""

    columns: list[str]
    train: ColumnProfile | None = None
    test: ColumnProfile | None = None
    labels: Counter = field(default_factory=Counter)  # train label -> rows (class labels only)
    test_labels: Counter = field(default_factory=Counter)
    label_missing: int = 0
    label_sketch: QuantileSketch | None = None  # a numeric (regression) label's quantiles
    weight_total: float = 0.0
    fixed: Moments | None = None  # train rows as fixed: features then the label
    fixed_min: np.ndarray | None = None
    fixed_max: np.ndarray | None = None
    class_moments: dict = field(default_factory=dict)  # class -> Moments of its fixed train rows
    bins: dict = field(default_factory=dict)  # class (or label bin) -> (features, bins) counts
    counts: dict = field(default_factory=dict)  # the fix's counts: name -> per-column array or int
    kept: dict = field(default_factory=dict)  # chunk index -> (train rows kept, test rows kept)

    def merge(self, other: Summary) -> Summary:
        if other.columns != self.columns:
            raise ValueError(f"summaries of different columns: {self.columns} and {other.columns}")

        def both(a, b, how):
            return a if b is None else b if a is None else how(a, b)

        return Summary(
            self.columns,
            both(self.train, other.train, ColumnProfile.merge),
            both(self.test, other.test, ColumnProfile.merge),
            self.labels + other.labels,
            self.test_labels + other.test_labels,
            self.label_missing + other.label_missing,
            both(self.label_sketch, other.label_sketch, QuantileSketch.merge),
            self.weight_total + other.weight_total,
            both(self.fixed, other.fixed, Moments.merge),
            both(self.fixed_min, other.fixed_min, np.minimum),
            both(self.fixed_max, other.fixed_max, np.maximum),
            _merge_dicts(self.class_moments, other.class_moments, Moments.merge),
            _merge_dicts(self.bins, other.bins, np.add),
            _merge_dicts(self.counts, other.counts, _add),
            {**self.kept, **other.kept},
        )


def merge_all(summaries) -> Summary:
    """Merge summaries pairwise, as a tree (the order does not change the result beyond rounding)."""
    parts = list(summaries)
    if not parts:
        raise ValueError("nothing to merge")
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]

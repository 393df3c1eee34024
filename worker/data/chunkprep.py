"""What happens to one chunk's rows: the split, the quality fix, sampling, and the statistics of a pass.

The same functions serve the statistics passes before training and the
workers' reads during it, so a row is held out, fixed, sampled and weighted
the same way everywhere. Each random draw is seeded by the job's seed and the
chunk's index only, so any process reading a chunk gets the same rows.

Order on a chunk: rows with no label are dropped (counted); the test rows are
held out (``test_fraction``, a seeded coin per row, unless the test split is
a data set of its own); the quality fix fills, clips and drops; the train
rows are sampled (``sample:``) and weighted; the feature transform runs last,
where the batch is made (worker/data/chunked.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .chunks import Chunk, DataFileError, RawChunk
from .colstats import ColumnProfile, Moments, Summary
from .config import SampleConfig
from .sketch import QuantileSketch
from .transform import QualityFix

TRAIN, TEST = "train", "test"  # a chunk of the train data set (split by test_fraction), or of a test set


@dataclass
class ChunkPlan:
    """How a chunk's rows become train and test rows (everything but the feature transform)."""

    seed: int = 0
    test_fraction: float = 0.0  # 0 when the test split is its own data set
    classify: bool = True  # integer labels: classes (stratified sampling, class statistics)
    sample: SampleConfig = field(default_factory=SampleConfig)
    fix: QualityFix | None = None  # None: the rows as read (the first pass)
    sample_fit: dict = field(default_factory=dict)  # importance: train rows and total weight; stratified: scale


@dataclass
class ChunkRows:
    """A chunk's rows after the split, the fix and sampling."""

    x: np.ndarray  # fixed features (float64)
    y: np.ndarray
    weight: np.ndarray | None  # loss weights of sampled train rows (None: all equal)


def labelled(raw: RawChunk, plan: ChunkPlan) -> tuple[RawChunk, int]:
    """Rows with a label (a row with none cannot be trained on or scored): the rows and how many went."""
    if raw.y.dtype.kind != "f":
        return raw, 0
    ok = np.isfinite(raw.y)
    y = raw.y[ok]
    if plan.classify:
        y = y.astype(np.int64)
    gone = int((~ok).sum())
    return RawChunk(raw.x[ok], y, None if raw.weight is None else raw.weight[ok]), gone


def test_rows(chunk: Chunk, n: int, plan: ChunkPlan, role: str) -> np.ndarray:
    """Which of the chunk's labelled rows are test rows: a seeded coin per row."""
    if role == TEST:
        return np.ones(n, dtype=bool)
    if plan.test_fraction <= 0:
        return np.zeros(n, dtype=bool)
    return np.random.default_rng([plan.seed, 11, chunk.index]).random(n) < plan.test_fraction


def sample_positions(chunk: Chunk, y: np.ndarray, weight: np.ndarray | None, plan: ChunkPlan,
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """The train rows kept by sampling (positions, in order) and their loss weights (None: equal)."""
    s, n = plan.sample, len(y)
    seed = plan.seed if s.seed is None else s.seed
    rng = np.random.default_rng([seed, 23, chunk.index])
    if s.method == "none":
        return np.arange(n), None
    if s.method == "uniform":
        return np.flatnonzero(rng.random(n) < s.ratio), None
    if s.method == "stratified":
        picked, weights = [], []
        draws = rng.random(n)  # one per row, so a row's fate does not depend on the other classes
        for label in np.unique(y):
            rows = np.flatnonzero(y == label)
            ratio = float(s.per_class.get(int(label), s.ratio)) if s.per_class else s.ratio
            # exactly round(ratio * count) of each class (rounded at random, so the expectation is exact)
            take = int(np.floor(ratio * len(rows) + np.random.default_rng([seed, 29, chunk.index, int(label)])
                                .random()))
            chosen = rows[np.argsort(draws[rows], kind="stable")[:take]]
            picked.append(chosen)
            weights.append(np.full(len(chosen), plan.sample_fit.get("scale", 1.0) / ratio if ratio else 0.0))
        order = np.argsort(np.concatenate(picked), kind="stable") if picked else np.zeros(0, dtype=np.int64)
        positions = np.concatenate(picked)[order] if picked else np.zeros(0, dtype=np.int64)
        return positions, (np.concatenate(weights)[order] if s.per_class else None)
    # importance: row i kept with probability p_i = min(1, ratio * N * w_i / W), weighted ratio / p_i,
    # so the weighted loss of the sample has the whole data set's mean as its expectation
    total, rows = plan.sample_fit["weight_total"], plan.sample_fit["train_rows"]
    p = np.minimum(1.0, s.ratio * rows * weight / total) if total > 0 else np.zeros(n)
    kept = np.flatnonzero(rng.random(n) < p)
    return kept, s.ratio / p[kept]


def check_weights(chunk: Chunk, weight: np.ndarray | None, column: str | None) -> None:
    if weight is None:
        return
    bad = ~(np.isfinite(weight) & (weight >= 0))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataFileError(f"{chunk.place()}, row {chunk.start + row}, column {column!r}: weight "
                            f"{weight[row]!r} must be finite and >= 0")


@dataclass
class SplitRows:
    """A chunk's labelled rows as the plan fixes them: which are test rows, which the fix keeps."""

    raw: RawChunk  # the labelled rows as read
    no_label: int  # rows dropped for having no label
    is_test: np.ndarray
    x: np.ndarray  # the fixed features (as read in the first pass)
    keep: np.ndarray  # rows the fix keeps (first pass: the complete ones)

    @property
    def train(self) -> np.ndarray:
        return self.keep & ~self.is_test


def split(raw: RawChunk, chunk: Chunk, plan: ChunkPlan, role: str, counts: dict | None = None) -> SplitRows:
    """The one place that decides a chunk's test and kept rows, for the passes and the reads alike (so
    what a worker reads is what the passes counted). Without a fix, the rows are as read and the kept
    ones are those with every feature finite."""
    raw, no_label = labelled(raw, plan)
    is_test = test_rows(chunk, len(raw.y), plan, role)
    if plan.fix is None:
        x, keep = raw.x, np.isfinite(raw.x).all(axis=1)
    else:
        x, keep = plan.fix.apply(raw.x, counts)
    return SplitRows(raw, no_label, is_test, x, keep)


def chunk_rows(raw: RawChunk, chunk: Chunk, plan: ChunkPlan, role: str, rows: str = TRAIN) -> ChunkRows:
    """A chunk's ``rows`` (train: split off, fixed, sampled; test: split off and fixed) of a chunk of
    the ``role`` data set (a test set's chunks hold only test rows)."""
    parts = split(raw, chunk, plan, role)
    if rows == TEST:
        picked, weight = np.flatnonzero(parts.keep & parts.is_test), None
    else:
        picked, weight = sampled_train(parts, chunk, plan)
    return ChunkRows(parts.x[picked], parts.raw.y[picked], weight)


def sampled_train(parts: SplitRows, chunk: Chunk, plan: ChunkPlan) -> tuple[np.ndarray, np.ndarray | None]:
    """The train rows sampling keeps (row positions in the chunk) and their loss weights."""
    rows = np.flatnonzero(parts.train)
    weight = None if parts.raw.weight is None else parts.raw.weight[rows]
    positions, weights = sample_positions(chunk, parts.raw.y[rows], weight, plan)
    return rows[positions], weights


def summarize(raw: RawChunk, chunk: Chunk, plan: ChunkPlan, role: str, columns: list[str], *,
              class_cov: bool = False, edges: list | None = None, label_edges: np.ndarray | None = None,
              weight_column: str | None = None, sketch_k: int = 2048) -> Summary:
    """One chunk's statistics for a pass. Without a fix (the first pass): raw profiles of the train
    and test rows, label counts, the weight total, and moments of the complete train rows. With one:
    the fix's counts over every row, and moments, ranges, class moments and binned counts of the
    fixed train rows."""
    counts: dict = {}
    parts = split(raw, chunk, plan, role, counts)
    raw, is_test, x, keep = parts.raw, parts.is_test, parts.x, parts.keep
    check_weights(chunk, raw.weight, weight_column)
    out = Summary(list(columns), label_missing=parts.no_label)
    if plan.fix is None:
        out.train = ColumnProfile.of(raw.x[~is_test], sketch=True, k=sketch_k, seed=chunk.index)
        out.test = ColumnProfile.of(raw.x[is_test], sketch=False)
        if raw.weight is not None:
            out.weight_total = float(raw.weight[~is_test].sum())
        if not plan.classify:
            out.label_sketch = QuantileSketch(sketch_k, seed=chunk.index)
            out.label_sketch.add(raw.y[~is_test][np.isfinite(raw.y[~is_test])])
    else:
        out.counts = counts
    train = parts.train
    if plan.classify:
        out.labels = Counter({int(k): int(v) for k, v in zip(*np.unique(raw.y[~is_test], return_counts=True))})
        out.test_labels = Counter({int(k): int(v) for k, v in zip(*np.unique(raw.y[is_test], return_counts=True))})
    xt, yt = x[train], raw.y[train].astype(np.float64)
    out.fixed = Moments.of(np.column_stack([xt, yt]))
    if len(xt):
        out.fixed_min, out.fixed_max = xt.min(axis=0), xt.max(axis=0)
    else:
        out.fixed_min, out.fixed_max = np.full(len(columns), np.inf), np.full(len(columns), -np.inf)
    if plan.classify:
        for label in np.unique(yt):
            mine = yt == label
            out.class_moments[int(label)] = Moments.of(xt[mine], cov=class_cov)
    if edges is not None:
        groups = yt.astype(np.int64) if plan.classify else np.searchsorted(label_edges, yt, side="right")
        width = max(len(e) for e in edges) + 1
        for group in np.unique(groups):
            rows = xt[groups == group]
            table = np.zeros((len(columns), width), dtype=np.int64)
            for j, e in enumerate(edges):
                table[j] += np.bincount(np.searchsorted(e, rows[:, j], side="right"), minlength=width)[:width]
            out.bins[int(group)] = table
    # importance sampling cannot count its rows before the first pass has the total weight
    sampled = len(sampled_train(parts, chunk, plan)[0]) \
        if plan.sample.method != "importance" or plan.sample_fit else None
    out.kept = {(role, chunk.index): (sampled, int((keep & is_test).sum()))}
    return out

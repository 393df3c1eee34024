"""Fit the data transform from merged statistics: the quality fix, scaling, feature scores, PCA and LDA.

Everything here reads ``Summary`` objects (worker/data/colstats.py) and never a
row of data, so the fit is the same whether the statistics came from one
process or from a hundred chunks on ten workers. The formulas are the ones
scikit-learn uses (tests/test_data_stats.py checks each against it):

- mean fill = ``SimpleImputer(strategy="mean")``; median fill comes from the
  merged sketch, within its stated rank error;
- ``MinMaxScaler``, ``StandardScaler`` (population std; a constant column is
  left unscaled), ``Normalizer`` (L2 rows);
- ``chi2``: class sums of the (non-negative) features against their expected
  values; ``r_regression``: Pearson r with the label; mutual information of
  each binned feature with the label, as ``mutual_info_score`` on the same bins;
- PCA: the eigenvectors of the covariance, largest first; explained variance
  with ``n - 1`` as sklearn reports it;
- LDA (``solver="eigen"``): the generalized eigenvectors of the between-class
  scatter against the within-class one, both from merged class moments.
"""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from .colstats import Summary
from .config import DataConfig
from .transform import FeatureTransform, QualityFix


class DataQualityError(ConfigError):
    """The data breaks a quality rule the job set (or the default one: no missing values)."""


def missing_counts(first: Summary) -> np.ndarray:
    """Per feature column, missing plus infinite values over every row (train and test)."""
    total = first.train.missing + first.train.infinite
    if first.test is not None:
        total = total + first.test.missing + first.test.infinite
    return total


def fit_fix(config: DataConfig, first: Summary) -> QualityFix:
    """The quality fix from the first pass's raw statistics of the train rows."""
    q, columns, train = config.quality, first.columns, first.train
    missing = missing_counts(first)
    fix = QualityFix(list(columns))
    policy = q.missing.policy
    if missing.any() and policy == "error":
        named = ", ".join(f"{c!r}: {int(n)}" for c, n in zip(columns, missing) if n)
        raise DataQualityError(
            f"data has missing values (null, NaN or inf) in feature columns ({named}); set "
            f"data.quality.missing.policy to drop, mean, median or constant")
    # The fix holds its rule for every column, also one with nothing missing here: the transform also
    # serves rows the job never saw (an exported model's inputs).
    if policy == "drop":
        fix.drop_missing = True
    elif policy != "error":
        if policy == "mean":
            fill = train.mean.copy()
        elif policy == "median":
            fill = train.quantiles(0.5)
        else:
            fill = np.full(len(columns), float(q.missing.value))
        empty = (train.count == 0) & (missing > 0)
        if empty.any() and policy != "constant":
            raise DataQualityError(f"column {columns[int(np.argmax(empty))]!r} has no finite value in the "
                                   f"train rows to fill with: use policy constant or drop")
        fix.fill = fill
    if q.outliers.rule != "none":
        t = q.outliers.limit
        if q.outliers.rule == "zscore":
            std = train.std()
            lower, upper = train.mean - t * std, train.mean + t * std
        else:
            q1, q3 = train.quantiles(0.25), train.quantiles(0.75)
            lower, upper = q1 - t * (q3 - q1), q3 + t * (q3 - q1)
        constant = ~(upper > lower)  # a constant column (or an empty one) has no outliers
        fix.lower = np.where(constant, -np.inf, lower)
        fix.upper = np.where(constant, np.inf, upper)
        fix.outliers = q.outliers.policy
    return fix


def fix_changes_rows(fix: QualityFix, first: Summary) -> bool:
    """Whether the fix changes any value or row of this data (else the first pass's statistics are final)."""
    missing = bool(missing_counts(first).any())
    return fix.lower is not None or ((fix.drop_missing or fix.fill is not None) and missing)


def bin_edges(first: Summary, bins: int) -> list[np.ndarray]:
    """Equal-frequency bin edges per feature, from the merged sketches of the train rows."""
    qs = np.arange(1, bins) / bins
    return [np.unique(s.quantiles(qs)) for s in first.train.sketches]


def label_edges(first: Summary, bins: int) -> np.ndarray | None:
    """A numeric label's bin edges, for mutual information with a regression target."""
    if first.label_sketch is None:
        return None
    return np.unique(first.label_sketch.quantiles(np.arange(1, bins) / bins))


# ---- the feature transform ------------------------------------------------------------


def fit_features(config: DataConfig, final: Summary) -> FeatureTransform:
    """Scaling, selection, generation and normalization, from the final pass's fixed train rows."""
    columns = final.columns
    d = len(columns)
    moments = final.fixed
    if moments is None or moments.n == 0:
        raise DataQualityError("no train rows are left after the quality fixes and the split")
    mean, cov = moments.mean[:d], moments.covariance()[:d, :d]
    lo, hi = final.fixed_min[:d], final.fixed_max[:d]
    out = FeatureTransform(list(columns), normalize=config.normalize == "l2")
    info: dict = {}
    keep = np.arange(d)
    if config.quality.constant == "drop":
        constant = ~(hi > lo)
        keep = keep[~constant]
        info["constant_dropped"] = [columns[i] for i in np.flatnonzero(constant)]
        if not len(keep):
            raise DataQualityError("every feature column is constant over the train rows")
    offset, scale = np.zeros(d), np.ones(d)
    if config.scale == "minmax":
        offset, scale = lo.copy(), np.where(hi > lo, hi - lo, 1.0)
    elif config.scale == "standard":
        std = np.sqrt(np.diag(cov))
        offset, scale = mean.copy(), np.where(std > 0, std, 1.0)
    if config.select.method != "none":
        scores = feature_scores(config, final, offset, scale)[keep]
        order = np.argsort(-np.nan_to_num(np.abs(scores), nan=-np.inf), kind="stable")
        k = min(config.select.k, len(keep))
        info["scores"] = {columns[i]: _num(s) for i, s in zip(keep, scores)}
        keep = np.sort(keep[order[:k]])
        info["selected"] = [columns[i] for i in keep]
    if len(keep) < d:
        out.keep = keep.tolist()
    if config.scale != "none":
        out.offset, out.scale = offset[keep], scale[keep]
    if config.generate.method != "none":
        mean_k = (mean[keep] - offset[keep]) / scale[keep]
        cov_k = cov[np.ix_(keep, keep)] / np.outer(scale[keep], scale[keep])
        if config.generate.method == "pca":
            matrix, explained = pca(cov_k, moments.n, config.generate.k)
            info["explained_variance"] = explained["variance"]
            info["explained_variance_ratio"] = explained["ratio"]
        else:
            matrix, ratio = lda(final, keep, offset, scale, config.generate.k)
            info["explained_variance_ratio"] = ratio
        out.project_mean, out.project = mean_k, matrix
    out.info = info
    return out


def _num(x) -> float | None:
    return None if not np.isfinite(x) else float(x)


def feature_scores(config: DataConfig, final: Summary, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    method = config.select.method
    d = len(final.columns)
    if method == "pearson":
        return pearson_r(final.fixed.covariance(), d)
    if not final.labels and method == "chi2":
        raise ConfigError("select.method chi2 needs class labels (an integer label column)")
    if method == "chi2":
        return chi2(final, offset, scale)
    return mutual_info(final, d)


def chi2(final: Summary, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """sklearn.feature_selection.chi2 on the scaled features: observed class sums against
    class frequency times the feature's total."""
    d = len(final.columns)
    low = (final.fixed_min[:d] - offset) / scale
    if (low < -1e-9).any():
        column = final.columns[int(np.argmax(low < -1e-9))]
        raise ConfigError(f"select.method chi2 needs non-negative features, and column {column!r} has negative "
                          f"values after scaling: use scale: minmax (or none for counts)")
    classes = sorted(final.class_moments)
    observed = np.stack([(final.class_moments[c].sums[:d] - final.class_moments[c].n * offset) / scale
                         for c in classes])
    counts = np.array([final.class_moments[c].n for c in classes], dtype=np.float64)
    expected = np.outer(counts / counts.sum(), observed.sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((observed - expected) ** 2 / expected).sum(axis=0)


def pearson_r(cov: np.ndarray, d: int) -> np.ndarray:
    """Pearson r of each feature with the label (the last column of the fixed moments)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov[:d, d] / np.sqrt(np.diag(cov)[:d] * cov[d, d])


def mutual_info(final: Summary, d: int) -> np.ndarray:
    """Mutual information (nats) of each binned feature with the label, from the merged counts."""
    if not final.bins:
        raise ConfigError("mutual information needs the binned counts of a second pass")
    table = np.stack([final.bins[c] for c in sorted(final.bins)])  # (labels, features, bins)
    return np.array([contingency_mi(table[:, j, :]) for j in range(d)])


def contingency_mi(table: np.ndarray) -> float:
    """sklearn.metrics.mutual_info_score of a contingency table (rows: one labelling, columns: the other)."""
    table = np.asarray(table, dtype=np.float64)
    n = table.sum()
    if n == 0:
        return 0.0
    rows, cols = table.sum(axis=1, keepdims=True), table.sum(axis=0, keepdims=True)
    nz = table > 0
    return float(max(0.0, (table[nz] / n * np.log(table[nz] * n / (rows @ cols)[nz])).sum()))


def pca(cov: np.ndarray, n: int, k: int) -> tuple[np.ndarray, dict]:
    """The k leading eigenvectors of the (population) covariance, as columns; sklearn's explained
    variance (divided by n - 1) and ratio. Each component's sign makes its largest entry positive."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    k = min(k, cov.shape[0])
    vectors = vectors[:, :k] * np.sign(vectors[np.abs(vectors[:, :k]).argmax(axis=0), np.arange(k)])
    variance = values * n / max(1, n - 1)
    total = variance.sum()
    return vectors, {"variance": variance[:k].tolist(),
                     "ratio": (variance[:k] / total if total > 0 else np.zeros(k)).tolist()}


def lda(final: Summary, keep: np.ndarray, offset: np.ndarray, scale: np.ndarray, k: int) -> tuple[np.ndarray, list]:
    """sklearn's LinearDiscriminantAnalysis(solver="eigen") scalings from merged class moments."""
    from scipy import linalg

    classes = sorted(final.class_moments)
    if len(classes) < 2:
        raise ConfigError("generate.method lda needs at least two classes in the train rows")
    if any(final.class_moments[c].comoment is None for c in classes):
        raise ConfigError("lda needs the class co-moments (the pass ran without them)")
    n = sum(final.class_moments[c].n for c in classes)
    s = scale[keep]
    within = sum(final.class_moments[c].comoment[np.ix_(keep, keep)] for c in classes) / n / np.outer(s, s)
    total = final.fixed.comoment[np.ix_(keep, keep)] / n / np.outer(s, s)
    between = total - within
    try:
        values, vectors = linalg.eigh(between, within)
    except linalg.LinAlgError as e:
        raise DataQualityError(f"lda: the within-class scatter is singular ({e}); drop constant or duplicate "
                               f"columns (quality.constant: drop) or use pca") from None
    order = np.argsort(values)[::-1]
    k = min(k, len(classes) - 1, len(keep))
    ratio = np.sort(values / values.sum())[::-1][:k]
    return vectors[:, order][:, :k], ratio.tolist()

"""The fitted data transform: what every worker, the evaluation and an exported model apply to raw rows.

Two parts, in the order they run on a chunk:

- ``QualityFix``: fill missing values, drop rows that keep one, clip or drop
  outliers at the fitted fences. It decides which rows survive.
- ``FeatureTransform``: keep columns (constant ones dropped, the selected
  ones kept), scale them, project them (PCA / LDA), normalize rows.

Both are plain numbers (``to_dict`` / ``from_dict`` round-trip through
JSON), so the run directory's ``transform.json`` and every checkpoint hold
exactly what the workers applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _array(value) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float64)


def _plain(value):
    return None if value is None else np.asarray(value).tolist()


@dataclass
class QualityFix:
    columns: list[str]
    fill: np.ndarray | None = None  # per column: the fill for a missing value, NaN where there is none
    drop_missing: bool = False  # rows still holding a missing value are dropped (else: an error upstream)
    lower: np.ndarray | None = None  # outlier fences per column (-inf / inf: no fence)
    upper: np.ndarray | None = None
    outliers: str = "report"  # clip | drop | report

    def apply(self, x: np.ndarray, counts: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The fixed rows of ``x`` (float64, NaN for missing and inf alike) and the mask of rows kept.
        ``counts`` (if given) gains this chunk's per-column counts: filled, outliers, clipped, and
        rows dropped for a missing value or an outlier."""
        x = np.array(x, dtype=np.float64, copy=True)
        x[~np.isfinite(x)] = np.nan
        keep = np.ones(len(x), dtype=bool)
        missing = np.isnan(x)
        if self.fill is not None:
            fillable = missing & ~np.isnan(self.fill)
            x[fillable] = np.broadcast_to(self.fill, x.shape)[fillable]
            _count(counts, "filled", fillable.sum(axis=0))
            missing &= ~fillable
        if self.drop_missing:
            dropped = missing.any(axis=1)
            _count(counts, "dropped_missing", int(dropped.sum()))
            keep &= ~dropped
        if self.lower is not None:
            with np.errstate(invalid="ignore"):
                low, high = x < self.lower, x > self.upper
            out = (low | high) & keep[:, None]
            _count(counts, "outliers", out.sum(axis=0))
            if self.outliers == "clip":
                x = np.where(out, np.clip(x, self.lower, self.upper), x)
                _count(counts, "clipped", out.sum(axis=0))
            elif self.outliers == "drop":
                dropped = out.any(axis=1)
                _count(counts, "dropped_outliers", int(dropped.sum()))
                keep &= ~dropped
        return x, keep

    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "fill": _plain(self.fill), "drop_missing": self.drop_missing,
                "lower": _plain(self.lower), "upper": _plain(self.upper), "outliers": self.outliers}

    @classmethod
    def from_dict(cls, d: dict) -> QualityFix:
        return cls(list(d["columns"]), _array(d["fill"]), bool(d["drop_missing"]), _array(d["lower"]),
                   _array(d["upper"]), d["outliers"])


def _count(counts: dict | None, name: str, value) -> None:
    if counts is not None:
        counts[name] = counts[name] + value if name in counts else value


@dataclass
class FeatureTransform:
    columns: list[str]  # the input columns, in order
    keep: list[int] | None = None  # the input columns kept (None: all)
    offset: np.ndarray | None = None  # scaling of the kept columns: (x - offset) / scale
    scale: np.ndarray | None = None
    project_mean: np.ndarray | None = None  # projection: (x - mean) @ matrix
    project: np.ndarray | None = None
    normalize: bool = False  # rows to unit L2 norm, last
    info: dict = field(default_factory=dict)  # what was fitted and why (scores, explained variance): reported

    @property
    def out_columns(self) -> list[str]:
        if self.project is not None:
            return [f"c{i}" for i in range(self.project.shape[1])]
        kept = range(len(self.columns)) if self.keep is None else self.keep
        return [self.columns[i] for i in kept]

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.keep is not None:
            x = x[:, self.keep]
        if self.offset is not None:
            x = (x - self.offset) / self.scale
        if self.project is not None:
            x = (x - self.project_mean) @ self.project
        if self.normalize:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.where(norms > 0, norms, 1.0)
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "keep": self.keep, "offset": _plain(self.offset),
                "scale": _plain(self.scale), "project_mean": _plain(self.project_mean),
                "project": _plain(self.project), "normalize": self.normalize, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureTransform:
        return cls(list(d["columns"]), d["keep"], _array(d["offset"]), _array(d["scale"]),
                   _array(d["project_mean"]), _array(d["project"]), bool(d["normalize"]), dict(d.get("info", {})))


@dataclass
class DataTransform:
    """The whole fitted transform of a job's data: quality fix, then features."""

    fix: QualityFix
    features: FeatureTransform

    def apply(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows -> (model inputs of the rows kept, the mask of rows kept)."""
        fixed, keep = self.fix.apply(x)
        return self.features.apply(fixed[keep]), keep

    def to_dict(self) -> dict:
        return {"fix": self.fix.to_dict(), "features": self.features.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> DataTransform:
        return cls(QualityFix.from_dict(d["fix"]), FeatureTransform.from_dict(d["features"]))

    @classmethod
    def identity(cls, columns: list[str]) -> DataTransform:
        return cls(QualityFix(list(columns)), FeatureTransform(list(columns)))

"""The job's ``data:`` section for data read in chunks, and what is done to it before a batch.

::

    data:
      path: data/clicks/            # a .parquet file, a directory, a glob, or a URI pyarrow reads (s3://...)
      label: label
      features: [f0, f1, f2]        # default: every numeric column but the label and the weight
      chunk_rows: 65536             # a chunk is a row group, or a range of at most this many of its rows
      test_fraction: 0.2            # rows held out per chunk, seeded (or test: another path)
      quality:
        missing: {policy: mean}     # error | drop | mean | median | constant (with value)
        outliers: {rule: iqr, threshold: 1.5, policy: clip}   # rule none | zscore | iqr; policy clip | drop | report
        constant: drop              # keep | drop constant columns
      sample: {method: stratified, ratio: 0.5}   # none | uniform | stratified | importance (weight: column)
      scale: standard               # none | minmax | standard
      select: {method: mutual_info, k: 8, bins: 16}   # none | chi2 | pearson | mutual_info
      generate: {method: pca, k: 4}                   # none | pca | lda
      normalize: l2                 # none | l2 (rows, last)

The steps run in that order: quality fixes, the train/test split, sampling
(train only), scaling, feature selection, feature generation, normalization.
Each is fitted on the train rows, from statistics merged across chunks
(worker/data/colstats.py), and applied the same way to every batch, at evaluation
and by whatever loads the run's ``transform.json``.

``x``/``y`` (``.npy`` files, read through memory maps) may stand in for
``path``; then the columns are named ``x0``, ``x1``, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ...settings import build, number, require

MISSING_POLICIES = ("error", "drop", "mean", "median", "constant")
OUTLIER_RULES = ("none", "zscore", "iqr")
OUTLIER_POLICIES = ("clip", "drop", "report")
SAMPLE_METHODS = ("none", "uniform", "stratified", "importance")
SCALERS = ("none", "minmax", "standard")
SELECTORS = ("none", "chi2", "pearson", "mutual_info")
GENERATORS = ("none", "pca", "lda")
NORMALIZERS = ("none", "l2")

#: the keys of a data mapping that configure the pipeline (beside the ones that name the source)
PIPELINE_KEYS = ("features", "weight", "chunk_rows", "test_fraction", "quality", "sample", "scale", "select",
                 "generate", "normalize")
SOURCE_KEYS = ("path", "label", "x", "y", "test")


def _one_of(value: Any, allowed: tuple, name: str) -> None:
    require(value in allowed, f"{name} ({value!r}) must be one of {', '.join(allowed)}")


@dataclass(frozen=True)
class MissingConfig:
    policy: str = "error"  # what a missing value (null, NaN or inf) in a feature does
    value: float = 0.0  # the fill for policy constant

    def __post_init__(self) -> None:
        _one_of(self.policy, MISSING_POLICIES, "missing.policy")
        number(self.value, "missing.value")


@dataclass(frozen=True)
class OutlierConfig:
    rule: str = "none"
    threshold: float | None = None  # zscore: |z| above it (3); iqr: beyond it times the IQR past the quartiles (1.5)
    policy: str = "clip"  # clip to the fences, drop the row, or only report

    def __post_init__(self) -> None:
        _one_of(self.rule, OUTLIER_RULES, "outliers.rule")
        _one_of(self.policy, OUTLIER_POLICIES, "outliers.policy")
        if self.threshold is not None:
            number(self.threshold, "outliers.threshold", minimum=0, exclusive=True)

    @property
    def limit(self) -> float:
        return self.threshold if self.threshold is not None else (3.0 if self.rule == "zscore" else 1.5)


@dataclass(frozen=True)
class QualityConfig:
    missing: MissingConfig = field(default_factory=MissingConfig)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)
    constant: str = "keep"  # keep | drop columns with one value over the train rows

    def __post_init__(self) -> None:
        _one_of(self.constant, ("keep", "drop"), "quality.constant")


@dataclass(frozen=True)
class SampleConfig:
    method: str = "none"
    ratio: float = 1.0  # the expected fraction of train rows kept (stratified: of every class)
    per_class: Mapping[Any, float] = field(default_factory=dict)  # stratified: class -> its own ratio
    weight: str | None = None  # importance: the column of non-negative weights
    seed: int | None = None  # default: the job's seed

    def __post_init__(self) -> None:
        _one_of(self.method, SAMPLE_METHODS, "sample.method")
        number(self.ratio, "sample.ratio", minimum=0, exclusive=True)
        require(self.ratio <= 1, f"sample.ratio ({self.ratio!r}) must be <= 1")
        require(isinstance(self.per_class, Mapping), f"sample.per_class ({self.per_class!r}) must map class to ratio")
        # JSON (config.json, read back by --resume) keeps mapping keys as strings: "3" is class 3
        object.__setattr__(self, "per_class", {
            int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v for k, v in self.per_class.items()})
        for label, ratio in self.per_class.items():
            number(label, f"sample.per_class key {label!r}", integer=True)
            number(ratio, f"sample.per_class[{label}]", minimum=0)
            require(ratio <= 1, f"sample.per_class[{label}] ({ratio!r}) must be <= 1")
        require(not self.per_class or self.method == "stratified", "sample.per_class needs method stratified")
        require((self.weight is not None) == (self.method == "importance"),
                "sample.weight (a column of weights) goes with method importance, and only with it")
        if self.seed is not None:
            number(self.seed, "sample.seed", minimum=0, integer=True)


@dataclass(frozen=True)
class SelectConfig:
    method: str = "none"
    k: int | None = None  # keep the k best features
    bins: int = 16  # mutual_info: equal-frequency bins per feature, edges from the merged sketches

    def __post_init__(self) -> None:
        _one_of(self.method, SELECTORS, "select.method")
        require(self.method == "none" or self.k is not None, f"select.k is needed with method {self.method}")
        if self.k is not None:
            number(self.k, "select.k", minimum=1, integer=True)
        number(self.bins, "select.bins", minimum=2, integer=True)


@dataclass(frozen=True)
class GenerateConfig:
    method: str = "none"
    k: int | None = None  # components kept (lda: at most classes - 1)

    def __post_init__(self) -> None:
        _one_of(self.method, GENERATORS, "generate.method")
        require(self.method == "none" or self.k is not None, f"generate.k is needed with method {self.method}")
        if self.k is not None:
            number(self.k, "generate.k", minimum=1, integer=True)


@dataclass(frozen=True)
class DataConfig:
    path: Any = None  # parquet: a file, a directory, a glob or a URI
    label: str = "label"
    x: Any = None  # or .npy files (or arrays)
    y: Any = None
    test: Any = None  # a path (or x/y mapping) for the test split; None: test_fraction of the rows
    features: tuple | None = None
    chunk_rows: int = 65536
    test_fraction: float = 0.2
    quality: QualityConfig = field(default_factory=QualityConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    scale: str = "none"
    select: SelectConfig = field(default_factory=SelectConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    normalize: str = "none"

    def __post_init__(self) -> None:
        require((self.path is None) != (self.x is None),
                "give either path (Parquet files) or x and y (.npy files or arrays)")
        require((self.x is None) == (self.y is None), "x and y go together")
        number(self.chunk_rows, "chunk_rows", minimum=1, integer=True)
        number(self.test_fraction, "test_fraction", minimum=0)
        require(self.test_fraction < 1, f"test_fraction ({self.test_fraction!r}) must be < 1")
        _one_of(self.scale, SCALERS, "scale")
        _one_of(self.normalize, NORMALIZERS, "normalize")
        if self.features is not None:
            require(isinstance(self.features, (list, tuple)) and self.features
                    and all(isinstance(f, str) for f in self.features),
                    f"features ({self.features!r}) must be a non-empty list of column names")
            object.__setattr__(self, "features", tuple(self.features))
            require(self.label not in self.features, f"features must not hold the label column {self.label!r}")

    @property
    def needs_fit(self) -> bool:
        """Whether anything is fitted from statistics of the data (else the first pass is all there is)."""
        return (self.scale != "none" or self.select.method != "none" or self.generate.method != "none"
                or self.quality.missing.policy in ("mean", "median") or self.quality.outliers.rule != "none"
                or self.quality.constant == "drop")


def _is_path(text: str) -> bool:
    """A data path, not a "module:callable" name: a .parquet file, a directory, a glob or a URI."""
    import os
    import re

    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", text):
        return False
    return text.endswith(".parquet") or "://" in text or any(c in text for c in "*?[") or os.path.isdir(text)


def is_pipeline_spec(spec: Any) -> bool:
    """Whether a data spec is for chunked reading: a Parquet path, .npy files, or pipeline keys."""
    import os

    if isinstance(spec, DataConfig):
        return True
    if isinstance(spec, (str, os.PathLike)):
        return _is_path(os.fspath(spec))
    if not isinstance(spec, Mapping) or "train" in spec:
        return False
    if any(key in spec for key in PIPELINE_KEYS) or "path" in spec:
        return True
    return "x" in spec and isinstance(spec["x"], (str, os.PathLike))


def data_config(spec: Any, where: str = "data") -> DataConfig:
    """``spec`` (a mapping, a DataConfig, or a parquet path) as a checked DataConfig."""
    import os

    if isinstance(spec, DataConfig):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        spec = {"path": os.fspath(spec)}
    return build(DataConfig, spec, where)

"""Data sources, train/test splits, and the per-epoch sharding of examples.

The driver calls ``resolve_data`` once; the ``Splits`` it returns are sent to
every worker, so sources hold numpy arrays (or a picklable torch Dataset) and
nothing that must be reopened. A worker asks an ``EpochSharder`` for its
example indices and feeds each batch of indices to ``source.batch``.

Forms ``resolve_data`` accepts, for ``spec`` and for ``test``:

- a callable (called with no arguments) or a ``"module:callable"`` string;
  the return value is any form below;
- ``(x, y)``: a tuple or list of two arrays of equal first dimension;
- a map-style ``torch.utils.data.Dataset`` whose items are ``(x, y)``;
- a torch ``IterableDataset`` of ``(x, y)`` items, or a Ray Data ``Dataset``
  (target column ``y`` or ``label``): streams, read in order and replayed by
  position (stream.py);
- ``{"train": form, "test": form}`` (``test`` optional; only in ``spec``);
- ``{"x": "x.npy", "y": "y.npy"}`` (numpy files, or arrays);
- a Parquet path (a file, a directory, a glob, a URI) or a data section
  ``{"path": ..., "label": ..., ...}`` (worker/data/config.py): read in
  chunks, never whole, through the fitted pipeline (worker/data/pipeline.py);
- a ``DataSource``, passed through.

Dtypes from arrays: floating -> float32, integer and bool -> int64 (class
labels for cross-entropy; token ids). Cast integer features such as uint8
pixels to float yourself if the model expects floats.
"""

from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, default_collate

from .structure import float64_to_float32
from .stream import StreamSource, is_ray_dataset, ray_dataset_source

from ...errors import ConfigError, ShapeError
from .config import DataConfig, data_config, is_pipeline_spec
from ..imports import import_object


@runtime_checkable
class DataSource(Protocol):
    """Examples addressed by index 0..len-1."""

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` for the examples at ``indices``."""
        ...


def _tensor_dtype(a: np.ndarray, name: str) -> np.dtype:
    if np.issubdtype(a.dtype, np.floating):
        return np.dtype(np.float32)
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return np.dtype(np.int64)
    raise ShapeError(f"{name} dtype ({a.dtype}) must be floating, integer or bool")


class ArraySource:
    """In-memory ``x`` and ``y`` arrays; converted once to float32 / int64."""

    def __init__(self, x: Any, y: Any):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 0 or y.ndim == 0:
            raise ShapeError(f"x and y must have a first dimension, got shapes {x.shape} and {y.shape}")
        if len(x) != len(y):
            raise ShapeError(f"x ({len(x)} examples) and y ({len(y)} examples) must have equal lengths")
        # Contiguous copies in the final dtype: batch() then only gathers rows.
        self.x = np.ascontiguousarray(x, dtype=_tensor_dtype(x, "x"))
        self.y = np.ascontiguousarray(y, dtype=_tensor_dtype(y, "y"))

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self.x[indices]), torch.from_numpy(self.y[indices])

    def subset(self, indices: np.ndarray) -> ArraySource:
        """The examples at ``indices`` as their own arrays (pickles only those)."""
        return ArraySource(self.x[indices], self.y[indices])

    def __repr__(self) -> str:
        return f"ArraySource(x={self.x.dtype}{list(self.x.shape)}, y={self.y.dtype}{list(self.y.shape)})"


class TorchDatasetSource:
    """A map-style torch Dataset of ``(x, y)`` items, collated by default_collate; x and y may be
    tensors, tuples, lists, dicts and nests of them (worker/loop/batches.py calls the model with them).

    float64 tensors (what Python floats collate to) become float32, matching
    ArraySource.
    """

    def __init__(self, dataset: Dataset):
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            name = type(dataset).__name__
            raise ConfigError(f"dataset ({name}) must be map-style, with __len__ and __getitem__")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.dataset[int(i)] for i in np.asarray(indices)]
        for i, item in zip(indices, items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ShapeError(f"dataset item {int(i)} ({type(item).__name__}) must be an (x, y) pair")
        x, y = default_collate(items)
        return float64_to_float32(x), float64_to_float32(y)




class SubsetSource:
    """The examples of ``base`` at ``indices``, renumbered 0..len-1."""

    def __init__(self, base: DataSource, indices: np.ndarray):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.batch(self.indices[np.asarray(indices, dtype=np.int64)])


@dataclass
class Splits:
    train: DataSource
    test: DataSource | None
    prepared: Any = None  # data read in chunks: the PreparedData (fitted transform, statistics)


_short = reprlib.Repr()
_short.maxstring = 200
_short.maxother = 80

_FORMS = (
    "a callable, a 'module:callable' string, an (x, y) pair, a map-style torch Dataset, "
    "{'train': ..., 'test': ...}, {'x': 'x.npy', 'y': 'y.npy'}, a .parquet path, "
    "{'path': 'file.parquet', 'label': column} or a DataSource"
)


def resolve_data(spec: Any, test: Any = None, *, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Turn a data spec (see the module docstring) into train and test sources.

    With no test split from ``spec`` or ``test``, ``test_fraction`` of train is
    held out by a permutation drawn from ``seed``; held-out examples are not in
    train. ``test_fraction=0`` means no test split (``Splits.test is None``).
    """
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction ({test_fraction!r}) must be in [0, 1)")
    if is_pipeline_spec(spec):  # files, read in chunks; the data section sets its own split
        if test is not None:
            raise ConfigError("test data for a data section goes in its 'test' key, not the test argument")
        from .pipeline import prepare

        config = data_config(spec)
        if not isinstance(spec, DataConfig) and "test_fraction" not in (spec if isinstance(spec, dict) else {}):
            config = replace(config, test_fraction=test_fraction)
        prepared = prepare(config, seed)
        return Splits(prepared.train, prepared.test, prepared)
    resolved = _resolve(spec, "data", splits_allowed=True)
    if isinstance(resolved, Splits):
        train, test_source = resolved.train, resolved.test
        if test is not None and test_source is not None:
            raise ConfigError("test data is given twice: in data's 'test' key and as the test argument")
    else:
        train, test_source = resolved, None
    if test is not None:
        test_source = _resolve(test, "test data", splits_allowed=False)
    if len(train) == 0:
        raise ConfigError(f"data ({_short.repr(spec)}) has no examples")
    if test_source is None and test_fraction > 0:
        return holdout(train, test_fraction, seed)
    return Splits(train, test_source)


def holdout(source: DataSource, test_fraction: float, seed: int) -> Splits:
    """Split ``source`` into disjoint train and test parts, deterministic from ``seed``."""
    if isinstance(source, StreamSource):
        raise ConfigError(f"a stream ({source!r}) has no random access to hold a test part out of: give its test "
                          "split as data={'train': ..., 'test': ...} or test_data")
    n = len(source)
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise ConfigError(f"cannot hold out {test_fraction!r} of {n} examples and keep any for training")
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted, so each split keeps the source's order (and its memory locality).
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if isinstance(source, ArraySource):
        return Splits(source.subset(train_idx), source.subset(test_idx))
    return Splits(SubsetSource(source, train_idx), SubsetSource(source, test_idx))


def _is_source(obj: Any) -> bool:
    # A class has the protocol's attributes too; only instances are sources.
    return isinstance(obj, DataSource) and not isinstance(obj, (type, Dataset))


def _resolve(spec: Any, what: str, *, splits_allowed: bool, called: bool = False) -> DataSource | Splits:
    if _is_source(spec):
        return spec
    if isinstance(spec, IterableDataset):  # a stream: read in order, replayed by position (stream.py)
        return StreamSource(spec)
    if is_ray_dataset(spec):
        label = next((c for c in ("y", "label") if c in spec.columns()), None)
        if label is None:
            raise ConfigError(f"{what}: a Ray dataset's target column must be named 'y' or 'label' (its columns:"
                              f" {', '.join(spec.columns())})")
        return ray_dataset_source(spec, label)
    if isinstance(spec, Dataset):
        return TorchDatasetSource(spec)
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if is_pipeline_spec(path):
            return _chunked({"path": path}, what)
        if ":" in path and not called:
            obj = import_object(path, what)
            # A name may point at data itself (a module-level tuple) as well as at a factory.
            data = obj() if callable(obj) and not (_is_source(obj) or isinstance(obj, Dataset)) else obj
            return _resolve(data, what, splits_allowed=splits_allowed, called=True)
    elif callable(spec) and not called:
        return _resolve(spec(), what, splits_allowed=splits_allowed, called=True)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        return ArraySource(*spec)
    elif isinstance(spec, dict):
        return _resolve_dict(spec, what, splits_allowed)
    raise ConfigError(f"{what} ({_short.repr(spec)}) must be {_FORMS}")


def _resolve_dict(spec: dict, what: str, splits_allowed: bool) -> DataSource | Splits:
    keys = set(spec)
    for allowed, needed in ((("train", "test"), "train"), (("x", "y"), "x"), (("path", "label"), "path")):
        if needed not in keys:
            continue
        unknown = sorted(str(k) for k in keys - set(allowed))
        if unknown:
            raise ConfigError(
                f"{what}: unknown key {unknown[0]!r} beside {needed!r} (allowed: {', '.join(allowed)})"
            )
        if needed == "train":
            if not splits_allowed:
                raise ConfigError(f"{what} must not itself have 'train'/'test' keys")
            train = _resolve(spec["train"], f"{what}['train']", splits_allowed=False)
            test = spec.get("test")
            if test is not None:
                test = _resolve(test, f"{what}['test']", splits_allowed=False)
            return Splits(train, test)
        if needed == "x":
            if "y" not in keys:
                raise ConfigError(f"{what}: 'x' given without 'y'")
            return ArraySource(_load_npy(spec["x"], f"{what}['x']"), _load_npy(spec["y"], f"{what}['y']"))
        return _chunked(spec, what)
    raise ConfigError(f"{what} ({_short.repr(spec)}) must be {_FORMS}")


def _load_npy(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, (str, os.PathLike)):
        return np.asarray(value)
    if not os.path.isfile(value):
        raise ConfigError(f"{what} ({os.fspath(value)!r}): no such file")
    try:
        # allow_pickle=False: a data file must never run code when loaded.
        return np.load(value, mmap_mode=None, allow_pickle=False)
    except ValueError as e:
        raise ConfigError(f"{what} ({os.fspath(value)!r}) is not a numeric .npy file: {e}") from None


def _chunked(spec: dict, what: str) -> DataSource:
    """A Parquet source inside a train/test form: every row of it, read in chunks (no split of its own)."""
    from .pipeline import prepare

    config = data_config({**spec, "test_fraction": 0} if isinstance(spec, dict) else spec, what)
    return prepare(config).train

"""Streaming sources: a torch ``IterableDataset``, or a Ray Data ``Dataset``, read in order, replayed by position.

A stream has no random access, so its epoch plan (``StreamBatches``) keeps the
stream's order: batch b of an epoch is items ``b*B .. (b+1)*B - 1``, and each
worker's stretch of the epoch is one contiguous run of batches. A worker
reads its batches from its own iterator over the stream, skipping forward to
where its next unit begins; a unit that lies behind the iterator (a new
epoch, or a dead worker's unit handed to its replacement) opens the stream
again from the start and skips to it.

The delivery guarantee: **exactly once per epoch**, provided the stream is
replayable by position, that is, every ``iter()`` of it yields the same items
in the same order (a file read in order, a generator of a fixed seed; for
Ray Data, order preserved, which the source asks for). The work queue then
knows which push carried which positions, as for data in memory. A stream
that yields different items each time (a live feed) cannot be replayed: it
gets no guarantee from this source.

What it costs: the items before a worker's stretch are read and dropped, so
with n workers each epoch reads about (n + 1) / 2 times the stream; the
stream's length is read from ``len()`` when it has one, else counted by one
pass in the driver; and there is no shuffling across the stream (shuffle
inside it, with a seed per epoch, if the model needs it).

Ray Data has its own ``streaming_split``, which hands each row to one
consumer once. It is not used: a batch held by a worker that dies is gone
with it, so a split cannot give a job's exactly-once (or even at-least-once)
delivery after a failure; and a replacement cannot take a split over
mid-epoch. A Ray Data pipeline here runs in each worker that reads it.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import default_collate

from ...errors import ConfigError, ShapeError
from .structure import float64_to_float32


class StreamBatches:
    """The epoch plan of a stream: in order, each worker's stretch contiguous (the plan the work queue takes,
    with ``stretches``, ``per_epoch``, ``batches``, ``examples``, ``chunk_ends``)."""

    chunk_ends = None

    def __init__(self, num_examples: int, num_workers: int, batch_size: int):
        self.num_examples, self.batch_size = num_examples, batch_size
        self.per_epoch = -(-num_examples // batch_size)
        bounds = [round(self.per_epoch * w / num_workers) for w in range(num_workers + 1)]
        self.stretches = [hi - lo for lo, hi in zip(bounds, bounds[1:])]

    def batches(self, unit) -> list[np.ndarray]:
        return [np.arange(b * self.batch_size, min((b + 1) * self.batch_size, self.num_examples))
                for b in range(unit.lo, unit.hi)]

    def examples(self, unit) -> int:
        return sum(len(b) for b in self.batches(unit))


class StreamSource:
    """Items ``(x, y)`` of a replayable stream, addressed by position (a DataSource whose ``batch`` wants
    ascending positions, as ``StreamBatches`` hands them out)."""

    def __init__(self, stream: Any, length: int | None = None, label: str | None = None):
        self.stream = stream
        self.label = label  # Ray Data: the column that holds the target
        self.length = length if length is not None else _length(stream)
        if self.length == 0:
            raise ConfigError(f"the stream ({type(stream).__name__}) yields no items")
        self._reset()

    def _reset(self) -> None:
        self._iterator: Iterator | None = None
        self._position = 0  # the position of the item the iterator yields next
        self.opened = 0  # how often the stream was opened (read from its start) in this process
        self.read = 0  # items read, dropped ones included

    def __getstate__(self) -> dict:  # an open iterator stays where it was opened
        state = dict(self.__dict__)
        state["_iterator"] = None
        state["_position"] = 0
        return state

    def __len__(self) -> int:
        return self.length

    def epoch_batches(self, num_workers: int, batch_size: int, seed: int = 0) -> StreamBatches:
        return StreamBatches(self.length, num_workers, batch_size)

    def batch(self, indices: np.ndarray) -> tuple:
        positions = np.asarray(indices, dtype=np.int64)
        if len(positions) and (np.diff(positions) <= 0).any():
            raise ShapeError("a stream is read in order: a batch's positions must ascend")
        items = [self._at(int(p)) for p in positions]
        for p, item in zip(positions, items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ShapeError(f"stream item {int(p)} ({type(item).__name__}) must be an (x, y) pair")
        x, y = default_collate(items)
        return float64_to_float32(x), float64_to_float32(y)

    def _at(self, position: int) -> Any:
        if position >= self.length:
            raise ShapeError(f"position {position} is past the stream's {self.length} items")
        if self._iterator is None or position < self._position:  # behind us: read the stream again from its start
            self._iterator, self._position = iter(self._items()), 0
            self.opened += 1
        while True:
            try:
                item = next(self._iterator)
            except StopIteration:
                raise ShapeError(f"the stream ended after {self._position} items, but its length was "
                                 f"{self.length}: it is not replayable as it was counted") from None
            self._position += 1
            self.read += 1
            if self._position - 1 == position:
                return item

    def _items(self) -> Iterator:
        if self.label is None:
            return iter(self.stream)
        return (_row_item(row, self.label) for row in self.stream.iter_rows())

    def __repr__(self) -> str:
        return f"StreamSource({type(self.stream).__name__}, {self.length} items)"


def ray_dataset_source(dataset: Any, label: str) -> StreamSource:
    """A Ray Data ``Dataset`` of rows, ``label`` the target column; order preserved, so it replays."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    columns = dataset.columns()
    if label not in columns:
        raise ConfigError(f"the Ray dataset has no label column {label!r} (its columns: {', '.join(columns)})")
    return StreamSource(dataset, dataset.count(), label=label)


def is_ray_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("ray.data") and hasattr(obj, "iter_rows") and hasattr(obj, "count")


def _row_item(row: dict, label: str) -> tuple:
    """A Ray Data row as ``(inputs, target)``: the one other column as it is, several as a dict."""
    inputs = {k: _tensor(v) for k, v in row.items() if k != label}
    return (next(iter(inputs.values())) if len(inputs) == 1 else inputs), _tensor(row[label])


def _tensor(value: Any) -> Any:
    return torch.as_tensor(np.asarray(value)) if not isinstance(value, (str, bytes)) else value


def _length(stream: Any) -> int:
    try:
        return len(stream)
    except TypeError:  # no len(): one pass counts it
        return sum(1 for _ in stream)

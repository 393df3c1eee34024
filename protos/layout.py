"""The flat-buffer layout: which tensor lives at which offset of a flat vector.

A model's dense parameters travel and are stored as one flat float32 vector.
``FlatLayout`` records, for each named tensor, its shape, dtype and offset in
that vector, so a receiver can check a tensor by name, dtype, shape and byte
length before it touches its own buffers. This module is the one place that
knows the layout; transports and shards ask it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import UnknownTensorError

#: Every dense buffer in the system is float32: one dtype means no per-tensor
#: casts on the hot path and byte lengths that follow from element counts.
DTYPE = np.dtype(np.float32)


def all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite: one pass and no temporary array in the common case."""
    if values.size < 1 << 16:  # small: the exact test costs less than silencing overflow warnings
        return bool(np.isfinite(values).all())
    # A sum of squares is finite only if every value is (inf and NaN propagate);
    # only when it is not (huge finite values may overflow it) is the exact test needed.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(values, values)):
            return True
    return bool(np.isfinite(values).all())


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor inside a flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int  # in elements, from the start of the flat vector

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE.itemsize

    @property
    def end(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class FlatLayout:
    """Tensors packed back to back, in order, into one flat vector."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def from_shapes(cls, named_shapes: Iterable[tuple[str, tuple[int, ...]]]) -> "FlatLayout":
        specs, offset = [], 0
        for name, shape in named_shapes:
            spec = TensorSpec(name, tuple(int(d) for d in shape), offset)
            specs.append(spec)
            offset = spec.end
        return cls(tuple(specs))

    @property
    def numel(self) -> int:
        return self.tensors[-1].end if self.tensors else 0

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE.itemsize

    def spec(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise UnknownTensorError(f"no tensor named {name!r} in the layout")

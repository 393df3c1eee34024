"""Gradient codecs: the byte layout of a compressed push.

A compressed push carries one uint8 blob per shard in place of the float32
slice. Both ends know the codec (the job's ``compression`` section) and the
slice's length ``n``, so a blob has no header and its size is fixed:
``codec.nbytes(n)``; a receiver refuses any other size before it decodes.

Layouts (little-endian) and what a round trip costs, for a slice ``x``:

- ``none``: n float32. Exact.
- ``fp16``: n IEEE half floats, rounded to nearest; values beyond +-65504
  saturate there. Relative error <= 2**-11 for |x| >= 2**-14, absolute error
  <= 2**-25 below it.
- ``bf16``: the upper 16 bits of each float32, rounded to nearest even.
  Relative error <= 2**-8.
- ``int8``: ceil(n / chunk) float32 scales, then n int8. Each chunk of
  ``chunk`` values is scaled by max|x| / 127 of that chunk and rounded, so
  the error of a value is at most half its chunk's scale: max|x| / 254.
- ``topk``: k uint32 indices (ascending), then k float32 values, where
  ``k = topk_count(n, fraction)``: the k largest |x| are sent exactly, the
  rest as zero. The worker keeps what it did not send (error feedback,
  ps/compression/encoding.py), so it is sent later rather than lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CODECS = ("none", "fp16", "bf16", "int8", "topk")
#: Values per int8 scale: 4 bytes of scale per 1 KiB of values keeps the overhead under 0.4%.
INT8_CHUNK = 1024
FP16_MAX = float(np.finfo(np.float16).max)


class CodecError(ValueError):
    """A blob that is not what its codec says: the wrong size, an index out of range, a bad scale."""


def row_codec(codec: "Codec", dim: int) -> "Codec":
    """The codec of a sparse push's rows (flattened, row after row): int8 gives every row its own scale, so
    no id's update is rounded away beside a larger one's (rows carry no error feedback: an id may not come
    back). A row of d values then costs d + 4 bytes: int8 saves bytes on rows of more than 1 value."""
    return Codec("int8", chunk=max(1, dim)) if codec.name == "int8" else codec


def topk_count(n: int, fraction: float) -> int:
    """How many values top-k sends of a slice of ``n``: at least one, at most half (then it still saves bytes)."""
    if n <= 0:
        return 0
    return max(1, min((n + 1) // 2, math.ceil(fraction * n)))


@dataclass(frozen=True)
class Codec:
    """One codec with its parameters; ``encode`` and ``decode`` are exact inverses of the layout above."""

    name: str = "none"
    fraction: float = 0.01  # topk: the share of values sent each step
    chunk: int = INT8_CHUNK  # int8: values per scale

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"codec ({self.name!r}) must be one of {', '.join(CODECS)}")
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 0.5):
            raise ValueError(f"topk fraction ({self.fraction!r}) must be in (0, 0.5]: sending more than half"
                             " the values in index-value pairs saves nothing")
        if not (isinstance(self.chunk, int) and self.chunk >= 1):
            raise ValueError(f"int8 chunk ({self.chunk!r}) must be an integer >= 1")

    @property
    def lossless(self) -> bool:
        return self.name == "none"

    def nbytes(self, n: int) -> int:
        """The blob's size for a slice of ``n`` values."""
        if self.name == "none":
            return 4 * n
        if self.name in ("fp16", "bf16"):
            return 2 * n
        if self.name == "int8":
            return 4 * (-(-n // self.chunk)) + n
        return 8 * topk_count(n, self.fraction)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """``values`` (1-D float32) as this codec's blob (uint8, ``nbytes(len(values))`` long)."""
        x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        if self.name == "none":
            return x.view(np.uint8).copy()
        if self.name == "fp16":
            return np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2").view(np.uint8)
        if self.name == "bf16":
            return _to_bf16(x).view(np.uint8)
        if self.name == "int8":
            return _int8_encode(x, self.chunk)
        return _topk_encode(x, topk_count(x.size, self.fraction))

    def decode(self, blob: np.ndarray | bytes | memoryview, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """The float32 slice a blob stands for; ``out`` (n float32) is filled when given."""
        raw = np.frombuffer(blob, dtype=np.uint8) if not isinstance(blob, np.ndarray) else blob.reshape(-1)
        if raw.dtype != np.uint8:
            raise CodecError(f"a {self.name} blob is bytes (uint8), not {raw.dtype}")
        if raw.size != self.nbytes(n):
            raise CodecError(f"a {self.name} blob of {n} values is {self.nbytes(n)} bytes, not {raw.size}")
        if out is None:
            out = np.empty(n, dtype=np.float32)
        if self.name == "none":
            out[:] = raw.view("<f4")
        elif self.name == "fp16":
            out[:] = raw.view("<f2")
        elif self.name == "bf16":
            out.view(np.uint32)[:] = raw.view("<u2").astype(np.uint32) << 16
        elif self.name == "int8":
            _int8_decode(raw, n, self.chunk, out)
        else:
            _topk_decode(raw, n, out)
        return out


def _to_bf16(x: np.ndarray) -> np.ndarray:
    bits = x.view(np.uint32)
    # round to nearest, ties to even: add 0x7FFF plus the bit that becomes the last kept one
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    # a NaN's rounding may carry into the exponent (or wrap to 0): it stays a NaN, so the shard refuses it
    return np.where(np.isnan(x), np.uint32(0x7FC0), rounded >> 16).astype("<u2")


def _int8_encode(x: np.ndarray, chunk: int) -> np.ndarray:
    n = x.size
    groups = -(-n // chunk)
    padded = np.zeros(groups * chunk, dtype=np.float32)
    padded[:n] = x
    padded = padded.reshape(groups, chunk)
    scales = (np.abs(padded).max(axis=1) / np.float32(127)).astype("<f4")
    safe = np.where(scales > 0, scales, np.float32(1))
    q = np.rint(padded / safe[:, None]).clip(-127, 127).astype(np.int8).reshape(-1)[:n]
    return np.concatenate([scales.view(np.uint8), q.view(np.uint8)])


def _int8_decode(raw: np.ndarray, n: int, chunk: int, out: np.ndarray) -> None:
    groups = -(-n // chunk)
    scales = raw[:4 * groups].view("<f4")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise CodecError("an int8 blob holds a negative or non-finite scale")
    q = raw[4 * groups:].view(np.int8)
    full = n // chunk * chunk
    out[:full].reshape(-1, chunk)[:] = q[:full].reshape(-1, chunk) * scales[:n // chunk, None]
    if full < n:
        out[full:] = q[full:] * scales[-1]


def _topk_encode(x: np.ndarray, k: int) -> np.ndarray:
    if k >= x.size:
        chosen = np.arange(x.size, dtype=np.int64)
    else:
        chosen = np.sort(np.argpartition(np.abs(x), x.size - k)[x.size - k:])
    return np.concatenate([chosen.astype("<u4").view(np.uint8), x[chosen].astype("<f4").view(np.uint8)])


def _topk_decode(raw: np.ndarray, n: int, out: np.ndarray) -> None:
    k = raw.size // 8
    idx = raw[:4 * k].view("<u4")
    if k and int(idx.max()) >= n:
        raise CodecError(f"a topk blob names index {int(idx.max())} of a slice of {n} values")
    if k > 1 and bool(np.any(idx[1:] <= idx[:-1])):
        raise CodecError("a topk blob's indices must ascend, each once")
    out[:] = 0
    out[idx] = raw[4 * k:].view("<f4")


def topk_sent(blob: np.ndarray) -> np.ndarray:
    """The indices a top-k blob carries (for error feedback: the rest stays with the worker)."""
    return blob[:blob.size // 2].view("<u4")

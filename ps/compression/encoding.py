"""Gradient compression on the worker: the job's ``compression`` section, and error feedback.

``GradCompressor.encode(grads)`` turns a worker's flat float32 gradient into
one blob per shard (protos/compression.py) for any transport to carry. With
error feedback, what a lossy codec did not send this step (top-k's dropped
values, int8's rounding) is kept on the worker and added to the next step's
gradient, so it is sent later instead of lost: the sum of what the shards
receive over T steps equals the sum of the true gradients minus one
residual, whose size does not grow with T.

``RowCompressor`` does the same for sparse pushes. ``fp16``, ``bf16`` and
``int8`` (a scale per row) encode the rows, with no error feedback (an id may never come back); ``topk`` sends the
``fraction`` of rows with the largest norms (index-value pairs would cost
more than a row's own few floats) and keeps the rest, per id, until a later
step sends them.

Nothing here touches the shards' master copy: they decode every blob into
float32 and apply it as they would an uncompressed push (ps/compression/decoding.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Any, Mapping

import numpy as np

from ...errors import ConfigError
from ...protos.compression import CODECS, INT8_CHUNK, Codec, row_codec, topk_count, topk_sent
from ..transport.contract import Encoded, EncodedRows


@dataclass(frozen=True)
class CompressionConfig:
    """``compression: fp16`` or ``compression: {codec: topk, fraction: 0.1}`` in a job."""

    codec: str = "none"  # none | fp16 | bf16 | int8 | topk
    fraction: float = 0.01  # topk: the share of values (dense) or rows (sparse) sent each step
    chunk: int = INT8_CHUNK  # int8: values per scale on dense pushes
    error_feedback: bool | None = None  # keep what was not sent for the next step; None: on for int8 and topk
    pull: str = "none"  # what gRPC pulls carry: none | fp16 | bf16 (the shards' master copy stays float32)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"compression.codec ({self.codec!r}) must be one of {', '.join(CODECS)}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0 < self.fraction <= 0.5:
            raise ConfigError(f"compression.fraction ({self.fraction!r}) must be in (0, 0.5]")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 16:
            raise ConfigError(f"compression.chunk ({self.chunk!r}) must be an integer >= 16")
        if self.pull not in ("none", "fp16", "bf16"):
            raise ConfigError(f"compression.pull ({self.pull!r}) must be none, fp16 or bf16: a pull is the"
                              " model a worker computes on, and only a rounding of it is safe")
        if self.error_feedback not in (None, True, False):
            raise ConfigError(f"compression.error_feedback ({self.error_feedback!r}) must be true or false")

    @property
    def enabled(self) -> bool:
        return self.codec != "none"

    @property
    def feedback(self) -> bool:
        if self.error_feedback is None:
            return self.codec in ("int8", "topk")
        return bool(self.error_feedback) and self.enabled

    def make_codec(self) -> Codec:
        return Codec(self.codec, float(self.fraction), int(self.chunk))


def compression_config(value: Any, where: str = "compression") -> CompressionConfig:
    """A job's ``compression`` value (None, a codec name, a mapping or a config) as a config."""
    if value is None:
        return CompressionConfig()
    if isinstance(value, CompressionConfig):
        return value
    if isinstance(value, str):
        return CompressionConfig(codec=value)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"codec", "fraction", "chunk", "error_feedback", "pull"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: chunk, codec, error_feedback,"
                              " fraction, pull)")
        return CompressionConfig(**dict(value))
    raise ConfigError(f"{where} ({value!r}) must be a codec name ({', '.join(CODECS)}) or a mapping")


class CompressionStats:
    """Bytes before and after, and the seconds spent encoding, over a worker's pushes."""

    def __init__(self) -> None:
        self.steps = 0
        self.raw_bytes = 0
        self.sent_bytes = 0
        self.encode_s = 0.0
        self.row_raw_bytes = 0
        self.row_sent_bytes = 0

    def plain(self, n: int) -> None:
        """One uncompressed push of ``n`` float32 values."""
        self.steps += 1
        self.raw_bytes += 4 * n
        self.sent_bytes += 4 * n

    def as_dict(self) -> dict:
        return {"steps": self.steps, "raw_bytes": self.raw_bytes, "sent_bytes": self.sent_bytes,
                "encode_s": round(self.encode_s, 6), "row_raw_bytes": self.row_raw_bytes,
                "row_sent_bytes": self.row_sent_bytes}


class GradCompressor:
    """Encodes a worker's dense gradient per shard, keeping the residual when error feedback is on."""

    def __init__(self, config: CompressionConfig, ranges, stats: CompressionStats | None = None,
                 to_fp16: Callable[[np.ndarray], np.ndarray] | None = None):
        """``to_fp16``: a faster encoder of the fp16 codec (the same bytes; a worker passes torch's, whose
        conversion is ~10x numpy's here, which this layer, shared with the torch-free shards, cannot import)."""
        self.config = config
        self.codec = config.make_codec()
        self._to_fp16 = to_fp16 if self.codec.name == "fp16" else None
        self.ranges = list(ranges)
        size = self.ranges[-1].hi if self.ranges else 0
        self.residual = np.zeros(size, np.float32) if config.feedback else None
        self.stats = stats or CompressionStats()

    def encode(self, grads: np.ndarray) -> Encoded:
        began = time.perf_counter()
        g = grads if self.residual is None else grads + self.residual
        blobs = []
        for r in self.ranges:
            part = g[r.lo:r.hi]
            blob = self._to_fp16(part) if self._to_fp16 is not None else self.codec.encode(part)
            if self.residual is not None:
                if self.codec.name == "topk":  # what was sent leaves the residual; the rest stays
                    kept = part.copy()
                    kept[topk_sent(blob)] = 0
                    self.residual[r.lo:r.hi] = kept
                else:
                    self.residual[r.lo:r.hi] = part - self.codec.decode(blob, part.size)
            blobs.append(blob)
        s = self.stats
        s.steps += 1
        s.raw_bytes += 4 * int(grads.size)
        s.sent_bytes += sum(int(b.size) for b in blobs)
        s.encode_s += time.perf_counter() - began
        return Encoded(tuple(blobs), self.codec.name)

    def reset(self) -> None:
        """Forget the residual: after a rollback the steps it came from are trained again."""
        if self.residual is not None:
            self.residual[:] = 0


class RowCompressor:
    """Sparse pushes: encode each shard's rows, or (topk) send the largest rows and keep the rest per id."""

    def __init__(self, config: CompressionConfig, stats: CompressionStats | None = None):
        self.config = config
        self.stats = stats or CompressionStats()
        self._held: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # topk: table -> (ids, rows) not yet sent

    def select(self, table: str, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """topk: the rows to send this step, from this step's and the held ones; others as they came."""
        self.stats.row_raw_bytes += int(rows.nbytes)
        if self.config.codec != "topk":
            return ids, rows
        held = self._held.get(table)
        if held is not None and len(held[0]):
            all_ids, where = np.unique(np.concatenate([held[0], ids]), return_inverse=True)
            summed = np.zeros((len(all_ids), rows.shape[1]), np.float32)
            np.add.at(summed, where, np.concatenate([held[1], rows]))
            ids, rows = all_ids, summed
        k = topk_count(len(ids), self.config.fraction)  # fraction <= 0.5: the same count as a dense slice's
        order = np.argsort(-np.einsum("ij,ij->i", rows, rows), kind="stable")
        send, keep = np.sort(order[:k]), np.sort(order[k:])
        self._held[table] = (ids[keep], rows[keep]) if self.config.feedback else (ids[:0], rows[:0])
        return ids[send], rows[send]

    def encode(self, rows: np.ndarray):
        """One shard's rows as they go on the wire: a blob for the value codecs, else the rows."""
        if self.config.codec in ("none", "topk"):
            self.stats.row_sent_bytes += int(rows.nbytes)
            return rows
        count, dim = rows.shape
        codec = row_codec(self.config.make_codec(), dim)
        blob = codec.encode(rows.reshape(-1))
        self.stats.row_sent_bytes += int(blob.size)
        return EncodedRows(blob, count, dim, self.config.codec)

    def reset(self) -> None:
        """Forget the held rows (after a rollback, as ``GradCompressor.reset``)."""
        self._held.clear()

    def held_rows(self) -> int:
        return sum(len(ids) for ids, _ in self._held.values())

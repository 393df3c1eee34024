"""The shard's side of gradient compression: a pushed blob back to float32, or refused by name.

A compressed push reaches the shard as a uint8 blob (protos/compression.py)
instead of a float32 slice, on every transport. ``ShardDecoder`` decodes it
before any check or update, so the master copy and the optimizer only ever
see float32, and a blob of the wrong size or with a bad index is refused
(``InputError``, reason ``codec``) and changes nothing. A plain float32 push
is taken as it is (a tool or test that speaks the uncompressed protocol
keeps working).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ...errors import InputError
from ...protos.compression import Codec, CodecError, row_codec


def is_blob(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.uint8


class ShardDecoder:
    def __init__(self, codec: Codec | None = None, pull: Codec | None = None, where: str = ""):
        self.codec = codec or Codec()
        # what gRPC pulls carry (fp16 or bf16 where the job says so): a rounded copy, the master stays float32
        self.pull = pull or Codec()
        self.where = where
        self.decode_s = 0.0  # seconds spent decoding compressed pushes
        self._out: np.ndarray | None = None  # what a dense blob is decoded into, made at the first

    def grad_nbytes(self, size: int) -> int:
        """The bytes of a compressed dense gradient of ``size`` values (what a receiver of a blob expects)."""
        return self.codec.nbytes(size)

    def row_nbytes(self, count: int, dim: int) -> int:
        """The bytes of ``count`` compressed rows of ``dim`` values."""
        return row_codec(self.codec, dim).nbytes(count * dim)

    def grad(self, grad, size: int):
        """The float32 gradient a push stands for: a blob decoded, anything else as it came. Decoded into one
        buffer kept for it (no allocation per push): the shard uses it within the same synchronous turn
        (ps/shard.py ``_push_now``: checked, then applied, or copied into its round), never after."""
        if not is_blob(grad):
            return grad
        out = self._out
        if out is None or out.size != size:  # one decoder per shard: one size, but a caller may ask another
            out = self._out = np.empty(size, np.float32)
        return self._decoded(lambda: self.codec.decode(grad, size, out), "gradient")

    def rows(self, grads, count: int, dim: int):
        """Sparse row gradients (count x dim float32) from a blob; anything else as it came."""
        if not is_blob(grads):
            return grads
        if self.codec.name in ("none", "topk"):  # topk selects rows; the rows it sends are float32
            raise InputError(f"{self.where}: compressed rows sent, but this job's codec ({self.codec.name}) sends"
                             " sparse rows as float32", "codec")
        codec = row_codec(self.codec, dim)
        return self._decoded(lambda: codec.decode(grads, count * dim).reshape(count, dim), "rows")

    def _decoded(self, decode: Callable[[], np.ndarray], what: str) -> np.ndarray:
        began = time.perf_counter()
        try:
            out = decode()
        except CodecError as e:
            raise InputError(f"{self.where}: compressed {what} refused: {e}", "codec") from None
        self.decode_s += time.perf_counter() - began
        return out

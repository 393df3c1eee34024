"""CodecMixin: a shard's side of gradient compression (a mixin of ``ParameterShard``).

A compressed push reaches the shard as a uint8 blob (protos/compression.py)
instead of a float32 slice, on every transport. The shard decodes it into
float32 before any check or update, so its master copy and its optimizer only
ever see float32, and a blob of the wrong size or with a bad index is refused
by name, counted and changes nothing. A plain float32 push is still taken as
it is (a tool or test that speaks the uncompressed protocol keeps working).
"""

from __future__ import annotations

import time

import numpy as np

from ...errors import ShapeError
from ...protos.compression import Codec, CodecError, row_codec


class CodecMixin:
    _codec: Codec
    _decode_s: float

    def _init_codec(self, codec: Codec | None, pull: Codec | None = None) -> None:
        self._codec = codec or Codec()
        # what gRPC pulls carry (fp16 or bf16 where the job says so): a rounded copy, the master stays float32
        self._pull_codec = pull or Codec()
        self._decode_s = 0.0  # seconds spent decoding compressed pushes

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def pull_codec(self) -> Codec:
        return self._pull_codec

    def grad_wire_nbytes(self) -> int:
        """The bytes of this shard's compressed dense gradient (what a receiver of a blob expects)."""
        return self._codec.nbytes(self.size)

    def row_wire_nbytes(self, count: int, dim: int) -> int:
        """The bytes of ``count`` compressed rows of ``dim`` values (``row_codec``)."""
        return row_codec(self._codec, dim).nbytes(count * dim)

    def _decode_grad(self, grad):
        """The float32 gradient a push stands for: a blob decoded, anything else as it came."""
        if not (isinstance(grad, np.ndarray) and grad.dtype == np.uint8):
            return grad
        return self._decoded(lambda: self._codec.decode(grad, self.size), "gradient")

    def _decode_rows(self, grads, count: int, dim: int):
        """Sparse row gradients (count x dim float32) from a blob; anything else as it came."""
        if not (isinstance(grads, np.ndarray) and grads.dtype == np.uint8):
            return grads
        if self._codec.name in ("none", "topk"):  # topk selects rows; the rows it sends are float32
            self.count_rejection("codec")
            raise ShapeError(f"{self!r}: compressed rows sent, but this job's codec ({self._codec.name}) sends"
                             " sparse rows as float32")
        codec = row_codec(self._codec, dim)
        return self._decoded(lambda: codec.decode(grads, count * dim).reshape(count, dim), "rows")

    def _decoded(self, decode, what: str):
        began = time.perf_counter()
        try:
            out = decode()
        except CodecError as e:
            self.count_rejection("codec")
            raise ShapeError(f"{self!r}: compressed {what} refused: {e}") from None
        self._decode_s += time.perf_counter() - began
        return out

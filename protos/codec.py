"""Tensors to and from ``TensorChunk`` messages: the only code that knows the bytes.

A tensor travels as raw little-endian float32 bytes cut into chunks of at most
``CHUNK_BYTES`` of payload, so no message nears gRPC's limit whatever the
model's size. The receiving side assembles chunks into a buffer it allocated
once and reuses (``Assembler``), checking every chunk before a byte is copied:
name, dtype, shape, offset, byte length. A bad chunk raises ``WireError``
carrying the gRPC status code the protocol assigns to it (see ps.proto).
"""

from __future__ import annotations

from typing import Iterator

import grpc
import numpy as np

from protos import ps_pb2

#: Payload bytes per chunk: well under gRPC's 4 MiB default message limit, and
#: large enough that per-message overhead is a small share of the time.
CHUNK_BYTES = 1 << 20
WIRE_DTYPE = np.dtype("<f4")
DTYPE_NAME = "float32"
#: The receive limit the servers and clients set: a chunk plus its header fits easily.
MAX_MESSAGE_BYTES = 4 * CHUNK_BYTES


class WireError(Exception):
    """A request the protocol rejects; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason  # the counter this rejection increments in the shard's stats


def chunks(name: str, values: np.ndarray, chunk_bytes: int = CHUNK_BYTES, **header) -> Iterator[ps_pb2.TensorChunk]:
    """``values`` (1-D float32) as chunks; ``header`` fields go on the first chunk only."""
    flat = np.ascontiguousarray(values, dtype=WIRE_DTYPE).reshape(-1)
    step = max(1, chunk_bytes // WIRE_DTYPE.itemsize)
    shape = [flat.size]
    raw = memoryview(flat).cast("B")
    n = flat.size
    lo = 0
    while True:
        hi = min(n, lo + step)
        chunk = ps_pb2.TensorChunk(name=name, dtype=DTYPE_NAME, shape=shape, offset=lo,
                                   data=raw[lo * 4:hi * 4].tobytes(), last=hi >= n, **(header if lo == 0 else {}))
        yield chunk
        if hi >= n:
            return
        lo = hi


class Assembler:
    """Receives one named 1-D float32 tensor of a fixed size, chunk by chunk, into a reused buffer."""

    def __init__(self, name: str, size: int, buffer: np.ndarray | None = None):
        self.name = name
        self.size = size
        # ``buffer`` lets a receiver assemble straight into its own memory (a
        # client's slice of the flat parameter vector): no copy after the last chunk.
        self.buffer = np.empty(size, dtype=np.float32) if buffer is None else buffer
        self._filled = 0

    def reset(self) -> None:
        self._filled = 0

    def add(self, chunk: ps_pb2.TensorChunk) -> bool:
        """Check and copy one chunk; True when the tensor is complete."""
        if chunk.name != self.name:
            raise WireError(grpc.StatusCode.NOT_FOUND,
                            f"unknown tensor {chunk.name!r}: this server holds {self.name!r}", "unknown_tensor")
        if chunk.dtype != DTYPE_NAME:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: expected dtype {DTYPE_NAME}, got {chunk.dtype!r}", "dtype")
        if list(chunk.shape) != [self.size]:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: expected shape [{self.size}], got {list(chunk.shape)}", "shape")
        if chunk.offset != self._filled:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: expected a chunk at offset {self._filled}, got offset {chunk.offset}", "offset")
        nbytes = len(chunk.data)
        if nbytes % WIRE_DTYPE.itemsize:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: chunk of {nbytes} bytes is not a whole number of float32 values", "byte_length")
        end = self._filled + nbytes // WIRE_DTYPE.itemsize
        if end > self.size:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: chunk ends at element {end}, past the shape [{self.size}]"
                            f" ({self.size * 4} bytes expected in all)", "byte_length")
        if chunk.last and end != self.size:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: {end * 4} bytes received for shape [{self.size}],"
                            f" expected {self.size * 4}", "byte_length")
        self.buffer[self._filled:end] = np.frombuffer(chunk.data, dtype=WIRE_DTYPE)
        self._filled = end
        return end == self.size

    def checked(self) -> np.ndarray:
        """The complete tensor, after the finiteness check a gradient must pass."""
        if not np.isfinite(self.buffer).all():
            bad = int(np.count_nonzero(~np.isfinite(self.buffer)))
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: {bad} NaN or Inf values; gradients must be finite", "non_finite")
        return self.buffer

"""Tensors to and from ``TensorChunk`` messages: the only code that knows the bytes.

A tensor travels as raw little-endian bytes (float32 for parameters and
gradients, float64 for model buffers) cut into chunks of at most
``CHUNK_BYTES`` of payload, so no message nears gRPC's limit whatever the
model's size. The receiving side assembles chunks into a buffer it allocated
once and reuses (``Assembler``), checking every chunk before a byte is copied:
name, dtype, shape, offset, byte length. A bad chunk raises ``WireError``
carrying the gRPC status code the protocol assigns to it (see ps.proto).

On the hot path the transports skip protobuf's copies of the payload:
``encode_chunks`` writes the wire bytes of the same messages with the payload
copied once, straight from the tensor, and ``parse_chunk`` reads one with its
payload left as a view of the received bytes. The bytes on the wire are
TensorChunk messages all the same; any protobuf client reads and writes them.
"""

from __future__ import annotations

from typing import Iterator

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from . import ps_pb2
from ..errors import PSError

#: Payload bytes per chunk: well under gRPC's 4 MiB default message limit, and
#: large enough that per-message overhead is a small share of the time.
CHUNK_BYTES = 1 << 20
WIRE_DTYPE = np.dtype("<f4")
DTYPE_NAME = "float32"
#: Model buffers travel as float64: exact for float16/32 statistics and integer counters.
BUFFER_DTYPE = np.dtype("<f8")
#: A compressed gradient's blob (protos/compression.py) travels as raw bytes.
BLOB_DTYPE = np.dtype("u1")
_DTYPE_NAMES = {WIRE_DTYPE: DTYPE_NAME, BUFFER_DTYPE: "float64", BLOB_DTYPE: "uint8"}
#: The receive limit the servers and clients set: a chunk plus its header fits easily, and so does a
#: sparse push of a large batch (its rows travel in one message: 16 MiB is 260,000 rows of 16 floats).
MAX_MESSAGE_BYTES = 16 * CHUNK_BYTES
#: The key of TensorChunk.data on the wire: field 5, length-delimited.
_DATA_TAG = 5 << 3 | 2


class WireError(PSError):
    """A request the protocol rejects; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason  # the counter this rejection increments in the shard's stats

    def __reduce__(self):  # three arguments, so pickling (between actors) must name them
        return type(self), (self.code, self.message, self.reason)


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


def encode_chunks(name: str, values: np.ndarray, chunk_bytes: int = CHUNK_BYTES, *, wire: np.dtype = WIRE_DTYPE,
                  **header) -> Iterator[bytes]:
    """The serialized messages of ``chunks(name, values, chunk_bytes, **header)``, payload copied once.

    Each message is its other fields, serialized by protobuf, followed by the
    ``data`` field joined straight from ``values``: no intermediate bytes and
    no second copy by a serializer. Protobuf reads fields in any order, so these
    are the same TensorChunk messages as ``chunks`` makes. Encoding the whole
    tensor before sending (``list(...)``) is a snapshot of it. ``wire`` is the
    dtype on the wire: float32, or float64 for model buffers.
    """
    wire = np.dtype(wire)
    dtype_name, size = _DTYPE_NAMES[wire], wire.itemsize
    flat = np.ascontiguousarray(values, dtype=wire).reshape(-1)
    step = max(1, chunk_bytes // size)
    raw = memoryview(flat).cast("B")
    n = flat.size
    lo = 0
    while True:
        hi = min(n, lo + step)
        if lo == 0:
            fields = ps_pb2.TensorChunk(name=name, dtype=dtype_name, shape=[n], last=hi >= n, **header)
        else:
            if lo == step:  # the fields of every chunk after the first, reused
                fields = ps_pb2.TensorChunk(name=name, dtype=dtype_name, shape=[n])
            fields.offset = lo
            fields.last = hi >= n
        head = fields.SerializeToString()
        payload = raw[lo * size:hi * size]
        yield b"".join((head, _varint(_DATA_TAG), _varint(len(payload)), payload)) if len(payload) else head
        if hi >= n:
            return
        lo = hi


class ReceivedChunk:
    """A parsed TensorChunk whose ``data`` is a memoryview of the received bytes; other fields as the message's."""

    __slots__ = ("_fields", "data")

    def __init__(self, fields: ps_pb2.TensorChunk, data: memoryview):
        self._fields = fields
        self.data = data

    def __getattr__(self, name: str):
        return getattr(self._fields, name)

    def __repr__(self) -> str:
        return f"ReceivedChunk({self._fields!r}, data=<{len(self.data)} bytes>)"


def parse_chunk(message: bytes) -> ReceivedChunk | ps_pb2.TensorChunk:
    """``TensorChunk.FromString(message)``, but the payload is not copied out of ``message``.

    Only the few bytes around the payload go through protobuf. Anything but
    plainly laid out fields is left to protobuf whole, so a malformed message
    raises exactly the ``DecodeError`` that ``FromString`` raises.
    """
    span = _data_span(message)
    if span is not None:
        start, lo, hi = span
        try:
            fields = ps_pb2.TensorChunk.FromString(message[:start] + message[hi:])
        except DecodeError:
            pass
        else:
            return ReceivedChunk(fields, memoryview(message)[lo:hi])
    return ps_pb2.TensorChunk.FromString(message)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(message: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); position -1 for a varint that is cut off or over 10 bytes."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(message))):
        byte = message[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return 0, -1


def _data_span(message: bytes) -> tuple[int, int, int] | None:
    """(where the one ``data`` field starts, where its payload starts, where it ends), or None.

    None when there is no ``data`` field, more than one, or anything but plain
    varint, fixed and length-delimited fields: protobuf parses those whole.
    """
    n = len(message)
    pos = 0
    found = None
    while pos < n:
        start = pos
        key = message[pos]  # keys and most values are one-byte varints: read those inline
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(message, pos)
            if pos < 0 or pos - start > 5:  # upb refuses keys over 5 bytes: let it say so
                return None
        wire_type = key & 7
        if key >> 3 == 0 or (key >> 3 == 5 and key != _DATA_TAG):
            return None  # field 0, or a data field of the wrong wire type: protobuf's call
        if wire_type == 0:
            if pos < n and message[pos] < 0x80:
                pos += 1
            else:
                _, pos = _read_varint(message, pos)
                if pos < 0:
                    return None
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length_at = pos
            length, pos = _read_varint(message, pos)
            if pos < 0 or pos - length_at > 5:  # an overlong length: protobuf's call, as above
                return None
            if key == _DATA_TAG:
                if found is not None:
                    return None
                found = (start, pos, pos + length)
            pos += length
        else:
            return None
    if pos != n:
        return None
    return found


class Assembler:
    """Receives one named 1-D tensor of a fixed size and dtype, chunk by chunk, into a reused buffer."""

    def __init__(self, name: str, size: int, buffer: np.ndarray | None = None, wire: np.dtype = WIRE_DTYPE):
        self.name = name
        self.size = size
        self.wire = np.dtype(wire)
        self.dtype_name = _DTYPE_NAMES[self.wire]
        # ``buffer`` lets a receiver assemble straight into its own memory (a
        # client's slice of the flat parameter vector): no copy after the last chunk.
        self.buffer = np.empty(size, dtype=self.wire.newbyteorder("=")) if buffer is None else buffer
        self._filled = 0

    def reset(self) -> None:
        self._filled = 0

    def add(self, chunk: ps_pb2.TensorChunk) -> bool:
        """Check and copy one chunk; True when the tensor is complete."""
        if chunk.name != self.name:
            raise WireError(grpc.StatusCode.NOT_FOUND,
                            f"unknown tensor {chunk.name!r}: this server holds {self.name!r}", "unknown_tensor")
        if chunk.dtype != self.dtype_name:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: expected dtype {self.dtype_name}, got {chunk.dtype!r}", "dtype")
        if list(chunk.shape) != [self.size]:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: expected shape [{self.size}], got {list(chunk.shape)}", "shape")
        if chunk.offset != self._filled:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: expected a chunk at offset {self._filled}, got offset {chunk.offset}", "offset")
        data = chunk.data  # once: a protobuf message copies its bytes on every read
        nbytes, item = len(data), self.wire.itemsize
        if nbytes % item:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: chunk of {nbytes} bytes is not a whole number of"
                            f" {self.dtype_name} values", "byte_length")
        end = self._filled + nbytes // item
        if end > self.size:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: chunk ends at element {end}, past the shape [{self.size}]"
                            f" ({self.size * item} bytes expected in all)", "byte_length")
        if chunk.last and end != self.size:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: {end * item} bytes received for shape [{self.size}],"
                            f" expected {self.size * item}", "byte_length")
        if end == self.size and not chunk.last:  # the proto: a tensor's chunks run up to the one marked last
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"tensor {self.name!r}: all {self.size * item} bytes arrived, but no chunk was marked"
                            " last", "malformed")
        self.buffer[self._filled:end] = np.frombuffer(data, dtype=self.wire)
        self._filled = end
        return end == self.size


# ---- sparse rows: ids as raw int64, rows as raw float32 --------------------------------

IDS_DTYPE = np.dtype("<i8")


def decode_ids(data: bytes) -> np.ndarray:
    """A sparse request's ids (a read-only view); INVALID_ARGUMENT unless whole int64 values."""
    if len(data) % IDS_DTYPE.itemsize:
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"ids must be raw int64 values: {len(data)} bytes is not a multiple of 8", "ids_type")
    return np.frombuffer(data, IDS_DTYPE).astype(np.int64, copy=False)


def decode_rows(data: bytes, count: int, dim: int) -> np.ndarray:
    """``count`` x ``dim`` float32 rows (a read-only view); INVALID_ARGUMENT on any other length."""
    if dim < 1 or len(data) != count * dim * WIRE_DTYPE.itemsize:
        raise WireError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"rows must be {count} x {dim} raw float32 values ({count * dim * 4} bytes), got"
                        f" {len(data)} bytes", "rows_shape")
    return np.frombuffer(data, WIRE_DTYPE).astype(np.float32, copy=False).reshape(count, dim)


def check_message_size(nbytes: int, what: str) -> None:
    """Refuse, before sending, a sparse message over the limit both sides set."""
    if nbytes > MAX_MESSAGE_BYTES - 4096:
        from ..errors import ShapeError
        raise ShapeError(f"{what} is {nbytes} bytes, over the {MAX_MESSAGE_BYTES}-byte message limit:"
                         " use smaller batches")

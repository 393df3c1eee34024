"""The same-node transport's wire: fixed-size messages on a Unix socket, tensors in shared memory.

Each shard owns one shared-memory segment per worker (``segment-<id>``, made
when that worker first connects, so workers may join mid-job). It holds,
64-byte aligned, the worker's gradient (float32), the parameters the shard
answers with (float32), the worker's model buffers (float64) and the merged
buffers the shard answers with (float64). Only the small messages below cross
the socket: a request says what is in the slot, and its reply says the answer
is. The socket message is both the lock and the wake-up, so neither side ever
reads a region the other may be writing.

Each worker also owns one segment of its own (``worker_segment_dir``, made by
the worker, one per job and worker id), holding its whole gradient and the
parameters it computes with, as one contiguous float32 vector each
(``WorkerSegment``). The worker's model trains on those very buffers, so a
plain push needs no copy in and its pull no copy out: a request flagged
``IN_SEGMENT`` says the gradient lies at the shard's range of that segment,
and the shard answers there too. The shard finds the segment by a name it
derives itself (the job's tag and the worker id), never by a path it is sent.

The shards of a job keep their dense parameters in one file of the job's
(``published_params_file``), each at its range: the model's whole parameter
vector, once. Under bsp (no quorum) nobody writes it while a worker computes
(a round steps only when every worker has pushed, and each waits for its
answer), so a worker may train on it directly, read-only: a request flagged
``PUBLISHED`` says so, and the shard writes no answer anywhere. Published once
for all readers.

Handshake: the client sends ``HELLO`` (token length, worker id) and the token;
the shard answers ``LAYOUT`` (status, parameter count, buffer count, the slot's
offset) or an error reply and closes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ALIGN = 64
HELLO = struct.Struct("<II")  # token length, worker id
LAYOUT = struct.Struct("<BxxxxxxxQQQ")  # status, parameters, buffers, slot offset (32 bytes)
# op, flags, worker, clock, pulled version, samples, loss, ahead, incarnation, seq (REGISTER, FINISH:
# incarnation only). A push's (worker, incarnation, seq) is applied once (ps/core/ledger.py). Every field
# is checked as the gRPC transport checks TensorChunk's (protos/ps.proto says what can be true); flag bits
# this wire does not define are INVALID_ARGUMENT, BUFFERS_FOLLOW to a shard without buffers NOT_FOUND.
REQUEST = struct.Struct("<BBxxIQQIfIIQ")
# status, outcome, version, and for REGISTER where the worker carries on: its completed clock and
# last applied seq (32 bytes); then MESSAGE
REPLY = struct.Struct("<BBxxxxxxQQQ")
MESSAGE = struct.Struct("<I")  # the length of the UTF-8 message that follows (0 when OK)

REGISTER, PUSH_PULL, FINISH = 1, 2, 3
# Sparse tables: rows travel on the socket itself (their count varies per step), on a connection of
# their own, so they never wait behind a dense step. After the REQUEST (op, worker, clock, samples,
# incarnation used): SPARSE, then the table's name (UTF-8), ``count`` int64 ids and, for a push,
# ``count`` x ``dim`` float32 row gradients. A pull's OK reply is followed by SPARSE_ROWS and the rows.
SPARSE_PULL, SPARSE_PUSH = 4, 5
SPARSE = struct.Struct("<IIQ")  # table name length, dim (push), id count
SPARSE_ROWS = struct.Struct("<QIxxxxQ")  # row count, dim, table version
#: The most payload one sparse request may carry; a larger one is refused and its connection closed.
MAX_SPARSE_BYTES = 1 << 28
BUFFERS_FOLLOW = 1  # request flag: the slot's buffer region holds this step's report
# request flag: the gradient region (or a sparse push's rows) holds the job's codec's blob, of the size
# the codec fixes (protos/compression.py), not float32 values
COMPRESSED = 2
# request flag: the float32 gradient lies in the worker's own segment at this shard's range, and the answer's
# parameters go there too (not into the slot)
IN_SEGMENT = 4
# request flag (with IN_SEGMENT): the worker reads the parameters where the shards publish them; write none.
# Refused unless the shard's mode keeps them still while workers compute (bsp, no quorum).
PUBLISHED = 8
OUTCOMES = ("applied", "duplicate", "stale")
#: Reply statuses, named as the gRPC transport names the same refusals.
STATUSES = {0: "OK", 1: "INVALID_ARGUMENT", 2: "NOT_FOUND", 3: "FAILED_PRECONDITION", 4: "UNAUTHENTICATED",
            5: "INTERNAL", 6: "ABORTED", 7: "OUT_OF_RANGE"}
OK, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNAUTHENTICATED, INTERNAL, ABORTED, OUT_OF_RANGE = range(8)


def segment_name(worker_id: int) -> str:
    """The file, in a shard's directory, holding one worker's regions."""
    return f"segment-{worker_id}"


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def worker_segment_dir(root: str, tag: str, worker_id: int) -> str:
    """The directory (beside the shards' own, under ``root``) holding worker ``worker_id``'s segment."""
    return f"{root}/rayps-{tag}-worker{worker_id}"


#: the segment's file, inside its directory
WORKER_SEGMENT_FILE = "segment"


def published_params_file(root: str, tag: str) -> str:
    """The file holding every shard's dense parameters, each at its range (float32, the whole vector)."""
    return f"{root}/rayps-{tag}-params"


def published_nbytes(total: int) -> int:
    return max(ALIGN, _aligned(total * 4))


@dataclass(frozen=True)
class SegmentPlace:
    """Where a shard's values lie in every worker's own segment: the job's tag names the segments,
    ``lo`` is its first value in the whole vector of ``total``."""

    tag: str
    lo: int
    total: int


@dataclass(frozen=True)
class WorkerSegment:
    """Where a worker's whole gradient and parameters lie in its own segment (byte offsets)."""

    params: int  # float32 values in the whole model

    @property
    def grad_at(self) -> int:
        return 0

    @property
    def params_at(self) -> int:
        return _aligned(self.params * 4)

    @property
    def nbytes(self) -> int:
        return max(ALIGN, self.params_at + _aligned(self.params * 4))


@dataclass(frozen=True)
class SlotLayout:
    """Where one worker's regions lie in a shard's segment (byte offsets from the slot's start)."""

    params: int  # float32 values per region
    buffers: int  # float64 values per region

    @property
    def grad_at(self) -> int:
        return 0

    @property
    def grad_nbytes(self) -> int:
        """The gradient region: float32 values, or a compressed push's blob, which is at most 4 bytes longer
        (top-k's index-value pairs for half a slice of odd length; protos/compression.py)."""
        return _aligned(self.params * 4 + 4)

    @property
    def params_at(self) -> int:
        return self.grad_nbytes

    @property
    def buffers_in_at(self) -> int:
        return self.grad_nbytes + _aligned(self.params * 4)

    @property
    def buffers_out_at(self) -> int:
        return self.buffers_in_at + _aligned(self.buffers * 8)

    @property
    def nbytes(self) -> int:
        return max(ALIGN, self.buffers_out_at + _aligned(self.buffers * 8))

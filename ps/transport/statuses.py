"""One table from the errors a shard raises to the status a transport answers with.

The gRPC server answers ``grpc.StatusCode`` by this name, the same-node
server its own status byte by the same name (protos/shm_wire.py: STATUSES);
the object store carries the exception itself. protos/ps.proto says what
each status means to a client. An error this table does not know is a bug:
INTERNAL.
"""

from __future__ import annotations

from ...errors import (InputError, LeftJobError, OutOfOrderError, RolledBackError, ShapeError, UnknownTableError,
                       UnknownTensorError, UnknownWorkerError)

#: Most specific first: the first class the error is an instance of names its status.
STATUSES: tuple[tuple[type[BaseException], str], ...] = (
    (UnknownWorkerError, "NOT_FOUND"),
    (UnknownTableError, "NOT_FOUND"),
    (UnknownTensorError, "NOT_FOUND"),  # a tensor this shard does not hold (the same-node wire's buffers)
    (ShapeError, "INVALID_ARGUMENT"),  # a malformed tensor (InputError: out-of-range ids are OUT_OF_RANGE)
    (LeftJobError, "FAILED_PRECONDITION"),
    (OutOfOrderError, "FAILED_PRECONDITION"),
    (RolledBackError, "ABORTED"),  # retryable: register again
)

#: Ids outside the table, or hashed to another shard: the request was well formed, its values are not.
OUT_OF_RANGE_REASONS = ("id_range", "wrong_shard")


def refusal(error: BaseException) -> tuple[str, str | None]:
    """The status name to answer ``error`` with, and the reason the server counts it under (None: the
    shard counted it where it refused it). An unknown worker id is refused before any shard state is
    touched, so the server counts it."""
    return status_of(error), "unknown_worker" if isinstance(error, UnknownWorkerError) else None


def status_of(error: BaseException) -> str:
    """The status name a transport answers ``error`` with."""
    if isinstance(error, InputError) and error.reason in OUT_OF_RANGE_REASONS:
        return "OUT_OF_RANGE"
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return "INTERNAL"

"""The transport seam: the one interface a worker sees, whatever carries its bytes.

The driver picks a transport and hands each worker a ``TransportSpec`` (a
small picklable description: shard handles, addresses, segment names, and how
the vectors are cut). The worker calls ``spec.connect(worker_id, incarnation)``
once and from then on talks to a ``Transport``; it never branches on which
one it got. The two protocols below declare exactly what the worker uses,
and the contract suite (tests/test_transports.py) checks every transport's
classes against them and their behaviour against one set of answers.

- ``register(params_out, buffers_out=None) -> clock``: the parameters (and
  merged model buffers) for the worker's next iteration into the caller's
  arrays; the completed clock it carries on from. ``base`` then says where
  its seqs start: a push of clock c carries seq c - base, so a retry of a
  clock carries its seq (exactly once: ps/core/ledger.py).
- ``push_pull_async(clock, grads, params_out, num_samples, loss, buffers=None,
  buffers_out=None, ahead=0) -> Pending``: send the gradient of iteration
  ``clock`` (and the worker's buffers) to every shard. ``grads`` and
  ``buffers`` are read before it returns, so the caller may overwrite them at
  once; ``params_out`` and ``buffers_out`` must be left alone until
  ``Pending.wait()`` returns, when they hold the parameters for iteration
  ``clock + 1 + ahead``. ``ahead``: how many iterations the caller computes
  before it waits on the next push (the shards admit it that far under the
  bound). ``push_pull(...)``: the same, waited on.
- ``fills_on_wait``: whether ``params_out`` is written only inside ``wait()``.
- ``shared_buffers() -> (grads, params) | None``: arrays of the whole vector
  that the transport itself reads and writes (shm: the worker's own segment).
  A worker whose model trains on them pushes and pulls with no copy; it must
  then leave both alone from the push until ``wait()`` returns (so never
  with overlap). None where the transport has none (gRPC, the object store).
- ``reconnect()``: reach the same shards afresh (a restarted shard serves where it served).
- ``finish()``: leave every shard's clock table, so nobody waits for this worker.
- ``sparse_pull(table, ids_per_shard, clock) -> list``: each shard's rows of a
  sparse table for its ids (int64, hashed to it), asked of all at once; None
  for a shard asked no ids. Waits as the table's mode says for iteration
  ``clock``. ps/sparse/client.py routes ids and reassembles.
- ``sparse_push_async(table, clock, ids_per_shard, grads_per_shard,
  num_samples) -> Pending``: the summed row gradients of iteration ``clock``
  to every shard (an empty push where there are none); read before it returns.

Compression (ps/compression/): ``grads`` may be an ``Encoded`` (one uint8
blob per shard, protos/compression.py) and a sparse push's rows an
``EncodedRows``. A transport carries the blob as it would the float32 slice,
and the shard decodes it (ps/transport/client_base.py cuts each shard's part).

The server side: every server calls the shard through ``Served``, the
shard's entry points (a ``Step`` in, an ``Answer`` out), never its class.

Every client builds on ``ShardClientBase`` (ps/transport/client_base.py):
``RayTransport`` (ps/transport/object_store.py), ``GrpcEndpoints``
(ps/transport/grpc_client.py), ``ShmEndpoints`` (ps/transport/shm_client.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ...protos.compression import Codec
from ..core.partition import ShardRange
from ..core.step import Answer, Pulled, Step


@dataclass(frozen=True)
class Encoded:
    """A compressed dense gradient: one blob per shard, in shard order."""

    blobs: tuple[np.ndarray, ...]
    codec: str


@dataclass(frozen=True)
class EncodedRows:
    """A compressed sparse push to one shard: ``count`` rows of ``dim`` values as one blob."""

    blob: np.ndarray
    count: int
    dim: int
    codec: str


class Pending:
    """A call in flight; ``wait()`` finishes it (once), re-raises its error, and returns its result (what
    the first ``wait()`` got, again on later ones; None once it failed)."""

    def __init__(self, finish: Callable[[], Any]):
        self._finish: Callable[[], Any] | None = finish
        self._result: Any = None

    def wait(self) -> Any:
        finish, self._finish = self._finish, None
        if finish is not None:
            self._result = finish()
        return self._result


@runtime_checkable
class Transport(Protocol):
    name: str
    #: True when ``params_out`` is written only inside ``Pending.wait()`` (never while the
    #: caller computes), so an overlapping worker may receive straight into its parameters.
    fills_on_wait: bool
    #: seq = clock - base for this worker's pushes (set by ``register``)
    base: int

    def register(self, params_out: np.ndarray, buffers_out: np.ndarray | None = None) -> int: ...

    def push_pull_async(self, clock: int, grads: np.ndarray | Encoded, params_out: np.ndarray, num_samples: int,
                        loss: float, buffers: np.ndarray | None = None, buffers_out: np.ndarray | None = None,
                        ahead: int = 0) -> Pending: ...

    def push_pull(self, clock: int, grads: np.ndarray | Encoded, params_out: np.ndarray, num_samples: int,
                  loss: float, buffers: np.ndarray | None = None, buffers_out: np.ndarray | None = None,
                  ahead: int = 0) -> None: ...

    def shared_buffers(self) -> tuple[np.ndarray, np.ndarray] | None: ...

    def reconnect(self) -> None: ...

    def finish(self) -> None: ...

    def sparse_pull(self, table: str, ids_per_shard: list[np.ndarray], clock: int) -> list: ...

    def sparse_push_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray],
                          grads_per_shard: list, num_samples: int) -> Pending: ...

    def sparse_push_pull_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray], grads_per_shard: list,
                               num_samples: int, pull_ids_per_shard: list[np.ndarray]) -> Pending:
        """The push of iteration ``clock`` and, on each shard after it, the pull of ``pull_ids_per_shard``
        for iteration ``clock + 1``; ``wait()`` returns each shard's rows (None where asked none)."""
        ...


@runtime_checkable
class TransportSpec(Protocol):
    """What the driver sends a worker: enough to connect, nothing that must be reopened."""

    name: str
    #: each shard's range of the flat parameters, in shard order
    ranges: tuple[ShardRange, ...]

    def connect(self, worker_id: int, incarnation: int = 0) -> Transport: ...


@runtime_checkable
class Served(Protocol):
    """What a transport's server calls on the shard it serves (ps/shard.py ParameterShard keeps it): the
    step's entry points, the worker's comings and goings, sparse rows, the counters, and the sizes a
    receiver needs. The servers know this protocol, never the shard's class."""

    shard_id: int
    size: int
    version: int
    buffer_size: int
    codec: Codec
    pull_codec: Codec

    async def step(self, step: Step, take: Callable | None = None) -> Answer: ...

    async def push(self, step: Step) -> str: ...

    async def pull_for(self, worker_id: int, clock: int, take: Callable | None = None,
                       span: tuple[int, int] | None = None) -> Pulled: ...

    def span(self, clock: int) -> tuple[int, int]: ...

    def enter(self, worker_id: int, incarnation: int = 0) -> tuple[int, int]: ...

    async def register(self, worker_id: int, incarnation: int = 0, take: Callable | None = None,
                       ) -> tuple[int, int, Pulled]: ...

    async def finish(self, worker_id: int, incarnation: int | None = None) -> None: ...

    def advance(self, worker_id: int, clock: int, incarnation: int = 0) -> None: ...

    def check_worker(self, worker_id: int) -> None: ...

    async def sparse_pull(self, worker_id: int, table: str, ids: np.ndarray, clock: int = 0,
                          incarnation: int = 0) -> tuple[np.ndarray, int]: ...

    async def sparse_push(self, worker_id: int, table: str, clock: int, ids: np.ndarray, grads: np.ndarray,
                          num_samples: int = 1, incarnation: int = 0) -> str: ...

    async def stats(self, rows: bool = False, rows_after: tuple[str, int] | None = None) -> dict: ...

    def count_rejection(self, reason: str) -> None: ...

    def grad_wire_nbytes(self) -> int: ...

    def place_params(self, array: np.ndarray) -> None: ...

    @property
    def publishes_in_place(self) -> bool: ...

    def row_wire_nbytes(self, count: int, dim: int) -> int: ...

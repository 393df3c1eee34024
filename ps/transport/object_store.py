"""The object-store transport: Ray actor calls, one per shard per step.

A worker keeps its parameters and gradients in flat numpy buffers. Each step
sends every shard its ``Step`` (its contiguous slice of the gradient, and of
the model buffers when the model has any) as the argument of one actor call
to the shard's ``step``, and writes each answer into the matching slices:
one Ray call and one contiguous copy per shard per step, all shards in
flight at once. Only numpy arrays cross the object store (zero-copy reads on
the shard's side); nothing torch is pickled on this path. Ray serializes a
call's arguments when it is made, so the gradient may be overwritten as soon
as ``push_pull_async`` returns. The server side is the shard actor itself.

The client waits on its calls through a runtime (runtime.py): Ray's by
default; an in-process one in tests, where the same client drives shards
running on threads of the test's own process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...runtime import RAY, Runtime
from ..core.partition import ShardRange
from .client_base import ShardClientBase
from .contract import Pending


@dataclass(frozen=True)
class RayTransport:
    """The object-store transport's spec: the shard actor handles and how the vectors are cut."""

    shards: tuple
    ranges: tuple[ShardRange, ...]
    buffer_ranges: tuple[ShardRange, ...] | None = None
    name: str = "ray"
    runtime: Runtime = RAY  # what the client waits on its calls through

    def connect(self, worker_id: int, incarnation: int = 0) -> "ShardClient":
        return ShardClient(worker_id, self.shards, self.ranges, self.buffer_ranges, incarnation, self.runtime)


class ShardClient(ShardClientBase):
    name = "ray"
    fills_on_wait = True  # the answers are read (runtime.get) in wait()

    def __init__(self, worker_id: int, shards: Sequence, ranges: Sequence[ShardRange],
                 buffer_ranges: Sequence[ShardRange] | None = None, incarnation: int = 0, runtime: Runtime = RAY):
        super().__init__(worker_id, ranges, buffer_ranges, incarnation, len(shards))
        self._shards = list(shards)
        self._get = runtime.get

    def register(self, params_out: np.ndarray, buffers_out: np.ndarray | None = None) -> int:
        """The parameters into ``params_out`` (and the buffers into ``buffers_out``); the completed clock
        to carry on from."""
        registered = self._get([s.register.remote(self.worker_id, self.incarnation) for s in self._shards])
        for i, (_, _, answer) in enumerate(registered):
            self.receive(i, answer.params, answer.version, answer.buffers, params_out, buffers_out)
        return self.carry_on([(clock, seq) for clock, seq, _ in registered])

    def push_pull_async(self, clock: int, grads: np.ndarray, params_out: np.ndarray, num_samples: int,
                        loss: float, buffers: np.ndarray | None = None, buffers_out: np.ndarray | None = None,
                        ahead: int = 0) -> Pending:
        """Push the gradient of iteration ``clock`` (and the model's buffers); receive on ``wait()``."""
        refs = [shard.step.remote(step) for shard, step in
                zip(self._shards, self.steps(clock, grads, num_samples, loss, buffers, ahead))]
        return Pending(lambda: self._receive_all(self._get(refs), params_out, buffers_out, clock))

    def sparse_pull(self, table: str, ids_per_shard: list[np.ndarray], clock: int) -> list[np.ndarray | None]:
        """Each shard's rows of ``table`` for its ids (None where it was asked none), all at once."""
        asked = [(i, s.sparse_pull.remote(self.worker_id, table, ids, clock, self.incarnation))
                 for i, (s, ids) in enumerate(zip(self._shards, ids_per_shard)) if len(ids)]
        out: list[np.ndarray | None] = [None] * len(self._shards)
        for (i, _), (rows, _version) in zip(asked, self._get([ref for _, ref in asked])):
            out[i] = rows
        return out

    def sparse_push_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray],
                          grads_per_shard: list[np.ndarray], num_samples: int) -> Pending:
        """Push ``table``'s row gradients of iteration ``clock`` to every shard; ``wait()`` for the answers."""
        refs = [s.sparse_push.remote(self.worker_id, table, clock, ids, getattr(grads, "blob", grads), num_samples,
                                     self.incarnation)
                for s, ids, grads in zip(self._shards, ids_per_shard, grads_per_shard)]
        return Pending(lambda: self._get(refs))

    def finish(self) -> None:
        """Leave every shard's clock table, so no one waits for this worker."""
        self._get([s.finish.remote(self.worker_id, self.incarnation) for s in self._shards])

    def _receive_all(self, answers: list, params_out: np.ndarray, buffers_out: np.ndarray | None,
                     clock: int = 0) -> None:
        for i, answer in enumerate(answers):
            self.receive(i, answer.params, answer.version, answer.buffers, params_out, buffers_out, clock)

"""The object-store transport: Ray actor calls, one per shard per step.

A worker keeps its parameters and gradients in flat numpy buffers. Each step,
``push_pull`` sends every shard its contiguous slice of the gradient (and of
the model buffers, when the model has any) and writes what each shard returns
into the matching slices: one Ray call and one contiguous copy per shard per
step, all shards in flight at once. Only numpy arrays cross the object store
(zero-copy reads on the shard's side); nothing torch is pickled on this path.
Ray serializes a call's arguments when it is made, so the gradient may be
overwritten as soon as ``push_pull_async`` returns.

``buffer_ranges`` cut the float64 buffer vector across the shards as
``ranges`` cut the parameters; a shard may hold no buffers at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import ray

from ...errors import ConfigError
from ..core.partition import ShardRange, buffer_ranges_or_none, buffer_slices
from .contract import BlockingPushPull, Pending, shard_payloads


@dataclass(frozen=True)
class RayTransport:
    """The object-store transport's spec: the shard actor handles and how the vectors are cut."""

    shards: tuple
    ranges: tuple[ShardRange, ...]
    buffer_ranges: tuple[ShardRange, ...] | None = None
    name: str = "ray"

    def connect(self, worker_id: int, incarnation: int = 0) -> "ShardClient":
        return ShardClient(worker_id, self.shards, self.ranges, self.buffer_ranges, incarnation)


class ShardClient(BlockingPushPull):
    name = "ray"
    fills_on_wait = True  # ray.get happens in wait()

    def __init__(self, worker_id: int, shards: Sequence, ranges: Sequence[ShardRange],
                 buffer_ranges: Sequence[ShardRange] | None = None, incarnation: int = 0):
        if len(shards) != len(ranges):
            raise ConfigError(f"{len(shards)} shard handles for {len(ranges)} ranges")
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.base = 0  # seq = clock - base, so a retried clock carries its seq
        self._shards = list(shards)
        self._ranges = list(ranges)
        self._buffer_ranges = buffer_ranges_or_none(buffer_ranges, ranges)
        self._versions = [0] * len(shards)  # the version of each slice we hold

    def register(self, params_out: np.ndarray, buffers_out: np.ndarray | None = None) -> int:
        """Fetch the parameters into ``params_out`` (and the buffers into ``buffers_out``); return the
        completed clock to carry on from."""
        positions = ray.get([s.position.remote(self.worker_id) for s in self._shards])
        clock = max(c for c, _ in positions)
        self.base = clock - max(q for _, q in positions)
        self._receive(params_out, buffers_out,
                      [s.register.remote(self.worker_id, self.incarnation) for s in self._shards])
        return clock

    def reconnect(self) -> None:
        """Nothing to reopen: an actor handle reaches a restarted actor by itself."""

    def push_pull_async(self, clock: int, grads: np.ndarray, params_out: np.ndarray, num_samples: int,
                        loss: float, buffers: np.ndarray | None = None, buffers_out: np.ndarray | None = None,
                        ahead: int = 0) -> Pending:
        """Push the gradient of iteration ``clock`` (and the model's buffers); receive on ``wait()``."""
        refs = [
            shard.push_pull.remote(self.worker_id, clock, payload, version, num_samples, loss, b, ahead,
                                   self.incarnation, clock - self.base)
            for shard, payload, version, b in zip(self._shards, shard_payloads(grads, self._ranges), self._versions,
                                                  buffer_slices(buffers, self._buffer_ranges))
        ]
        return Pending(lambda: self._receive(params_out, buffers_out, refs))

    def sparse_pull(self, table: str, ids_per_shard: list[np.ndarray], clock: int) -> list[np.ndarray | None]:
        """Each shard's rows of ``table`` for its ids (None where it was asked none), all at once."""
        asked = [(i, s.sparse_pull.remote(self.worker_id, table, ids, clock, self.incarnation))
                 for i, (s, ids) in enumerate(zip(self._shards, ids_per_shard)) if len(ids)]
        out: list[np.ndarray | None] = [None] * len(self._shards)
        for (i, _), (rows, _version) in zip(asked, ray.get([ref for _, ref in asked])):
            out[i] = rows
        return out

    def sparse_push_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray],
                          grads_per_shard: list[np.ndarray], num_samples: int) -> Pending:
        """Push ``table``'s row gradients of iteration ``clock`` to every shard; ``wait()`` for the answers."""
        refs = [s.sparse_push.remote(self.worker_id, table, clock, ids, getattr(grads, "blob", grads), num_samples,
                                     self.incarnation)
                for s, ids, grads in zip(self._shards, ids_per_shard, grads_per_shard)]
        return Pending(lambda: ray.get(refs))

    def finish(self) -> None:
        """Leave every shard's clock table, so no one waits for this worker."""
        ray.get([s.finish.remote(self.worker_id, self.incarnation) for s in self._shards])

    def _receive(self, params_out: np.ndarray, buffers_out: np.ndarray | None, refs: list) -> None:
        for i, (params, version, buffers) in enumerate(ray.get(refs)):
            r = self._ranges[i]
            params_out[r.lo:r.hi] = params
            self._versions[i] = version
            if buffers is not None and buffers_out is not None:
                b = self._buffer_ranges[i]
                buffers_out[b.lo:b.hi] = buffers

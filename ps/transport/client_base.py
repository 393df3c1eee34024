"""What every transport's client shares: who it is, how the vectors are cut, where it carries on.

A client (ps/transport/object_store.py, grpc_client.py, shm_client.py) turns a
worker's step into one ``Step`` per shard (``steps``: this shard's slice of
the gradient or its blob, of the buffers, the version it pulled, the seq),
sends them its own way, and writes what comes back into the caller's slices
(``receive``). ``register`` is the same for all: every shard says where the
worker carries on, and the worker takes the furthest clock.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import ConfigError, ShapeError
from ..core.partition import ShardRange, buffer_ranges_or_none, buffer_slices, fragment_ranges
from ..core.step import Step
from .contract import Encoded, Pending


class ShardClientBase:
    name = ""
    fills_on_wait = True

    def __init__(self, worker_id: int, ranges: Sequence[ShardRange], buffer_ranges: Sequence[ShardRange] | None,
                 incarnation: int, shards: int):
        if shards != len(ranges):
            raise ConfigError(f"{shards} shards for {len(ranges)} ranges")
        self.worker_id = worker_id
        self.incarnation = incarnation
        self.base = 0  # seq = clock - base, so a retried clock carries its seq; register sets it
        self.ranges = list(ranges)
        self.buffer_ranges = buffer_ranges_or_none(buffer_ranges, ranges)
        self.versions = [0] * len(ranges)  # the version of each slice we hold: what a push is stale against
        # streaming local steps: each push carries one of this many fragments of every shard's range, in turn
        # by clock, and its answer that fragment (ps/core/partition.py: fragment_ranges); the worker sets it
        self.fragments = 1

    # ---- the contract's shared half (ps/transport/contract.py) ---------------------------

    def push_pull(self, clock, grads, params_out, num_samples, loss, buffers=None, buffers_out=None,
                  ahead: int = 0) -> None:
        self.push_pull_async(clock, grads, params_out, num_samples, loss, buffers, buffers_out, ahead).wait()

    def push_pull_async(self, clock, grads, params_out, num_samples, loss, buffers=None, buffers_out=None,
                        ahead: int = 0) -> Pending:
        raise NotImplementedError

    def sparse_push_pull_async(self, table, clock, ids_per_shard, grads_per_shard, num_samples,
                               pull_ids_per_shard) -> Pending:
        """The push, then (on ``wait()``, once it is answered) the pull: correct on any transport, overlapped
        with nothing. Transports that can put the pull behind the push on the wire do so (shm, grpc)."""
        pushing = self.sparse_push_async(table, clock, ids_per_shard, grads_per_shard, num_samples)

        def finish() -> list:
            pushing.wait()
            return self.sparse_pull(table, pull_ids_per_shard, clock + 1)
        return Pending(finish)

    def reconnect(self) -> None:
        """Reach the same shards afresh (a restarted shard serves where it served)."""

    def shared_buffers(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The transport's own gradient and parameter arrays, for a model to train on (none by default)."""
        return None

    # ---- helpers for the clients ---------------------------------------------------------

    def carry_on(self, positions: Sequence[tuple[int, int]]) -> int:
        """Every shard's (completed clock, last applied seq) for this worker: the clock it carries on
        from, with ``base`` set so its next seq follows the last applied."""
        clock = max(c for c, _ in positions)
        self.base = clock - max(q for _, q in positions)
        return clock

    def ranges_at(self, clock: int) -> list[ShardRange]:
        """What of each shard's range the push of ``clock`` carries and its answer returns (0: a registration,
        all of it)."""
        return self.ranges if self.fragments == 1 else fragment_ranges(self.ranges, self.fragments, clock)

    def steps(self, clock: int, grads, num_samples: int, loss: float, buffers: np.ndarray | None = None,
              ahead: int = 0) -> list[Step]:
        """Iteration ``clock`` as one Step per shard (slices are views: send or copy them before returning)."""
        seq = clock - self.base
        return [Step(self.worker_id, clock, payload, self.versions[i], num_samples, loss, b, ahead,
                     self.incarnation, seq)
                for i, (payload, b) in enumerate(zip(self.payloads(grads, clock),
                                                     buffer_slices(buffers, self.buffer_ranges)))]

    def payloads(self, grads, clock: int = 0) -> list[np.ndarray]:
        """What each shard is sent of a gradient: its float32 slice (of the push of ``clock``: a fragment of it
        when the model syncs in fragments), or its blob when compressed (Encoded)."""
        if isinstance(grads, Encoded):
            if len(grads.blobs) != len(self.ranges):
                raise ShapeError(f"{len(grads.blobs)} compressed blobs for {len(self.ranges)} shards")
            return list(grads.blobs)
        return [grads[r.lo:r.hi] for r in self.ranges_at(clock)]

    def receive(self, i: int, params: np.ndarray | None, version: int, buffers: np.ndarray | None,
                params_out: np.ndarray, buffers_out: np.ndarray | None, clock: int = 0) -> None:
        """Shard ``i``'s answer (to the push of ``clock``; 0: a registration) into the caller's slices
        (``params`` None: already written in place)."""
        r, b = self.ranges_at(clock)[i], self.buffer_ranges[i]
        if params is not None:
            params_out[r.lo:r.hi] = params
        self.versions[i] = version
        if buffers is not None and buffers_out is not None and b.size:
            buffers_out[b.lo:b.hi] = buffers

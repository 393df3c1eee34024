"""The worker's side of the object-store transport: one client, all shards.

A worker keeps its parameters and gradients in flat numpy buffers. Each step,
``push_pull`` sends every shard its contiguous slice of the gradient and writes
the parameters each shard returns into the matching slice of the parameter
buffer: one Ray call and one contiguous copy per shard per step, all shards in
flight at once. Only numpy arrays cross the object store (zero-copy reads on
the shard's side); nothing torch is pickled on this path.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import ray

from rayps.ps.partition import ShardRange


class ShardClient:
    def __init__(self, worker_id: int, shards: Sequence, ranges: Sequence[ShardRange]):
        if len(shards) != len(ranges):
            raise ValueError(f"{len(shards)} shard handles for {len(ranges)} ranges")
        self.worker_id = worker_id
        self._shards = list(shards)
        self._ranges = list(ranges)
        self._versions = [0] * len(shards)  # the version of each slice we hold

    def register(self, params_out: np.ndarray) -> None:
        """Fetch the initial parameters into ``params_out``."""
        self._receive(params_out, [s.register.remote(self.worker_id) for s in self._shards])

    def push_pull(self, clock: int, grads: np.ndarray, params_out: np.ndarray,
                  num_samples: int, loss: float) -> None:
        """Push the gradient of iteration ``clock``; receive the parameters for the next one.

        Blocks for as long as the consistency mode makes this worker wait.
        """
        refs = [
            shard.push_pull.remote(self.worker_id, clock, grads[r.lo:r.hi], version, num_samples, loss)
            for shard, r, version in zip(self._shards, self._ranges, self._versions)
        ]
        self._receive(params_out, refs)

    def finish(self) -> None:
        """Leave every shard's clock table, so no one waits for this worker."""
        ray.get([s.finish.remote(self.worker_id) for s in self._shards])

    def _receive(self, params_out: np.ndarray, refs: list) -> None:
        for i, (params, version) in enumerate(ray.get(refs)):
            r = self._ranges[i]
            params_out[r.lo:r.hi] = params
            self._versions[i] = version

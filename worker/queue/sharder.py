"""The per-epoch sharding of examples across workers: numpy only, so the work-queue actor starts light."""

from __future__ import annotations

import math

import numpy as np

from ...errors import ConfigError


class EpochSharder:
    """Which example indices each worker trains on, epoch by epoch.

    Each epoch's permutation comes from ``np.random.default_rng([seed, epoch])``,
    so every worker computes the same one without talking to the others. The
    shards of an epoch are disjoint, cover every example exactly once (no
    padding by repeats) and differ in size by at most one. Each shard is cut
    into ``batches_per_epoch`` near-equal batches of at most ``batch_size``;
    only when ``batch_size`` is 1 and workers' shards differ in size can a
    shorter shard yield one batch fewer (empty batches are dropped).
    """

    def __init__(self, num_examples: int, num_workers: int, batch_size: int, seed: int = 0):
        if num_workers < 1:
            raise ConfigError(f"num_workers ({num_workers}) must be >= 1")
        if batch_size < 1:
            raise ConfigError(f"batch_size ({batch_size}) must be >= 1")
        if num_workers > num_examples:
            raise ConfigError(f"num_workers ({num_workers}) must not exceed num_examples ({num_examples})")
        if seed < 0:
            raise ConfigError(f"seed ({seed}) must be >= 0")
        self.num_examples = num_examples
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.seed = seed
        self._cached: tuple[int, list[np.ndarray]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(math.ceil(self.num_examples / self.num_workers) / self.batch_size)

    def shard(self, epoch: int, worker: int) -> np.ndarray:
        """This worker's example indices for this epoch, in training order."""
        if not 0 <= worker < self.num_workers:
            raise ConfigError(f"worker ({worker}) must be in [0, {self.num_workers})")
        if epoch < 0:
            raise ConfigError(f"epoch ({epoch}) must be >= 0")
        # A worker asks for the same epoch repeatedly; permuting N once per epoch suffices.
        if self._cached is None or self._cached[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._cached = (epoch, np.array_split(perm, self.num_workers))
        return self._cached[1][worker]

    def batches(self, epoch: int, worker: int) -> list[np.ndarray]:
        """This worker's shard for this epoch cut into batches of at most batch_size."""
        return [b for b in np.array_split(self.shard(epoch, worker), self.batches_per_epoch) if len(b)]

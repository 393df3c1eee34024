"""Where one shard keeps its part of a sparse table: rows created on first touch, evicted when unseen.

Rows are hashed to shards by ``id % num_shards``; on its shard a row's local
index is ``id // num_shards``. A ``RowStore`` holds only the rows that were
touched, packed densely in arrays that double when full (weights, the row
optimizer's state, the row's id and the step it was last seen at), plus an
index from local index to packed slot. The index is a zero-filled int32 array
of one entry per *possible* local row: numpy takes it from calloc, so its
pages become resident only as ids in them are touched; it costs at most 4
bytes per possible row, and the rows themselves cost only what was touched.

Initial values are a pure function of ``(seed, table, id)`` (a counter-based
hash, splitmix64), so a row comes out the same on any shard count, after any
eviction, and on whichever worker first touched it.
"""

from __future__ import annotations

import zlib

import numpy as np

INITIALIZERS = ("normal", "uniform", "zeros")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(keys: np.ndarray) -> np.ndarray:
    """Uniform floats in (0, 1), one per key (float64)."""
    return ((_splitmix64(keys) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def initial_rows(ids: np.ndarray, dim: int, kind: str, scale: float, seed: int, table: str) -> np.ndarray:
    """The initial values of rows ``ids`` (float32, len(ids) x dim): ``normal`` (std ``scale``),
    ``uniform`` (in [-scale, scale]) or ``zeros``."""
    if kind == "zeros" or not len(ids):
        return np.zeros((len(ids), dim), np.float32)
    salt = np.uint64((zlib.crc32(table.encode()) << 32) ^ (int(seed) & 0xFFFFFFFF))
    with np.errstate(over="ignore"):
        base = (ids.astype(np.uint64) * np.uint64(2 * dim))[:, None] + np.arange(2 * dim, dtype=np.uint64)[None, :]
        u = _uniform(base ^ _splitmix64(np.full(1, salt, np.uint64)))
    if kind == "uniform":
        return ((u[:, :dim] * 2 - 1) * scale).astype(np.float32)
    # Box-Muller on the two halves
    return (np.sqrt(-2.0 * np.log(u[:, :dim])) * np.cos(2 * np.pi * u[:, dim:]) * scale).astype(np.float32)


class RowStore:
    """The touched rows of one table on one shard, their optimizer state, and their index."""

    def __init__(self, local_rows: int, dim: int, state_spec: tuple, capacity: int = 1024):
        self.dim = dim
        self.local_rows = local_rows
        self._spec = state_spec
        self.slot_of = np.zeros(local_rows, np.int32)  # slot + 1; 0: not here
        self.count = 0
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        def grown(old: np.ndarray | None, shape, dtype, fill=0):
            new = np.full(shape, fill, dtype)
            if old is not None:
                new[:self.count] = old[:self.count]
            return new

        keep = getattr(self, "weights", None) is not None
        self.capacity = capacity
        self.weights = grown(self.weights if keep else None, (capacity, self.dim), np.float32)
        self.ids = grown(self.ids if keep else None, capacity, np.int64)
        self.last_seen = grown(self.last_seen if keep else None, capacity, np.int64)
        self.state = {name: grown(self.state[name] if keep else None,
                                  (capacity, self.dim * width) if width else capacity, dtype, fill)
                      for name, width, dtype, fill in self._spec}

    # ---- lookups ------------------------------------------------------------------

    def slots(self, local: np.ndarray) -> np.ndarray:
        """The packed slot of each local index; -1 where the row is not here."""
        return self.slot_of[local].astype(np.int64) - 1

    def create(self, local: np.ndarray, ids: np.ndarray, values: np.ndarray, step: int) -> np.ndarray:
        """Add rows (local indices unique and absent) with initial ``values``; return their slots."""
        n = len(local)
        if self.count + n > self.capacity:
            self._allocate(max(self.capacity * 2, self.count + n))
        slots = np.arange(self.count, self.count + n)
        self.weights[slots] = values
        self.ids[slots] = ids
        self.last_seen[slots] = step
        self.slot_of[local] = (slots + 1).astype(np.int32)
        self.count += n
        return slots

    def evict_unseen(self, before: int, num_shards: int) -> int:
        """Drop every row last seen before step ``before``; return how many went."""
        live = self.last_seen[:self.count] >= before
        gone = self.count - int(np.count_nonzero(live))
        if not gone:
            return 0
        self.slot_of[self.ids[:self.count][~live] // num_shards] = 0
        kept = np.flatnonzero(live)
        for array in (self.weights, self.ids, self.last_seen, *self.state.values()):
            array[:len(kept)] = array[kept]
        self.count = len(kept)
        self.slot_of[self.ids[:self.count] // num_shards] = np.arange(1, self.count + 1, dtype=np.int32)
        return gone

    # ---- what it costs, and its state -----------------------------------------------

    @property
    def row_bytes(self) -> int:
        """Bytes per stored row: weights, optimizer state, id and last-seen step."""
        state = sum((self.dim * w if w else 1) * np.dtype(d).itemsize for _, w, d, _ in self._spec)
        return self.dim * 4 + state + 16

    @property
    def nbytes(self) -> int:
        """What the store holds allocated: its arrays at their capacity, and the index."""
        return self.capacity * self.row_bytes + self.slot_of.nbytes

    def state_dict(self) -> dict:
        n = self.count
        return {"ids": self.ids[:n].copy(), "weights": self.weights[:n].copy(),
                "last_seen": self.last_seen[:n].copy(),
                "state": {k: v[:n].copy() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict, num_shards: int) -> None:
        ids = np.asarray(state["ids"], np.int64)
        n = len(ids)
        self.slot_of = np.zeros(self.local_rows, np.int32)  # fresh zero pages, not a pass over the old
        self.count = 0
        self.weights = None
        self._allocate(max(1024, n))
        self.weights[:n] = state["weights"]
        self.ids[:n] = ids
        self.last_seen[:n] = state["last_seen"]
        for k, v in state["state"].items():
            self.state[k][:n] = v
        self.count = n
        self.slot_of[ids // num_shards] = np.arange(1, n + 1, dtype=np.int32)

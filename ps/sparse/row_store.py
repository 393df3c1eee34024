"""Where one shard keeps its part of a sparse table: rows created on first touch, evicted when unseen.

Rows are hashed to shards by ``id % num_shards``. A ``RowStore`` holds only the
rows that were touched, packed in slots 0..count-1:

- one float32 block per row: its weights, then the row optimizer's per-value
  state (Adam's two moments, Adagrad's sum, FTRL's z and n) side by side, so
  an update gathers and scatters one contiguous record per row, not three;
- the optimizer's per-row scalars (Adam's step count, int32), the row's id
  and the table version it was last seen at (int64);
- a hash index from id to slot (slot_index.py), 8 to 16 bytes per row.

The arrays grow by a sixteenth when full, so at most 1/16 of them is
allocated ahead: with Adam and 16 values a row holds 212 bytes, and the
store about 220 to 240 per row with its index and slack.

Initial values are a pure function of ``(seed, table, id)`` (a counter-based
hash, splitmix64), so a row comes out the same on any shard count, after any
eviction, and on whichever worker first touched it.
"""

from __future__ import annotations

import zlib

import numpy as np

from .slot_index import SlotIndex

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
    # Box-Muller on the two halves, in float32 as the rows are: a third of float64's time for new rows, which
    # a shard makes on every pull while a table fills (u is at least 2^-54, so the log stays finite)
    u = u.astype(np.float32)
    radius = np.sqrt(np.float32(-2) * np.log(u[:, :dim]))
    return radius * np.cos(np.float32(2 * np.pi) * u[:, dim:]) * np.float32(scale)


class RowStore:
    """The touched rows of one table on one shard, their optimizer state, and their index."""

    GROWTH = 1 / 16

    def __init__(self, dim: int, state_spec: tuple, capacity: int = 1024):
        self.dim = dim
        # per-value state lives in the block beside the weights; per-row scalars in arrays of their own
        self._values = [(name, fill) for name, width, _, fill in state_spec if width]
        self._scalars = [(name, dtype, fill) for name, width, dtype, fill in state_spec if not width]
        if any(dtype != np.float32 or width != 1 for _, width, dtype, _ in state_spec if width):
            raise ValueError("per-value row state must be float32, one value per weight")
        self.width = dim * (1 + len(self._values))
        # what a new row's record holds beside its initial weights: each per-value state's initial value
        self._fresh_record = np.concatenate([np.zeros(dim, np.float32)]
                                            + [np.full(dim, fill, np.float32) for _, fill in self._values])
        self.index = SlotIndex()
        self.moves = 0  # how many times rows changed slots (eviction, a restore): slots known before are stale
        self._empty(capacity)

    def _empty(self, capacity: int) -> None:
        """No rows, and room for ``capacity``."""
        self.count = self.capacity = 0
        self.block = np.zeros((0, self.width), np.float32)
        self.ids, self.last_seen = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.scalars = {name: np.zeros(0, dtype) for name, dtype, _ in self._scalars}
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        """Room for ``capacity`` rows; slots beyond ``count`` hold anything until ``create`` fills them."""
        arrays = {"block": self.block, "ids": self.ids, "last_seen": self.last_seen, **self.scalars}
        self.block = self.ids = self.last_seen = None
        self.scalars = {}
        for name in list(arrays):
            # in place where the allocator can (realloc remaps large blocks rather than copy them); numpy
            # refuses while anything else refers to the array (a view, or a second name here), so the
            # array is held by one name only while it grows
            array = arrays.pop(name)
            try:
                array.resize((capacity,) + array.shape[1:], refcheck=True)
            except ValueError:
                old, array = array, np.empty((capacity,) + array.shape[1:], array.dtype)
                array[:self.count] = old[:self.count]
                del old
            if name in ("block", "ids", "last_seen"):
                setattr(self, name, array)
            else:
                self.scalars[name] = array
            del array
        self.capacity = capacity

    # ---- views of the block ---------------------------------------------------------

    @property
    def weights(self) -> np.ndarray:
        """Every slot's weights (a view: slots beyond ``count`` are unused)."""
        return self.block[:, :self.dim]

    def split(self, records: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Views of gathered records (rows x width): their weights and each per-value state."""
        d = self.dim
        return records[:, :d], {name: records[:, d * (i + 1):d * (i + 2)] for i, (name, _) in enumerate(self._values)}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Every slot's optimizer state by name (views of the block, and the scalar arrays)."""
        return {**self.split(self.block)[1], **self.scalars}

    # ---- lookups ------------------------------------------------------------------

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """The packed slot of each id; -1 where the row is not here."""
        if not len(ids):
            return np.zeros(0, np.int64)
        return self.index.lookup(ids, self.ids)

    def export(self, part: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
        """Part ``part`` of every row's id and weights (copies), and whether another part follows."""
        return self.ids[:self.count].copy(), self.weights[:self.count].copy(), False

    def read_weights(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The weights of rows ``ids`` (a copy; anything where absent) and which of them are here."""
        slots = self.slots(ids)
        return self.weights[np.maximum(slots, 0)], slots >= 0

    def create(self, ids: np.ndarray, values: np.ndarray, step: int) -> np.ndarray:
        """Add rows (ids unique and absent) with initial ``values``; return their slots."""
        n = len(ids)
        if self.count + n > self.capacity:
            self._grow(max(int(self.capacity * (1 + self.GROWTH)), self.count + n))
        new = slice(self.count, self.count + n)  # rows are packed: the new ones follow the last
        self.block[new] = self._fresh_record
        self.block[new, :self.dim] = values
        for name, _, fill in self._scalars:
            self.scalars[name][new] = fill
        self.ids[new] = ids
        self.last_seen[new] = step
        slots = np.arange(self.count, self.count + n)
        self.index.insert(ids, slots, self.ids)
        self.count += n
        return slots

    def evict_unseen(self, before: int) -> np.ndarray:
        """Drop every row last seen before table version ``before``; return their ids."""
        live = self.last_seen[:self.count] >= before
        gone = self.ids[:self.count][~live]
        if not len(gone):
            return gone
        kept = np.flatnonzero(live)
        for array in (self.block, self.ids, self.last_seen, *self.scalars.values()):
            array[:len(kept)] = array[kept]
        self.count = len(kept)
        self.index.rebuild(self.ids[:self.count])
        self.moves += 1
        return gone

    # ---- what it costs, and its state -----------------------------------------------

    @property
    def rows(self) -> int:
        """Every row held."""
        return self.count

    @property
    def row_bytes(self) -> int:
        """Bytes per stored row: weights and per-value state, per-row scalars, id and last-seen version."""
        return self.block.itemsize * self.width + sum(a.itemsize for a in self.scalars.values()) + 16

    @property
    def nbytes(self) -> int:
        """What the store holds allocated: its arrays at their capacity, and the index."""
        return self.capacity * self.row_bytes + self.index.nbytes

    def state_dict(self) -> dict:
        n = self.count
        return {"ids": self.ids[:n].copy(), "weights": self.weights[:n].copy(),
                "last_seen": self.last_seen[:n].copy(),
                "state": {k: v[:n].copy() for k, v in self.state.items()}}

    def rows_state(self, ids: np.ndarray) -> dict:
        """``state_dict()`` of just the rows ``ids`` that are here (an incremental checkpoint's rows)."""
        slots = self.slots(ids)
        slots = slots[slots >= 0]
        return {"ids": self.ids[slots], "weights": self.weights[slots], "last_seen": self.last_seen[slots],
                "state": {k: v[slots] for k, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        ids = np.asarray(state["ids"], np.int64)
        n = len(ids)
        self._empty(max(1024, int(n * (1 + self.GROWTH))))
        self.weights[:n] = state["weights"]
        self.ids[:n] = ids
        self.last_seen[:n] = state["last_seen"]
        for k, v in self.state.items():
            v[:n] = state["state"][k]
        self.count = n
        self.index.rebuild(self.ids[:n])
        self.moves += 1

"""Which packed slot holds a row: an open-addressing hash index, vectorized over a batch of ids.

A shard used to find a row through a dense int32 array of one entry per
*possible* row. Zipf ids spread over the whole id range touch every page of
it, so a 10M-row table cost 20 MB of index on each of two shards, however few
rows were made (122 bytes per row held in the bench). This index costs 4 bytes
per entry at a load of 1/4 to 1/2: 8 to 16 bytes per row held, whatever the id
range, so an id may be any int64.

``entries`` (int32, a power of two long) holds slot + 1, 0 where empty. The key
of a slot is the store's ``ids[slot]``, so keys are not stored twice. An id's
first position is the top bits of its product with 2^64/phi (Fibonacci
hashing); it then probes in strides from the product's middle bits (double
hashing, which does not grow the clusters linear probing does). Lookups and
inserts run each probe as numpy operations over the whole batch; the few ids
still probing after those rounds finish one by one in Python, which is cheaper
than more rounds for a handful. Nothing is deleted one at a time: eviction
moves rows, so the store rebuilds the index.
"""

from __future__ import annotations

import numpy as np

_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)
_MIN_BITS = 10
MAX_LOAD = 0.5  # then the index doubles, to a load of 1/4
_BATCH_ROUNDS_DOWN_TO = 32  # fewer ids than this still probing: finish them one at a time


class SlotIndex:
    def __init__(self):
        self._allocate(0)

    @staticmethod
    def _bits(rows: int) -> int:
        return max(_MIN_BITS, int(np.ceil(np.log2(max(1, 2 * rows) / MAX_LOAD))))

    @staticmethod
    def nbytes_for(rows: int) -> int:
        """The most an index of ``rows`` rows holds allocated (it doubles past a load of 1/2)."""
        return 4 << SlotIndex._bits(rows)

    def _allocate(self, rows: int) -> None:
        self.bits = self._bits(rows)
        self.entries = np.zeros(1 << self.bits, np.int32)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.entries.nbytes

    def _probes(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id's first position and its (odd) stride."""
        with np.errstate(over="ignore"):
            z = ids.astype(np.uint64) * _FIBONACCI
        first = (z >> np.uint64(64 - self.bits)).astype(np.int64)
        stride = ((z >> np.uint64(24)) | np.uint64(1)).astype(np.int64) & (len(self.entries) - 1)
        return first, stride

    def lookup(self, ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The slot of each of ``ids`` (-1 where absent); ``keys`` is the store's slot -> id array."""
        entries, mask = self.entries, len(self.entries) - 1
        pos, stride = self._probes(ids)
        found = entries[pos]
        # found - 1 is -1 for an empty entry: it reads the last key, and the entry test rules it out
        hit = keys[found - 1] == ids
        hit &= found != 0
        going = ~hit & (found != 0)  # another id's entry: probe on; an empty one: absent
        found[~hit] = 0
        todo = np.flatnonzero(going)
        pos, stride, want = pos[todo], stride[todo], ids[todo]
        while len(todo) > _BATCH_ROUNDS_DOWN_TO:
            pos = (pos + stride) & mask
            entry = entries[pos]
            hit = keys[entry - 1] == want
            hit &= entry != 0
            found[todo[hit]] = entry[hit]
            going = ~hit & (entry != 0)
            todo, pos, stride, want = todo[going], pos[going], stride[going], want[going]
        for i, p, s, w in zip(todo.tolist(), pos.tolist(), stride.tolist(), want.tolist()):
            while True:
                p = (p + s) & mask
                entry = int(entries[p])
                if entry == 0 or keys[entry - 1] == w:
                    found[i] = entry
                    break
        return found.astype(np.int64) - 1

    def insert(self, ids: np.ndarray, slots: np.ndarray, keys: np.ndarray) -> None:
        """Index ``ids`` (unique, absent) at ``slots``. Slots are packed: the store's rows are
        0..count-1, and ``keys[:count + len(ids)]`` already holds the new ids at their slots."""
        total = self.count + len(ids)
        if total > MAX_LOAD * len(self.entries):
            self.rebuild(keys[:total])
            return
        self._place(ids, slots)
        self.count = total

    def rebuild(self, keys: np.ndarray) -> None:
        """Index afresh, slot i holding ``keys[i]`` (to grow, or after eviction moved rows)."""
        self._allocate(len(keys))
        self._place(keys, np.arange(len(keys)))
        self.count = len(keys)

    def _place(self, ids: np.ndarray, slots: np.ndarray) -> None:
        entries, mask = self.entries, len(self.entries) - 1
        pos, stride = self._probes(ids)
        values = (slots + 1).astype(np.int32)
        while len(pos):
            free = entries[pos] == 0
            # ids wanting one free entry all write it; the one whose value stays has it, the others look again
            entries[pos[free]] = values[free]
            placed = free & (entries[pos] == values)
            moving = ~free  # taken before this round: probe on; lost the race: look at the same entry again
            pos = np.where(moving, (pos + stride) & mask, pos)
            keep = ~placed
            pos, stride, values = pos[keep], stride[keep], values[keep]

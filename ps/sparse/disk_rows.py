"""The disk tier of a table: rows that left memory, in an open-addressing hash table in a file.

Each bucket holds one row inline: its id (int64, -1 where empty), its record
(weights and per-value optimizer state, float32), its per-row scalars and its
last-seen version. An id's home bucket is the top bits of its product with
2^64/phi; it probes the buckets after it (linear probing: the next bucket is
on the same page, so a miss costs one page read, not several). Every lookup
and every write runs each probe round as numpy operations over the whole
batch, so a push's rows are read in one batched pass, sorted by bucket.

The file is mapped into the shard's memory and is sized for a load of at most
1/2; when it fills it is rehashed into one twice as large. It is unlinked as
soon as it is mapped, so it goes with the process however the process ends.
Pages it reads stay in the kernel's page cache, not in the process: after each
batch the mapping is told to drop them (``madvise(MADV_DONTNEED)``; a shared
file mapping keeps the data in the file), so the shard's resident memory holds
the hot tier, not the disk tier.

Rows are never deleted here: a row read back into memory leaves a stale copy,
which the next eviction of that row overwrites; the memory tier is asked
first, so the copy is never read while the row is hot.
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np

_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)
MAX_LOAD = 0.5
_MIN_BITS = 12


class DiskRows:
    def __init__(self, width: int, scalars: list[tuple[str, np.dtype]], directory: str | None = None,
                 name: str = "rows"):
        """``width``: float32 values per row (weights and per-value state); ``scalars``: per-row (name, dtype)."""
        self.dtype = np.dtype([("id", np.int64), ("last_seen", np.int64), ("record", np.float32, (width,))]
                              + [(n, d) for n, d in scalars])
        self.directory = directory or tempfile.gettempdir()
        self.name = name
        self.count = 0  # distinct ids held (stale copies of hot rows included)
        self.reads = self.writes = 0
        self._map(_MIN_BITS)

    def _map(self, bits: int) -> None:
        self.bits = bits
        size = (1 << bits) * self.dtype.itemsize
        fd, path = tempfile.mkstemp(prefix=f"rayps-{self.name}-", suffix=".rows", dir=self.directory)
        try:
            os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
            os.unlink(path)  # the mapping keeps the file; nothing is left on disk when the process ends
        self.buckets = np.frombuffer(self._mmap, self.dtype)
        self.buckets["id"] = -1  # every page touched once: the file is written, so it takes its disk space now
        self.release()

    @property
    def nbytes(self) -> int:
        """Bytes of the file."""
        return len(self.buckets) * self.dtype.itemsize

    def release(self) -> None:
        """Drop the mapping's pages from this process's memory (they stay in the file and the page cache)."""
        self._mmap.madvise(mmap.MADV_DONTNEED)

    def _home(self, ids: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((ids.astype(np.uint64) * _FIBONACCI) >> np.uint64(64 - self.bits)).astype(np.int64)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """The bucket of each of ``ids`` (unique), -1 where it is not here."""
        out = np.full(len(ids), -1, np.int64)
        if not len(ids) or not self.count:
            return out
        mask = len(self.buckets) - 1
        todo = np.arange(len(ids))
        pos = self._home(ids)
        order = np.argsort(pos, kind="stable")  # read the file in order
        todo, pos = todo[order], pos[order]
        keys = self.buckets["id"]
        while len(todo):
            at = keys[pos]
            hit = at == ids[todo]
            out[todo[hit]] = pos[hit]
            going = ~hit & (at != -1)
            todo, pos = todo[going], (pos[going] + 1) & mask
        self.reads += len(ids)
        return out

    def read(self, buckets: np.ndarray) -> np.ndarray:
        """The rows at ``buckets`` (a structured copy)."""
        order = np.argsort(buckets, kind="stable")
        out = np.empty(len(buckets), self.dtype)
        out[order] = self.buckets[buckets[order]]
        return out

    def write(self, rows: np.ndarray) -> None:
        """Store ``rows`` (structured, unique ids): over their old copies, or in new buckets."""
        if not len(rows):
            return
        where = self.find(rows["id"])
        old = where >= 0
        if old.any():
            self.buckets[where[old]] = rows[old]
        new = rows[~old]
        if len(new):
            if self.count + len(new) > MAX_LOAD * len(self.buckets):
                self._grow(self.count + len(new))
            self._place(new)
            self.count += len(new)
        self.writes += len(rows)

    def _place(self, rows: np.ndarray) -> None:
        """Put rows whose ids are not here into empty buckets."""
        mask = len(self.buckets) - 1
        keys = self.buckets["id"]
        pos = self._home(rows["id"])
        todo = np.arange(len(rows))
        while len(todo):
            free = keys[pos] == -1
            # ids wanting one empty bucket all write their id; the one that stays has it, the others probe on
            keys[pos[free]] = rows["id"][todo[free]]
            won = free & (keys[pos] == rows["id"][todo])
            self.buckets[pos[won]] = rows[todo[won]]
            going = ~won
            todo, pos = todo[going], np.where(free[going], pos[going], (pos[going] + 1) & mask)

    def _grow(self, rows: int) -> None:
        """Rehash into a file twice as large (or more) as ``rows`` needs."""
        old_map, old_len = self._mmap, len(self.buckets)
        bits = self.bits
        while rows > MAX_LOAD * (1 << bits):
            bits += 1
        self._map(bits + 1)
        step = 1 << 20  # a block at a time: the old file is never read into memory whole
        for lo in range(0, old_len, step):
            block = np.frombuffer(old_map, self.dtype, count=min(step, old_len - lo), offset=lo * self.dtype.itemsize)
            taken = block[block["id"] != -1]  # a copy
            del block
            if len(taken):
                self._place(taken)
            old_map.madvise(mmap.MADV_DONTNEED)
            self.release()
        old_map.close()

    def items(self, block: int = 1 << 20):
        """Every row held, a block at a time (structured copies)."""
        for lo in range(0, len(self.buckets), block):
            part = self.buckets[lo:lo + block]
            part = part[part["id"] != -1].copy()
            self.release()
            if len(part):
                yield part

    def close(self) -> None:
        self.buckets = None
        self._mmap.close()

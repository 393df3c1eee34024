"""The disk tier of a table: rows that left memory, in an open-addressing hash table in a file.

Each bucket holds one row inline: its id plus one (int64, 0 where empty, so a
new file's zeros are empty buckets and creating it touches none of its pages), its record
(weights and per-value optimizer state, float32), its per-row scalars and its
last-seen version. An id's home bucket is the top bits of its product with
2^64/phi; it probes the buckets after it (linear probing: the next bucket is
on the same page, so a miss costs one page read, not several). Every lookup
and every write runs each probe round as numpy operations over the whole
batch, so a push's rows are read in one batched pass, sorted by bucket.

The file is mapped into the shard's memory and is sized for a load of at most
1/2; when it fills it is rehashed into one twice as large. It is unlinked as
soon as it is mapped, so it goes with the process however the process ends.
Every row read maps up to 16 pages (64 KB) of the file into the process: the
kernel's fault-around maps the neighbours it holds in its page cache too
(``MADV_RANDOM`` stops readahead from adding more). So rows are read and
written ``CHUNK`` at a time, and after each chunk the mapping is told to drop
its pages (``madvise(MADV_DONTNEED)``; a shared file mapping keeps the data in
the file and the page cache). The shard's resident memory then holds the hot
tier and at most ``CHUNK`` x 64 KB (64 MB) of the disk tier, not the disk tier.

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
CHUNK = 1024  # rows read or written between two drops of the mapping's pages: at most 64 MB of them resident


class DiskRows:
    def __init__(self, width: int, scalars: list[tuple[str, np.dtype]], directory: str | None = None,
                 name: str = "rows"):
        """``width``: float32 values per row (weights and per-value state); ``scalars``: per-row (name, dtype)."""
        self.dtype = np.dtype([("key", np.int64), ("last_seen", np.int64), ("record", np.float32, (width,))]
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
        # no readahead: a read fault would bring 128 KB of neighbours into the page cache, and the next fault
        # maps the cached ones into the process too (fault-around), 16 pages per row read
        self._mmap.madvise(mmap.MADV_RANDOM)
        self.buckets = np.frombuffer(self._mmap, self.dtype)

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
        for lo in range(0, len(ids), CHUNK):
            out[lo:lo + CHUNK] = self._find(ids[lo:lo + CHUNK])
            self.release()
        self.reads += len(ids)
        return out

    def _find(self, ids: np.ndarray) -> np.ndarray:
        out = np.full(len(ids), -1, np.int64)
        mask = len(self.buckets) - 1
        keys, want = self.buckets["key"], ids + 1
        pos = self._home(ids)
        order = np.argsort(pos, kind="stable")  # read the file in order
        todo, pos = order, pos[order]
        while len(todo):
            at = keys[pos]
            hit = at == want[todo]
            out[todo[hit]] = pos[hit]
            going = ~hit & (at != 0)
            todo, pos = todo[going], (pos[going] + 1) & mask
        return out

    def read(self, buckets: np.ndarray) -> np.ndarray:
        """The rows at ``buckets`` (a structured copy; ``id`` in the key field's place)."""
        order = np.argsort(buckets, kind="stable")
        out = np.empty(len(buckets), self.dtype)
        for lo in range(0, len(order), CHUNK):
            part = order[lo:lo + CHUNK]
            out[part] = self.buckets[buckets[part]]
            self.release()
        out["key"] -= 1
        return out.view(self.row_dtype)

    @property
    def row_dtype(self) -> np.dtype:
        """What ``read`` returns and ``write`` takes: the buckets' layout with ``id`` for ``key``."""
        return np.dtype({"names": ["id" if n == "key" else n for n in self.dtype.names],
                         "formats": [self.dtype.fields[n][0] for n in self.dtype.names],
                         "offsets": [self.dtype.fields[n][1] for n in self.dtype.names],
                         "itemsize": self.dtype.itemsize})

    def write(self, rows: np.ndarray) -> None:
        """Store ``rows`` (``row_dtype``, unique ids): over their old copies, or in new buckets."""
        if not len(rows):
            return
        for lo in range(0, len(rows), CHUNK):
            self._write(rows[lo:lo + CHUNK])
            self.release()
        self.writes += len(rows)

    def _write(self, rows: np.ndarray) -> None:
        stored = rows.view(self.dtype).copy()
        stored["key"] += 1
        where = self._find(rows["id"]) if self.count else np.full(len(rows), -1, np.int64)
        old = where >= 0
        if old.any():
            self.buckets[where[old]] = stored[old]
        new = stored[~old]
        if len(new):
            if self.count + len(new) > MAX_LOAD * len(self.buckets):
                self._grow(self.count + len(new))
            self._place(new)
            self.count += len(new)

    def _place(self, stored: np.ndarray) -> None:
        """Put rows (keys already id + 1) whose ids are not here into empty buckets."""
        mask = len(self.buckets) - 1
        keys = self.buckets["key"]
        pos = self._home(stored["key"] - 1)
        todo = np.arange(len(stored))
        while len(todo):
            free = keys[pos] == 0
            # ids wanting one empty bucket all write their key; the one that stays has it, the others probe on
            keys[pos[free]] = stored["key"][todo[free]]
            won = free & (keys[pos] == stored["key"][todo])
            self.buckets[pos[won]] = stored[todo[won]]
            going = ~won
            todo, pos = todo[going], np.where(free[going], pos[going], (pos[going] + 1) & mask)

    def _grow(self, rows: int) -> None:
        """Rehash into a file twice as large (or more) as ``rows`` needs."""
        old_map, old_len = self._mmap, len(self.buckets)
        bits = self.bits
        while rows > MAX_LOAD * (1 << bits):
            bits += 1
        self._map(bits + 1)
        for lo in range(0, old_len, CHUNK):  # a chunk at a time: neither file is ever resident whole
            block = np.frombuffer(old_map, self.dtype, count=min(CHUNK, old_len - lo), offset=lo * self.dtype.itemsize)
            taken = block[block["key"] != 0]  # a copy
            del block
            old_map.madvise(mmap.MADV_DONTNEED)
            if len(taken):
                self._place(taken)
                self.release()
        old_map.close()

    def items(self):
        """Every row held, a block of buckets at a time (``row_dtype`` copies)."""
        index = 0
        while (part := self.block(index, 16 * CHUNK)) is not None:
            if len(part):
                yield part
            index += 1

    def block(self, index: int, buckets: int = 1 << 20) -> np.ndarray | None:
        """The rows held in the ``index``-th block of ``buckets`` buckets (``row_dtype`` copies); None past
        the end: a reader that never holds more than one block."""
        lo = index * buckets
        if lo >= len(self.buckets):
            return None
        part = self.buckets[lo:lo + buckets]
        part = part[part["key"] != 0].copy()
        self.release()
        part["key"] -= 1
        return part.view(self.row_dtype)

    def close(self) -> None:
        self.buckets = None
        self._mmap.close()

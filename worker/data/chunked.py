"""Data read in chunks: the source a worker trains from, and how its epochs are cut into batches.

``ChunkedSource`` is a DataSource whose examples are the rows the pipeline
keeps (split, fixed, sampled), numbered chunk by chunk. It holds metadata
only: it pickles small, and a worker reads a chunk when a batch needs it,
keeping the last two, so a worker's memory is bounded by its chunks and not
by the data set.

``ChunkEpochs`` is its epoch plan (``plan_batches``): every chunk belongs to
one worker's stretch (balanced by batches); each epoch orders a worker's
chunks and each chunk's rows by seeded permutations; a batch never spans two
chunks, and the work queue cuts its units at chunk ends, so a unit reads
whole chunks and a dead worker's chunk goes back whole or in its unpushed
part.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch

from ...errors import JobError
from .chunkprep import TRAIN, ChunkPlan, chunk_rows
from .transform import FeatureTransform


def _split_sizes(rows: int, pieces: int) -> np.ndarray:
    """The sizes np.array_split(range(rows), pieces) gives."""
    sizes = np.full(pieces, rows // pieces, dtype=np.int64)
    sizes[: rows % pieces] += 1
    return sizes


class ChunkEpochs:
    def __init__(self, kept: list[int], num_workers: int, batch_size: int, seed: int = 0):
        self.kept = np.asarray(kept, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.kept)])
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.per_chunk = np.array([math.ceil(k / batch_size) for k in self.kept], dtype=np.int64)
        # Chunks to workers, largest first onto the least loaded: stretches differ by at most a chunk.
        load = np.zeros(num_workers, dtype=np.int64)
        self.owned: list[list[int]] = [[] for _ in range(num_workers)]
        for c in sorted(np.flatnonzero(self.per_chunk), key=lambda c: (-self.per_chunk[c], c)):
            w = int(np.argmin(load))
            self.owned[w].append(int(c))
            load[w] += self.per_chunk[c]
        self.stretches = [int(n) for n in load]
        self.per_epoch = int(load.sum())
        self._layout: tuple[int, np.ndarray, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's chunk order (worker by worker) and where each chunk's batches start."""
        if self._layout is None or self._layout[0] != epoch:
            order = [c for w, mine in enumerate(self.owned)
                     for c in np.asarray(mine)[np.random.default_rng([self.seed, 31, epoch, w]).permutation(len(mine))]]
            order = np.asarray(order, dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(self.per_chunk[order])])
            self._layout = (epoch, order, starts)
        return self._layout[1], self._layout[2]

    def chunk_ends(self, epoch: int) -> list[int]:
        return self._epoch(epoch)[1][1:].tolist()

    def _pieces(self, epoch: int, lo: int, hi: int):
        order, starts = self._epoch(epoch)
        at = int(np.searchsorted(starts, lo, side="right")) - 1
        while at < len(order) and starts[at] < hi:
            c = int(order[at])
            yield c, max(lo, starts[at]) - starts[at], min(hi, starts[at + 1]) - starts[at]
            at += 1

    def batches(self, unit) -> list[np.ndarray]:
        out = []
        for c, first, last in self._pieces(unit.epoch, unit.lo, unit.hi):
            rows = np.random.default_rng([self.seed, 37, unit.epoch, c]).permutation(int(self.kept[c]))
            parts = np.array_split(rows, int(self.per_chunk[c]))
            out.extend(self.offsets[c] + parts[j] for j in range(first, last))
        return out

    def examples(self, unit) -> int:
        return int(sum(_split_sizes(int(self.kept[c]), int(self.per_chunk[c]))[first:last].sum()
                       for c, first, last in self._pieces(unit.epoch, unit.lo, unit.hi)))


class ChunkedSource:
    """The rows of a chunked data set that the pipeline keeps, as model inputs."""

    def __init__(self, reader, chunks: list, kept: list[int], plan: ChunkPlan, features: FeatureTransform,
                 role: str = TRAIN, rows: str = TRAIN, classify: bool = True, cache: int = 2):
        self.reader, self.chunks, self.plan, self.features = reader, list(chunks), plan, features
        self.role, self.rows, self.classify, self.cache_size = role, rows, classify, cache
        self.kept = [int(k) for k in kept]
        self.offsets = np.concatenate([[0], np.cumsum(self.kept)]).astype(np.int64)
        self._cache: OrderedDict = OrderedDict()
        self.weighted = rows == TRAIN and (plan.sample.method == "importance" or bool(plan.sample.per_class))
        self.reads = 0  # chunks read by this process (a chunk read again after eviction counts again)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()  # a copy starts empty: it reads its own chunks
        return state

    def epoch_batches(self, num_workers: int, batch_size: int, seed: int = 0) -> ChunkEpochs:
        return ChunkEpochs(self.kept, num_workers, batch_size, seed)

    def _load(self, c: int) -> tuple:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        chunk = self.chunks[c]
        got = chunk_rows(self.reader.read(chunk), chunk, self.plan, self.role, self.rows)
        if len(got.y) != self.kept[c]:
            raise JobError(f"{chunk.where()}: {len(got.y)} rows now, {self.kept[c]} when the data was profiled; "
                           f"the data changed while the job used it")
        x = torch.from_numpy(self.features.apply(got.x))
        y = torch.from_numpy(np.ascontiguousarray(got.y, dtype=np.int64 if self.classify else np.float32))
        w = None if got.weight is None else torch.from_numpy(got.weight.astype(np.float32))
        self._cache[c] = (x, y, w)
        self.reads += 1
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return self._cache[c]

    def batch(self, indices: np.ndarray):
        indices = np.asarray(indices, dtype=np.int64)
        chunk_of = np.searchsorted(self.offsets, indices, side="right") - 1
        parts = []
        for c in np.unique(chunk_of):  # a training batch lies in one chunk; an evaluation may span two
            x, y, w = self._load(int(c))
            local = torch.from_numpy(indices[chunk_of == c] - self.offsets[c])
            parts.append((x[local], y[local], None if w is None else w[local]))
        x = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        y = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        if not self.weighted:
            return x, y
        weights = [p[2] if p[2] is not None else torch.ones(len(p[1])) for p in parts]
        return x, y, torch.cat(weights) if len(weights) > 1 else weights[0]

    def __repr__(self) -> str:
        return f"ChunkedSource({len(self)} {self.rows} rows in {len(self.chunks)} chunks of {self.reader.path})"

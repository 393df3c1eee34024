"""The worker's side of sparse tables: route ids to their shards, pull rows, push row gradients.

Rows are hashed to shards by ``id % num_shards`` (ps/sparse/row_store.py). A
``SparseRows`` splits a batch's unique ids by shard, asks every shard that
holds some of them at once through the job's transport, and puts the answers
back in the order asked. Pushes go to *every* shard every step, empty where
the batch touched none of its rows, so each table's clocks move on
everywhere. A push is sent without waiting; the next push (or ``flush``)
waits for it first, so a worker's pushes of one table reach each shard in
clock order whatever the transport.

When the worker knows the ids its next batch will pull (worker/loop/lookahead.py
reads them from the batch), it asks for their rows with the push, in one call
per shard that pushes and then pulls: each shard reads the rows after applying
the push, as a pull from the next forward would, and they travel while the
worker lands its dense step and loads the batch. The next forward's pulls are
answered from them when they hold every id asked, and asked anew otherwise.

Every transport implements the per-shard calls this uses (ps/transport/contract.py):
``sparse_pull(table, ids_per_shard, clock)``,
``sparse_push_async(table, clock, ids_per_shard, grads_per_shard, num_samples)`` and
``sparse_push_pull_async(..., pull_ids_per_shard)``.
"""

from __future__ import annotations

import numpy as np

from ...runtime import RAY, Runtime
from ..transport.contract import Pending


def split_by_shard(ids: np.ndarray, num_shards: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``ids`` grouped by shard: the permutation that groups them, and each shard's ids."""
    if num_shards == 1:
        return np.arange(len(ids)), [ids]
    owner = ids % num_shards
    order = np.argsort(owner, kind="stable")
    cuts = np.cumsum(np.bincount(owner, minlength=num_shards))[:-1]
    return order, np.split(ids[order], cuts)


def rows_by_shard(ids: np.ndarray, num_shards: int, dim: int, ask) -> np.ndarray:
    """The rows of ``ids`` in their order: ``ask(ids_per_shard)`` returns each shard's rows (None for a
    shard asked no ids), and they are put back where their ids stood."""
    order, parts = split_by_shard(ids, num_shards)
    return in_id_order(order, ask(parts), dim)


def in_id_order(order: np.ndarray, answers: list, dim: int) -> np.ndarray:
    """Each shard's rows (None where it was asked none) put back in the order of the ids ``split_by_shard``
    grouped with ``order``."""
    out = np.empty((len(order), dim), np.float32)
    if len(order):
        out[order] = np.concatenate([a for a in answers if a is not None])
    return out


class SparseRows:
    """Pulls and pushes for every sparse table of one worker, over one transport."""

    def __init__(self, transport, num_shards: int, dims: dict[str, int], compressor=None):
        self.transport = transport
        self.compressor = compressor  # a ps.compressor.RowCompressor when the job compresses its pushes
        self.num_shards = num_shards
        self.dims = dims
        self.clock = 0  # the iteration the model is computing: what pulls wait for
        self._pushing: Pending | None = None
        self._ahead: dict[str, RowsAhead] = {}  # rows asked behind the last push, for the next iteration
        self.rows_pulled = self.rows_pushed = 0
        self.rows_ahead = self.pulls_served_ahead = 0

    def pull(self, table: str, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` (unique, int64) of ``table`` for the current iteration: from the rows asked
        ahead when they hold every one, else asked now."""
        self.rows_pulled += len(ids)
        ahead = self._ahead.get(table)
        rows = ahead.rows_of(ids) if ahead is not None and len(ids) else None
        if rows is not None:
            self.pulls_served_ahead += 1
            return rows
        return rows_by_shard(ids, self.num_shards, self.dims[table],
                             lambda parts: self.transport.sparse_pull(table, parts, self.clock))

    def push(self, clock: int, grads: dict[str, tuple[np.ndarray, np.ndarray]], num_samples: int,
             upcoming: dict[str, np.ndarray] | None = None) -> None:
        """Send iteration ``clock``'s row gradients of every table (``{table: (ids, grads)}``; a table
        absent or empty still gets its empty push on every shard). ``upcoming``: the ids (unique, sorted)
        each table's next iteration will pull, asked now behind the push on each shard, so their rows
        travel while the worker does everything else before its next forward."""
        self.flush()
        self._ahead = {}
        pending = []
        for table, dim in self.dims.items():
            ids, rows = grads.get(table, (np.zeros(0, np.int64), np.zeros((0, dim), np.float32)))
            if self.compressor is not None:  # topk picks the rows to send (and holds the rest)
                ids, rows = self.compressor.select(table, ids, rows)
            order, id_parts = split_by_shard(ids, self.num_shards)
            sorted_rows = rows[order]
            cuts = np.cumsum([len(p) for p in id_parts])[:-1]
            row_parts = np.split(sorted_rows, cuts)
            if self.compressor is not None:
                row_parts = [self.compressor.encode(part) for part in row_parts]
            next_ids = upcoming.get(table) if upcoming else None
            if next_ids is not None and len(next_ids):
                next_order, next_parts = split_by_shard(next_ids, self.num_shards)
                pushed = self.transport.sparse_push_pull_async(table, clock, id_parts, row_parts, num_samples,
                                                               next_parts)
                self._ahead[table] = RowsAhead(next_ids, next_order, pushed, dim)
                self.rows_ahead += len(next_ids)
            else:
                pushed = self.transport.sparse_push_async(table, clock, id_parts, row_parts, num_samples)
            pending.append(pushed)
            self.rows_pushed += len(ids)
        self._pushing = Pending(lambda: [p.wait() for p in pending])

    def flush(self) -> None:
        """Wait for the push in flight (and raise its error)."""
        pushing, self._pushing = self._pushing, None
        if pushing is not None:
            pushing.wait()

    def drop(self) -> None:
        """Forget the push in flight and the rows asked ahead (after a failure, when the worker registers
        again)."""
        self._pushing = None
        self._ahead = {}


class RowsAhead:
    """Rows of one table asked behind a push: the ids (unique, sorted) and the call that brings them,
    put in id order at the first pull that wants them."""

    def __init__(self, ids: np.ndarray, order: np.ndarray, pending: Pending, dim: int):
        self.ids, self._order, self._pending, self._dim = ids, order, pending, dim  # order: split_by_shard's
        self._rows: np.ndarray | None = None

    def rows_of(self, ids: np.ndarray) -> np.ndarray | None:
        """The rows of ``ids`` (unique), or None when some were not asked ahead (or the call's answer went to
        an earlier reader with its error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            got = pending.wait()
            if got is not None:
                self._rows = in_id_order(self._order, got, self._dim)
        if self._rows is None:
            return None
        where = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return self._rows[where] if (self.ids[where] == ids).all() else None


class ShardLookups:
    """Rows as the shards hold them now, for evaluation on the driver: no clock, nothing created."""

    def __init__(self, shards: list, dims: dict[str, int], runtime: Runtime = RAY):
        self.shards, self.dims, self.get = shards, dims, runtime.get

    def pull(self, table: str, ids: np.ndarray) -> np.ndarray:
        return rows_by_shard(ids, len(self.shards), self.dims[table], lambda parts: self.get(
            [s.sparse_lookup.remote(table, p) for s, p in zip(self.shards, parts)]))

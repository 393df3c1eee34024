"""A shard's sparse tables: the calls every transport makes for embedding rows.

A mixin of ``ParameterShard`` (ps/core/shard.py), kept apart because it is one idea:
the shard holds named sparse tables (ps/sparse/table.py) beside its dense
range. Sparse calls obey the same rules as dense pushes: the worker must be
part of the job, be its current incarnation, and have registered again after
a rollback; a push waits at the checkpoint gate like a dense one; waiting for
a table's consistency bound ends with ``RolledBackError`` if the shard is
restored meanwhile. Every refusal is counted by reason and changes nothing.
"""

from __future__ import annotations

import numpy as np

from ...errors import LeftJobError, OutOfOrderError, RolledBackError, ShapeError
from .table import SparseInputError, SparseTable, UnknownTableError


class SparseMixin:
    _tables: dict[str, SparseTable]

    def _make_tables(self, tables, num_shards: int, worker_ids) -> None:
        self._tables = {t.name: SparseTable(t, self.shard_id, num_shards, worker_ids) for t in tables}

    def _table(self, name: str) -> SparseTable:
        table = self._tables.get(name)
        if table is None:
            self.count_rejection("unknown_table")
            known = ", ".join(repr(n) for n in sorted(self._tables)) or "none"
            raise UnknownTableError(f"{self!r} holds no sparse table {name!r} (it holds {known})")
        return table

    def _check_sparse_caller(self, worker_id: int, incarnation: int) -> None:
        self._clocks.completed(worker_id)  # raises for an unknown worker
        if not self._clocks.is_live(worker_id):
            self.count_rejection("out_of_order")
            raise LeftJobError(f"{self!r}: worker {worker_id} has left the job; its sparse call is refused")
        if self._ledger.knows(worker_id):
            try:  # the dense pushes' rule: only the current incarnation is heard
                self._ledger.check_incarnation(worker_id, int(incarnation), repr(self))
            except (LeftJobError, OutOfOrderError):
                self.count_rejection("out_of_order")
                raise
        if self._ledger.must_register(worker_id):
            self.count_rejection("rolled_back")
            raise RolledBackError(f"{self!r} was restored from a checkpoint; worker {worker_id} must register"
                                  " again before it pulls or pushes rows")

    def _checked(self, check, *args):
        try:
            return check(*args)
        except SparseInputError as e:
            self.count_rejection(e.reason)
            raise

    async def sparse_pull(self, worker_id: int, table: str, ids: np.ndarray, clock: int = 0,
                          incarnation: int = 0) -> tuple[np.ndarray, int]:
        """The rows ``ids`` of ``table`` for iteration ``clock`` (waiting as the table's mode says;
        0: no wait), created on first touch. Returns the rows (float32, len(ids) x dim) and the
        table's version on this shard."""
        t = self._table(table)
        ids = self._checked(t.check_ids, ids)
        self._check_sparse_caller(worker_id, incarnation)
        waited = await self.wait_until(lambda: t.ready(clock), worker_id, f"table {table!r} iteration {clock}")
        t.admitted(worker_id, clock, waited)
        return t.rows(ids, worker_id), t.version

    async def sparse_push(self, worker_id: int, table: str, clock: int, ids: np.ndarray, grads: np.ndarray,
                          num_samples: int = 1, incarnation: int = 0) -> str:
        """Push the summed row gradients of iteration ``clock`` (every step, also with no ids, so the
        table's clocks move on). Returns ``applied``, ``duplicate`` or ``stale``, as a dense push."""
        t = self._table(table)
        ids = self._checked(t.check_ids, ids)
        grads = self._decode_rows(grads, len(ids), t.config.dim)  # a compressed push's rows (ps/compression/decoding.py)
        grads = self._checked(t.check_grads, ids, grads)
        self._check_sparse_caller(worker_id, incarnation)
        await self.gate(worker_id, clock)
        self._check_sparse_caller(worker_id, incarnation)  # a restore may have happened at the gate
        try:
            outcome = t.push(worker_id, int(clock), ids, grads, int(num_samples))
        except OutOfOrderError:
            self.count_rejection("out_of_order")
            raise
        self._notify()
        return outcome

    async def sparse_lookup(self, table: str, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` as they stand, for evaluation: no clock, no touch, nothing created."""
        t = self._table(table)
        return t.rows(self._checked(t.check_ids, ids))

    async def sparse_export(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Every row this shard holds of ``table``: ids (int64) and values (float32 rows x dim)."""
        store = self._table(table).store
        return store.ids[:store.count].copy(), store.weights[:store.count].copy()

    # ---- the shard's life, for its tables -------------------------------------------

    def _tables_join(self, worker_id: int, clock: int) -> None:
        for t in self._tables.values():
            t.join(worker_id, clock)

    def _tables_leave(self, worker_id: int) -> None:
        for t in self._tables.values():
            if t.clocks.is_live(worker_id):
                t.leave(worker_id)

    def _tables_clocks(self, clocks: dict[int, int]) -> dict[int, int]:
        """The dense clocks with each worker's highest table clock folded in (a checkpoint's cut)."""
        out = dict(clocks)
        for t in self._tables.values():
            for w, c in t.clocks.snapshot().items():
                out[w] = max(out.get(w, 0), c)
        return out

    def _tables_reached(self, barrier: dict[int, int]) -> bool:
        return all(not t.clocks.is_live(w) or t.clocks.completed(w) >= c
                   for t in self._tables.values() for w, c in barrier.items() if self._ledger.knows(w))

    def _tables_stats(self) -> dict:
        return {name: t.stats() for name, t in sorted(self._tables.items())}

    def _tables_state(self) -> dict:
        return {name: t.state_dict() for name, t in self._tables.items()}

    def _tables_load(self, state: dict | None) -> None:
        state = state or {}
        if set(state) != set(self._tables):
            raise ShapeError(f"{self!r}: the state holds tables {sorted(state)}, this shard {sorted(self._tables)}")
        for name, s in state.items():  # every table's shape first, so a bad state changes no table
            self._tables[name].check_state(s)
        for name, s in state.items():
            self._tables[name].load_state_dict(s)

"""The sparse tables one shard holds, by name, as one part of the shard (ps/shard.py).

The shard asks this part for a table by name (``get``: an unknown name is
refused), and tells it when workers join and leave. For a checkpoint's cut it
folds each worker's highest table clock into the dense clocks and says when
every table has reached the cut; its state goes out and back in whole, every
table checked before any changes.
"""

from __future__ import annotations

from ...errors import UnknownTableError
from .table import SparseTable, TableConfig


class SparseTables:
    def __init__(self, configs: tuple[TableConfig, ...], shard_id: int, num_shards: int, worker_ids, where: str):
        self.where = where
        self.tables = {t.name: SparseTable(t, shard_id, num_shards, worker_ids) for t in configs}

    def __bool__(self) -> bool:
        return bool(self.tables)

    def get(self, name: str) -> SparseTable:
        table = self.tables.get(name)
        if table is None:
            known = ", ".join(repr(n) for n in sorted(self.tables)) or "none"
            raise UnknownTableError(f"{self.where} holds no sparse table {name!r} (it holds {known})")
        return table

    def join(self, worker_id: int, clock: int) -> None:
        for t in self.tables.values():
            t.join(worker_id, clock)

    def leave(self, worker_id: int) -> None:
        for t in self.tables.values():
            t.leave(worker_id)

    def fold_clocks(self, clocks: dict[int, int]) -> dict[int, int]:
        """The dense clocks with each worker's highest table clock folded in (a checkpoint's cut)."""
        out = dict(clocks)
        for t in self.tables.values():
            for w, c in t.clocks.snapshot().items():
                out[w] = max(out.get(w, 0), c)
        return out

    def reached(self, barrier: dict[int, int], known) -> bool:
        """Every live worker ``known`` to the shard has pushed every table up to its clock in ``barrier``."""
        return all(not t.clocks.is_live(w) or t.clocks.completed(w) >= c
                   for t in self.tables.values() for w, c in barrier.items() if known(w))

    def stats(self) -> dict:
        return {name: t.stats() for name, t in sorted(self.tables.items())}

    def state_dict(self, delta: bool = False) -> dict:
        """Every table's state (``delta``: only the rows changed since the last state was taken)."""
        return {name: t.state_dict(delta) for name, t in self.tables.items()}

    def check_state(self, state: dict | None) -> None:
        state = state or {}
        if set(state) != set(self.tables):
            raise UnknownTableError(f"{self.where}: the state holds tables {sorted(state)}, this shard"
                                    f" {sorted(self.tables)}")
        for name, s in state.items():
            self.tables[name].check_state(s)

    def load_state_dict(self, state: dict | None) -> None:
        """Restore a state ``check_state`` passed."""
        for name, s in (state or {}).items():
            self.tables[name].load_state_dict(s)

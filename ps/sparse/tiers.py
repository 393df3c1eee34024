"""A table larger than memory: the rows a budget holds in memory (the hot tier), the rest on local disk.

``TieredRowStore`` is a ``RowStore`` (row_store.py) whose packed arrays never
hold more rows than ``memory_bytes`` pays for; every other row lives in a
``DiskRows`` file (disk_rows.py). The table asks it what it asks any store:

- ``slots(ids)`` finds a batch's rows and brings the ones on disk into
  memory, so a pull or a push always works on memory. Room is made first, for
  every id of the batch that is not in memory, by evicting other rows: the
  batch's own are never chosen. A push's rows are read from disk in one
  batched pass (disk_rows.py sorts them by bucket).
- Admission: every row a step touches comes into memory for that step (a row
  is updated where it lies in memory, never on disk). New rows are made in
  memory.
- Eviction, when memory is full, writes a sixteenth of the budget's rows to
  disk in one batch, chosen by the table's ``policy``: ``lru`` the rows least
  recently pulled or pushed, ``lfu`` the rows touched fewest times while in
  memory (every eviction halves the counts, so old popularity fades).

What a row costs in memory is its record, scalars, id and last-seen version
(``row_bytes``), its use count (4 bytes) and its share of the hash index (8
to 32 bytes: the index doubles past a load of 1/2); the budget buys as many
rows as fit with all of that at its largest.

A checkpoint of a tiered table reads its disk rows too: a full one holds
every row in the shard's memory while it is written, so a table beyond
memory should be checkpointed incrementally (the rows changed since the last
cut) with full checkpoints rare, or not at all.
"""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from .disk_rows import DiskRows
from .row_store import RowStore
from .slot_index import SlotIndex

POLICIES = ("lru", "lfu")
_USE_COUNT_BYTES = 4
EXPORT_ROWS = 1 << 17  # rows (or disk buckets) per part of a hand-back: 9 MB of ids and weights at dim 16


def rows_within(budget: int, row_bytes: int) -> int:
    """How many rows of ``row_bytes`` fit in ``budget`` bytes with their hash index at its largest."""
    rows = budget // (row_bytes + 8)
    while rows > 0 and rows * row_bytes + SlotIndex.nbytes_for(rows) > budget:
        rows = int(rows * 0.98)
    return rows


class TieredRowStore(RowStore):
    def __init__(self, dim: int, state_spec: tuple, memory_bytes: int, policy: str = "lru",
                 directory: str | None = None, name: str = "rows"):
        if policy not in POLICIES:
            raise ConfigError(f"eviction policy ({policy!r}) must be one of {', '.join(POLICIES)}")
        self.policy = policy
        self.uses = np.zeros(0, np.uint32)
        super().__init__(dim, state_spec, capacity=1024)
        self.memory_bytes = int(memory_bytes)
        self.hot_rows = rows_within(self.memory_bytes, self.row_bytes + _USE_COUNT_BYTES)
        if self.hot_rows < 1024:
            raise ConfigError(f"a memory budget of {memory_bytes} bytes holds {self.hot_rows} rows of"
                              f" {self.row_bytes} bytes; it must hold at least 1,024")
        # room for the whole budget at once: untouched pages cost nothing, and growing by steps would copy the
        # arrays whenever the allocator cannot extend them in place (twice the tier, for a moment)
        self._grow(self.hot_rows)
        self.cold = DiskRows(self.width, [(n, d) for n, d, _ in self._scalars], directory, name)
        self.faults = self.evicted = 0  # rows read back from disk, rows written out to it
        self.away = 0  # rows on disk only (every row is in memory or away)

    # ---- the memory tier's arrays, with a use count per row ---------------------------

    def _grow(self, capacity: int) -> None:
        capacity = min(capacity, max(self.hot_rows, self.count)) if hasattr(self, "hot_rows") else capacity
        super()._grow(capacity)
        uses = np.zeros(self.capacity, np.uint32)
        uses[:min(len(self.uses), self.capacity)] = self.uses[:self.capacity]
        self.uses = uses

    # ---- lookups that bring rows into memory -----------------------------------------

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """The slot in memory of each id (read back from disk where it was there); -1 where the row is
        nowhere. Afterwards there is room in memory for every id of ``ids`` that was in neither tier."""
        slots = super().slots(ids)
        away = slots < 0
        n_away = int(np.count_nonzero(away))
        if n_away:
            if self.count + n_away > self.hot_rows:
                self._make_room(n_away, keep=slots[~away])
                slots = super().slots(ids)  # the evictions moved rows
                away = slots < 0
            where = self.cold.find(ids[away])
            found = where >= 0
            if found.any():
                rows = self.cold.read(where[found])
                sub = slots[away]
                sub[found] = self._admit(rows)
                slots[away] = sub
                self.faults += len(rows)
                self.away -= len(rows)
        hit = slots[slots >= 0]
        self.uses[hit] += 1
        return slots

    def read_weights(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The weights of rows ``ids`` from memory or disk, bringing none into memory (an evaluation's read)."""
        slots = super().slots(ids)
        out = self.weights[np.maximum(slots, 0)]
        found = slots >= 0
        if not found.all():
            where = self.cold.find(ids[~found])
            on_disk = where >= 0
            sub = out[~found]
            sub[on_disk] = self.cold.read(where[on_disk])["record"][:, :self.dim]
            out[~found] = sub
            found[np.flatnonzero(~found)[on_disk]] = True
        return out, found

    def _admit(self, rows: np.ndarray) -> np.ndarray:
        """Put rows read from disk into memory (room was made); their new slots."""
        n = len(rows)
        new = slice(self.count, self.count + n)
        if self.count + n > self.capacity:
            self._grow(self.count + n)
        self.block[new] = rows["record"]
        self.ids[new] = rows["id"]
        self.last_seen[new] = rows["last_seen"]
        for name, _, _ in self._scalars:
            self.scalars[name][new] = rows[name]
        self.uses[new] = 0
        slots = np.arange(self.count, self.count + n)
        self.index.insert(rows["id"], slots, self.ids)
        self.count += n
        return slots

    def create(self, ids: np.ndarray, values: np.ndarray, step: int) -> np.ndarray:
        if self.count + len(ids) > self.hot_rows:  # a read that made no room (``slots`` makes it for a batch)
            self._make_room(len(ids), keep=np.zeros(0, np.int64))
        made = super().create(ids, values, step)
        self.uses[made] = 1
        return made

    def _make_room(self, n: int, keep: np.ndarray) -> None:
        """Write rows out to disk until ``n`` more fit in memory, never the rows at slots ``keep``: a sixteenth
        of the budget at a time, so the cost of moving the rest (and of rebuilding the index) is shared by many
        faults, while the batch written stays small beside the budget."""
        if n + len(keep) > self.hot_rows:
            raise ConfigError(f"one batch touches {n + len(keep)} rows of a table whose memory budget holds"
                              f" {self.hot_rows}: raise its memory_mb")
        free = min(self.count, max(self.count + n - self.hot_rows, self.hot_rows // 16))
        key = (self.last_seen if self.policy == "lru" else self.uses)[:self.count].astype(np.float64)
        key[keep] = np.inf
        victims = np.argpartition(key, free - 1)[:free] if free < self.count else np.arange(self.count)
        victims = victims[np.isfinite(key[victims])]
        rows = np.empty(len(victims), self.cold.row_dtype)
        rows["id"], rows["last_seen"], rows["record"] = self.ids[victims], self.last_seen[victims], self.block[victims]
        for name, _, _ in self._scalars:
            rows[name] = self.scalars[name][victims]
        self.cold.write(rows)
        self.evicted += len(victims)
        self.away += len(victims)
        # the rows past the new end that stay fill the victims' slots below it: a copy of as many rows as left,
        # where moving every kept row down would copy nearly the whole tier (its size again, for a moment)
        end = self.count - len(victims)
        gone = np.zeros(self.count, bool)
        gone[victims] = True
        holes = np.flatnonzero(gone[:end])
        fillers = end + np.flatnonzero(~gone[end:])
        for array in (self.block, self.ids, self.last_seen, self.uses, *self.scalars.values()):
            array[holes] = array[fillers]
        self.count = end
        if self.policy == "lfu":
            self.uses[:self.count] >>= 1
        self.index.rebuild(self.ids[:self.count])
        self.moves += 1

    def evict_unseen(self, before: int) -> np.ndarray:
        raise ConfigError("a table with a memory budget keeps every row (on disk when not in memory); it does not"
                          " evict rows unseen (evict_after)")

    # ---- what it costs, and its state -------------------------------------------------

    def tier_stats(self) -> dict:
        return {"memory_rows": self.count, "memory_budget_rows": self.hot_rows, "disk_rows": self.away,
                "disk_bytes": self.cold.nbytes, "rows_read_from_disk": self.faults,
                "rows_written_to_disk": self.evicted, "eviction": self.policy}

    @property
    def rows(self) -> int:
        """Every row the table holds here, in memory or on disk."""
        return self.count + self.away

    @property
    def nbytes(self) -> int:
        """What the memory tier holds allocated (the disk tier's file is ``disk_bytes``)."""
        return super().nbytes + self.uses.nbytes

    def _memory_part(self, slots) -> dict:
        """Rows in memory (``slots``: an index or a slice) in a state's form."""
        return {"ids": self.ids[slots], "weights": self.weights[slots], "last_seen": self.last_seen[slots],
                "state": {k: v[slots] for k, v in self.state.items()}}

    def _disk_part(self, rows: np.ndarray) -> dict:
        """Rows read from disk (``row_dtype``) in a state's form."""
        weights, state = self.split(rows["record"])
        return {"ids": rows["id"], "weights": weights, "last_seen": rows["last_seen"],
                "state": {**state, **{name: rows[name] for name, _, _ in self._scalars}}}

    def _all_rows(self) -> dict:
        """Every row, in memory or on disk (a disk row's copy is stale when the row is in memory)."""
        parts = [self._memory_part(slice(0, self.count))]
        for rows in self.cold.items():
            parts.append(self._disk_part(rows[super().slots(rows["id"]) < 0]))
        return _joined(parts)

    def export(self, part: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
        """The rows in memory, ``EXPORT_ROWS`` a part, then the disk's rows not in memory a block of buckets
        at a time: the shard never holds more than a part of them (and its serialized copy) beside its budget
        while they are handed back."""
        memory_parts = -(-self.count // EXPORT_ROWS)
        if part < memory_parts:
            lo = part * EXPORT_ROWS
            hi = min(self.count, lo + EXPORT_ROWS)
            return self.ids[lo:hi].copy(), self.weights[lo:hi].copy(), True
        index = part - memory_parts
        rows = self.cold.block(index, EXPORT_ROWS)
        if rows is None:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32), False
        away = rows[super().slots(rows["id"]) < 0]
        return away["id"].copy(), away["record"][:, :self.dim].copy(), (index + 1) * EXPORT_ROWS < len(self.cold.buckets)

    def state_dict(self) -> dict:
        return {k: (v.copy() if isinstance(v, np.ndarray) else {n: a.copy() for n, a in v.items()})
                for k, v in self._all_rows().items()}

    def rows_state(self, ids: np.ndarray) -> dict:
        """The rows ``ids`` that are held, from memory or disk, bringing none into memory."""
        slots = super().slots(ids)
        where = self.cold.find(ids[slots < 0])
        return _joined([self._memory_part(slots[slots >= 0]), self._disk_part(self.cold.read(where[where >= 0]))])

    def load_state_dict(self, state: dict) -> None:
        """Restore every row: as many as the budget holds into memory (the most recently seen), the rest to disk."""
        ids = np.asarray(state["ids"], np.int64)
        self.cold.close()
        self.cold = DiskRows(self.width, [(n, d) for n, d, _ in self._scalars], self.cold.directory, self.cold.name)
        order = np.argsort(-np.asarray(state["last_seen"]), kind="stable")
        hot, away = order[:self.hot_rows], order[self.hot_rows:]

        def pick(where):
            return {"ids": ids[where], "weights": state["weights"][where], "last_seen": state["last_seen"][where],
                    "state": {k: v[where] for k, v in state["state"].items()}}
        super().load_state_dict(pick(hot))
        self.uses = np.zeros(self.capacity, np.uint32)
        if len(away):
            part = pick(away)
            rows = np.empty(len(away), self.cold.row_dtype)
            rows["id"], rows["last_seen"] = part["ids"], part["last_seen"]
            rows["record"] = np.concatenate([part["weights"]] + [part["state"][n] for n, _ in self._values], axis=1)
            for name, _, _ in self._scalars:
                rows[name] = part["state"][name]
            self.cold.write(rows)
        self.away = len(away)


def _joined(parts: list[dict]) -> dict:
    """Row states (ids, weights, last seen, state) one after another, as one."""
    return {"ids": np.concatenate([p["ids"] for p in parts]),
            "weights": np.concatenate([p["weights"] for p in parts]),
            "last_seen": np.concatenate([p["last_seen"] for p in parts]),
            "state": {k: np.concatenate([p["state"][k] for p in parts]) for k in parts[0]["state"]}}

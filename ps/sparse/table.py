"""One sparse embedding table's part on one shard: rows, row-wise optimizer, clocks and consistency.

A shard (ps/shard.py) holds its dense range and any number of these, by name.
Each table has its own consistency mode, independent of the dense table's
(for example dense bsp and embeddings ssp, as the largest recommender systems
run), and its own ``Consistency`` (ps/core/consistency.py: the same rules the
dense range keeps, asked the same way): every worker pushes every table on
every shard once per step (an empty push when its batch touched no row
there), so a table's clocks say exactly which step's sparse gradients it has.
A bsp round applies the sample-weighted sum of its pushes' row gradients once.

A push's ``(worker, incarnation, clock)`` is applied at most once: a clock at
or below the worker's completed one is a duplicate, one that skips ahead is a
protocol error. Staleness is the table's version when the push is applied
minus its version when that worker last pulled.

Memory: the frequency filter (``min_touches``) creates a row only once it was
pulled that many times (until then it reads as zeros and its gradients are
dropped and counted); eviction (``evict_after``) removes rows no pull or push
touched in that many of the table's updates, swept every quarter of that.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError, OutOfOrderError, ShapeError
from ..core.consistency import Consistency, ConsistencyConfig
from .delta import ChangeLog
from .row_optimizers import RowOptimizerConfig, make_row_optimizer
from .ids import strictly_increasing, unique_sorted
from .row_store import INITIALIZERS, RowStore, initial_rows
from .tiers import POLICIES, TieredRowStore
from ...settings import number, require


@dataclass(frozen=True)
class TableConfig:
    """A sparse table: its shape (from the model's module) and how the shards train it."""

    name: str
    num_embeddings: int
    dim: int
    optimizer: RowOptimizerConfig = field(default_factory=RowOptimizerConfig)
    consistency: ConsistencyConfig = field(default_factory=lambda: ConsistencyConfig("asp"))
    init: str = "normal"
    init_scale: float = 1.0  # normal: the std; uniform: the bound
    min_touches: int = 1  # the frequency filter: a row is created at its N-th pull
    evict_after: int | None = None  # drop rows unseen for this many of the table's updates
    seed: int = 0
    memory_mb: float | None = None  # the rows (and their state) a shard holds in memory; the rest on disk
    eviction: str = "lru"  # which rows leave memory first: lru (least recently seen) | lfu (least used)
    disk_dir: str | None = None  # where the disk tier's file is (default: the temp dir)

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and self.name != "", f"table name ({self.name!r}) must be a string")
        number(self.num_embeddings, f"table {self.name!r} num_embeddings", minimum=1, integer=True)
        number(self.dim, f"table {self.name!r} dim", minimum=1, integer=True)
        require(self.init in INITIALIZERS, f"table {self.name!r} init ({self.init!r}) must be one of"
                f" {', '.join(INITIALIZERS)}")
        number(self.init_scale, f"table {self.name!r} init_scale", minimum=0)
        number(self.min_touches, f"table {self.name!r} min_touches", minimum=1, integer=True)
        if self.evict_after is not None:
            number(self.evict_after, f"table {self.name!r} evict_after", minimum=1, integer=True)
        if self.memory_mb is not None:
            number(self.memory_mb, f"table {self.name!r} memory_mb", minimum=0, exclusive=True)
            require(self.evict_after is None, f"table {self.name!r}: a table with memory_mb keeps every row (on"
                    " disk when not in memory), so evict_after does not go with it")
        require(self.eviction in POLICIES, f"table {self.name!r} eviction ({self.eviction!r}) must be one of"
                f" {', '.join(POLICIES)}")
        require(self.min_touches == 1 or self.num_embeddings <= MAX_FILTERED_ROWS,
                f"table {self.name!r}: the frequency filter (min_touches) keeps a count per possible row, and"
                f" {self.num_embeddings} rows is more than it holds ({MAX_FILTERED_ROWS})")
        require(self.consistency.quorum is None, f"table {self.name!r}: a sparse table has no backup workers"
                " (quorum)")
        require(not (self.optimizer.name == "ftrl" and self.init != "zeros"),
                f"table {self.name!r}: ftrl derives its weights from its state, so it starts at zero"
                f" (init 'zeros', not {self.init!r})")


#: the frequency filter's counts are 2 bytes per possible row: up to 4 GB of them
MAX_FILTERED_ROWS = 2**31


def untrained_rows(config: TableConfig, ids: np.ndarray) -> np.ndarray:
    """How rows no pull created read: as they would start, or zeros behind a frequency filter."""
    if config.min_touches > 1:
        return np.zeros((len(ids), config.dim), np.float32)
    return initial_rows(ids, config.dim, config.init, config.init_scale, config.seed, config.name)


class SparseTable:
    def __init__(self, config: TableConfig, shard_id: int, num_shards: int, worker_ids):
        self.config = config
        self.shard_id, self.num_shards = shard_id, num_shards
        self.optimizer = make_row_optimizer(config.optimizer)
        self.local_rows = (config.num_embeddings - shard_id + num_shards - 1) // num_shards
        if config.memory_mb is None:
            self.store = RowStore(config.dim, self.optimizer._spec())
        else:
            self.store = TieredRowStore(config.dim, self.optimizer._spec(), int(config.memory_mb * 2**20),
                                        config.eviction, config.disk_dir, f"{config.name}-{shard_id}")
        # the frequency filter counts pulls per possible row (2 bytes each), rows made or not
        self.touches = np.zeros(self.local_rows, np.uint16) if config.min_touches > 1 else None
        self.consistency = Consistency(config.consistency, worker_ids, repr(self))
        self.changes = ChangeLog()  # rows changed since the last cut: an incremental checkpoint writes those
        self.version = 0
        self.pulled_at: dict[int, int] = {}
        # each worker's last pull: its ids and their slots, which its push of the same ids reuses
        self._pulled: dict[int, tuple] = {}
        self.counters = Counter()
        self.staleness = Counter()
        self.max_lead = 0
        self.wait_s = Counter()

    def __repr__(self) -> str:
        return f"table {self.config.name!r} on ps-shard-{self.shard_id}"

    @property
    def mode(self) -> str:
        return self.config.consistency.mode

    @property
    def clocks(self):
        return self.consistency.clocks

    # ---- checks: nothing malformed reaches the state -------------------------------

    def check_ids(self, ids: object) -> np.ndarray:
        if not isinstance(ids, np.ndarray) or ids.dtype != np.int64 or ids.ndim != 1:
            shown = f"{ids.dtype} of shape {ids.shape}" if isinstance(ids, np.ndarray) else type(ids).__name__
            raise InputError(f"{self!r}: ids must be a 1-D int64 array, got {shown}", "ids_type")
        if len(ids):
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.config.num_embeddings:
                bad = low if low < 0 else high
                raise InputError(f"{self!r}: id {bad} is out of range [0, {self.config.num_embeddings})",
                                       "id_range")
            if self.num_shards > 1:
                wrong = ids[ids % self.num_shards != self.shard_id]
                if len(wrong):
                    raise InputError(f"{self!r}: id {int(wrong[0])} belongs to ps-shard-"
                                           f"{int(wrong[0]) % self.num_shards}, not this one", "wrong_shard")
        return ids

    def check_grads(self, ids: np.ndarray, grads: object) -> np.ndarray:
        shape = (len(ids), self.config.dim)
        if not isinstance(grads, np.ndarray) or grads.dtype != np.float32 or grads.shape != shape:
            shown = f"{grads.dtype} of shape {grads.shape}" if isinstance(grads, np.ndarray) else type(grads).__name__
            raise InputError(f"{self!r}: row gradients must be float32 of shape {shape}, got {shown}",
                                   "rows_shape")
        if not np.isfinite(grads).all():
            bad = int(np.count_nonzero(~np.isfinite(grads)))
            raise InputError(f"{self!r}: row gradients hold {bad} NaN or Inf values; gradients must be"
                                   " finite", "non_finite")
        return grads

    # ---- consistency (ps/core/consistency.py decides; the table asks) ------------------

    def ready(self, clock: int) -> bool:
        return self.consistency.admits(clock)

    def admitted(self, worker_id: int, clock: int, waited: float) -> None:
        if waited:
            self.wait_s[worker_id] += waited
        if clock > 0 and self.clocks.is_live(worker_id):
            self.max_lead = max(self.max_lead, self.consistency.lead(clock))

    def join(self, worker_id: int, clock: int) -> None:
        self.consistency.join(worker_id, clock)
        self.step_round()

    def leave(self, worker_id: int) -> None:
        self.consistency.leave(worker_id)
        self.step_round()

    # ---- pulls and pushes ---------------------------------------------------------

    def rows(self, ids: np.ndarray, worker_id: int | None = None) -> np.ndarray:
        """The rows ``ids`` (checked), created on first touch; a worker's pull counts as a touch, and
        its version is what that worker's next push is stale against. ``worker_id`` None: a read
        for evaluation, which creates nothing and counts nothing (absent rows read as they would start)."""
        store, c = self.store, self.config
        if worker_id is None:  # a read: from wherever the rows are, bringing none into memory
            out, found = store.read_weights(ids)
            if not found.all():
                out[~found] = untrained_rows(c, ids[~found])
            return out
        slots = store.slots(ids)
        absent = slots < 0
        if absent.any() and worker_id is not None:
            slots[absent] = self._touch_new(ids[absent])  # -1 where the frequency filter made none
            absent = slots < 0
        out = store.weights[np.maximum(slots, 0)]
        if absent.any():
            out[absent] = 0 if worker_id is not None else untrained_rows(c, ids[absent])
        if worker_id is not None:
            seen = slots[slots >= 0]
            store.last_seen[seen] = self.version
            self.pulled_at[worker_id] = self.version
            self._pulled[worker_id] = (ids, slots, store.moves)
            self.changes.note(ids, store.count)  # their last-seen versions moved (and some were made)
            self.counters["rows_pulled"] += len(ids)
        return out

    def _touch_new(self, missing: np.ndarray) -> np.ndarray:
        """Rows pulled that are not here: created now, or (frequency filter) counted and left out.
        Returns each one's new slot, -1 where none was made (the row reads as zeros)."""
        c = self.config
        in_order = strictly_increasing(missing)
        unique = missing if in_order else unique_sorted(missing)
        create = unique
        if self.touches is not None:
            local = unique // self.num_shards
            counts = np.minimum(self.touches[local].astype(np.int64) + 1, np.iinfo(np.uint16).max)
            self.touches[local] = counts
            self.changes.note_touched(local)
            create = unique[counts >= c.min_touches]
            self.counters["rows_filtered"] += len(unique) - len(create)
        values = initial_rows(create, c.dim, c.init, c.init_scale, c.seed, c.name)
        made = self.store.create(create, values, self.version)
        self.counters["rows_created"] += len(create)
        if self.touches is not None:
            self.touches[create // self.num_shards] = 0
        if in_order and len(create) == len(missing):  # every one made, in the order asked
            return made
        slots = np.full(len(missing), -1, np.int64)
        if len(create):
            where = np.minimum(np.searchsorted(create, missing), len(create) - 1)
            hit = create[where] == missing
            slots[hit] = made[where[hit]]
        return slots

    def push(self, worker_id: int, clock: int, ids: np.ndarray, grads: np.ndarray, num_samples: int) -> str:
        """Apply (or gather into its round) one worker's row gradients of iteration ``clock``.
        ``ids`` and ``grads`` are checked; returns the outcome, as a dense push's."""
        completed = self.clocks.completed(worker_id)
        if clock <= completed:
            self.counters["duplicates"] += 1
            return "duplicate"
        if clock > completed + 1:
            raise OutOfOrderError(f"{self!r}: worker {worker_id} pushed clock {clock}, but its next clock is"
                                  f" {completed + 1}; a push's clock may not skip ahead")
        pulled = self.pulled_at.get(worker_id, self.version)
        action = self.consistency.accept(worker_id, clock, lambda: {
            "ids": ids.copy(), "grads": grads.copy(), "num_samples": int(num_samples), "pulled": pulled})
        outcome = "applied"
        if action == "late":
            self.counters["pushes_dropped"] += 1
            outcome = "stale"
        elif action == "apply":
            self._apply(ids, grads, [self.version - pulled], self._pulled.pop(worker_id, None))
        self.counters["rows_pushed"] += len(ids)
        self.step_round()
        return outcome

    def step_round(self) -> None:
        """Apply a complete round once: the sample-weighted sum of its row gradients."""
        taken = self.consistency.take_round()
        if taken is None:
            return
        pending = [r for _, r in taken]
        total = sum(r["num_samples"] for r in pending) or 1
        ids = np.concatenate([r["ids"] for r in pending])
        grads = np.concatenate([r["grads"] * np.float32(r["num_samples"] / total) if len(pending) > 1
                                else r["grads"] for r in pending])
        self._apply(ids, grads, [self.version - r["pulled"] for r in pending])

    def _apply(self, ids: np.ndarray, grads: np.ndarray, staleness: list[int], pulled=None) -> None:
        """One update of the rows ``ids`` (the table's lr; divided by the staleness if so configured).
        ``pulled``: the pushing worker's last pull (ids, slots, the store's moves then)."""
        lr = self.consistency.lr(float(self.config.optimizer.lr), staleness)
        self.counters["pushes_applied"] += len(staleness)
        self.staleness.update(staleness)
        if len(ids):
            # a worker's push comes sorted, so unique; a bsp round's several pushes may share ids: summed
            if not strictly_increasing(ids):
                unique, inverse = np.unique(ids, return_inverse=True)
                summed = np.zeros((len(unique), grads.shape[1]), np.float32)
                np.add.at(summed, inverse, grads)
                ids, grads = unique, summed
            store = self.store
            slots = self._slots_of(ids, pulled)
            here = slots >= 0
            if not here.all():  # filtered or evicted since the pull: nothing to update
                self.counters["rows_dropped"] += int(np.count_nonzero(~here))
                slots, grads = slots[here], grads[here]
            records = store.block[slots]  # weights and per-value state, one gather
            weights, state = store.split(records)
            scalars = {k: v[slots] for k, v in store.scalars.items()}
            self.optimizer.step(weights, grads, {**state, **scalars}, lr)
            store.block[slots] = records
            for k, v in scalars.items():
                store.scalars[k][slots] = v
            store.last_seen[slots] = self.version
            self.changes.note(ids, store.count)
        self.version += 1
        after = self.config.evict_after
        if after is not None and self.version % max(1, after // 4) == 0:
            gone = self.store.evict_unseen(self.version - after)
            self.changes.note_removed(gone)
            self.counters["rows_evicted"] += len(gone)

    def _slots_of(self, ids: np.ndarray, pulled) -> np.ndarray:
        """The slots of a push's ids: a worker pushes the ids it pulled, in the same order, so their
        slots are known unless rows moved since (eviction, a restore) or the ids differ."""
        store = self.store
        if pulled is None or pulled[2] != store.moves or not np.array_equal(pulled[0], ids):
            return store.slots(ids)
        slots = pulled[1].copy()
        missing = slots < 0  # filtered at the pull: another worker's pull may have made the row since
        if missing.any():
            slots[missing] = store.slots(ids[missing])
        return slots

    # ---- what the driver reads, and checkpoints -------------------------------------

    def stats(self) -> dict:
        tiers = self.store.tier_stats() if isinstance(self.store, TieredRowStore) else {}
        return {**tiers, "rows": self.store.rows, "bytes": self.store.nbytes, "row_bytes": self.store.row_bytes,
                "version": self.version, "mode": self.mode, "clocks": self.clocks.snapshot(),
                "staleness_histogram": {int(k): v for k, v in sorted(self.staleness.items())},
                "max_clock_gap": self.max_lead, "wait_s": {int(k): round(v, 4) for k, v in self.wait_s.items()},
                **{k: int(v) for k, v in self.counters.items()}}

    def state_dict(self, delta: bool = False) -> dict:
        """The table's state; ``delta``: only the rows changed since the last state was taken (``merged``
        folds it onto that one, ps/sparse/delta.py). Either way the change log starts afresh."""
        changed, removed, touched_since = self.changes.take()
        if delta:
            store, touched = self.store.rows_state(changed), touched_since
        else:
            store = self.store.state_dict()
            touched = np.flatnonzero(self.touches) if self.touches is not None else np.zeros(0, np.int64)
        extra = {"delta": True, "removed": removed} if delta else {}
        return {
            **extra, "name": self.config.name, "store": store, "version": self.version,
            **self.consistency.state_dict(),
            "pulled_at": dict(self.pulled_at),
            "touched": touched, "touches": self.touches[touched].copy() if self.touches is not None else touched,
            "counters": dict(self.counters), "staleness": dict(self.staleness), "max_lead": self.max_lead,
            "wait_s": dict(self.wait_s),
        }

    def check_state(self, state: dict) -> None:
        """Raise ShapeError unless ``state`` is a state of this table (its name, dim and ids)."""
        if state.get("name") != self.config.name:
            raise ShapeError(f"{self!r}: the state is table {state.get('name')!r}'s")
        weights, ids = state["store"]["weights"], np.asarray(state["store"]["ids"])
        if weights.ndim != 2 or weights.shape[1] != self.config.dim or len(ids) != len(weights):
            raise ShapeError(f"{self!r}: stored rows have shape {weights.shape} for {len(ids)} ids; dim must be"
                             f" {self.config.dim}")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.config.num_embeddings
                         or (ids % self.num_shards != self.shard_id).any()):
            raise ShapeError(f"{self!r}: the state holds ids that are not this shard's rows")

    def load_state_dict(self, state: dict) -> None:
        """Restore a full ``state_dict()`` (a delta merged onto its base first: ps/sparse/delta.py)."""
        if state.get("delta"):
            raise ShapeError(f"{self!r}: the state holds only the rows changed since a cut; merge it onto"
                             " the cut it follows first")
        self.check_state(state)
        consistency = Consistency(self.config.consistency, [], repr(self))
        consistency.load_state_dict(state)
        self.store.load_state_dict(state["store"])
        self.consistency = consistency
        self.version = int(state["version"])
        self.pulled_at = {int(w): int(v) for w, v in state["pulled_at"].items()}
        self._pulled = {}
        self.changes.clear()
        if self.touches is not None:
            self.touches = np.zeros(self.local_rows, np.uint16)
            self.touches[np.asarray(state["touched"], np.int64)] = state["touches"]
        self.counters, self.staleness = Counter(state["counters"]), Counter(state["staleness"])
        self.max_lead, self.wait_s = int(state["max_lead"]), Counter(state["wait_s"])

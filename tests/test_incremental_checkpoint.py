"""Incremental checkpoints of sparse tables: O(k) bytes after a step that touched k rows, a chain of them
restored bit for bit, and the damaged-checkpoint rules over the chain. Shards driven with asyncio, no Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rayps.ps.core.checkpoint import CheckpointStore, CorruptCheckpoint
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import Step
from rayps.ps.served import newest_shard_state, part_name, shard_state
from rayps.ps.shard import ParameterShard
from rayps.ps.sparse.row_optimizers import RowOptimizerConfig
from rayps.ps.sparse.table import TableConfig

ROWS, DIM = 1_000_000, 8


def shard(evict_after=None, min_touches=1, memory_mb=None) -> ParameterShard:
    table = TableConfig("emb", ROWS, DIM, RowOptimizerConfig("adam", lr=0.05), ConsistencyConfig("asp"),
                        init_scale=0.1, min_touches=min_touches, evict_after=evict_after, memory_mb=memory_mb)
    return ParameterShard(0, np.zeros(4, np.float32), [0], OptimizerConfig(name="sgd", lr=0.1), ScheduleConfig(),
                          ConsistencyConfig("asp"), tables=(table,))


def step(s: ParameterShard, clock: int, ids: np.ndarray) -> None:
    rng = np.random.default_rng(clock)

    async def run():
        await s.sparse_pull(0, "emb", ids, 0)
        await s.sparse_push(0, "emb", clock, ids, rng.normal(size=(len(ids), DIM)).astype(np.float32), 4)
        await s.push(Step(0, clock, rng.normal(size=4).astype(np.float32), clock - 1, 4, 0.5))
    asyncio.run(run())


def cut(s: ParameterShard, store: CheckpointStore, index: int, since: int | None) -> int:
    """Write ``s``'s state as checkpoint ``index`` (following ``since``); the bytes of its part."""
    state = s.state_dict(since, index)
    store.write(index, {part_name(0): state}, base=since if state["tables_since"] is not None else None)
    return sum((store.path(index) / f"{part_name(0)}.{ext}").stat().st_size for ext in ("safetensors", "json"))


def rows_of(state: dict) -> dict:
    t = state["tables"]["emb"]
    order = np.argsort(t["store"]["ids"])
    out = {k: t["store"][k][order].tobytes() for k in ("ids", "weights", "last_seen")}
    out.update({k: v[order].tobytes() for k, v in t["store"]["state"].items()})
    out["touches"] = sorted(zip(np.asarray(t["touched"]).tolist(), np.asarray(t["touches"]).tolist()))
    out.update(version=t["version"], params=state["params"].tobytes())
    return out


def test_an_incremental_checkpoint_after_a_step_that_touched_k_rows_writes_o_k_bytes(tmp_path):
    s = shard()
    store = CheckpointStore(tmp_path, keep=10)
    rng = np.random.default_rng(0)
    for clock in range(1, 21):  # 20 steps of 5,000 ids: about 100,000 rows
        step(s, clock, np.unique(rng.integers(0, ROWS, 5_000)))
    rows = len(s.state_dict()["tables"]["emb"]["store"]["ids"])
    full = cut(s, store, 0, None)
    sizes = {}
    for i, k in enumerate((10, 1_000, 10_000), start=1):
        step(s, 20 + i, np.unique(rng.integers(0, ROWS, k)))
        sizes[k] = cut(s, store, i, i - 1)
    per_row = 4 * DIM * 3 + 16  # float32 weights and Adam's two moments; the id and the last-seen version
    assert full >= rows * per_row
    # the same fixed part each time, then per_row bytes (and Adam's step count) per row touched
    assert sizes[10] < 20_000
    for k in (1_000, 10_000):
        assert (k - 10) * per_row <= sizes[k] - sizes[10] <= (k - 10) * (per_row + 8) + 2_000, (k, sizes)
    assert sizes[10_000] < full / 8


@pytest.mark.parametrize("tiered", [False, True])
def test_a_chain_of_incremental_checkpoints_restores_bit_for_bit_and_trains_on_alike(tmp_path, tiered):
    # eviction and the frequency filter both change what a delta must carry: rows leave, counts move; a table
    # beyond memory (which keeps every row, no evict_after) gives its changed rows from memory and disk
    kinds = dict(memory_mb=0.2, min_touches=2) if tiered else dict(evict_after=8, min_touches=2)
    live = shard(**kinds)
    store = CheckpointStore(tmp_path, keep=10)
    rng = np.random.default_rng(1)
    since = None
    for clock in range(1, 31):
        step(live, clock, np.unique(rng.integers(0, 3_000, 300)))
        if clock % 5 == 0:
            index = clock // 5 - 1
            cut(live, store, index, since)
            since = index
    assert [store.base(i) for i in range(6)] == [None, 0, 1, 2, 3, 4]
    restored = shard(**kinds)
    restored.load_state_dict(shard_state(store, 5, 0))
    assert rows_of(restored.state_dict()) == rows_of(live.state_dict())
    stats = live.state_dict()["tables"]["emb"]["counters"]
    assert stats["rows_filtered"] > 0
    if tiered:
        assert live._tables.get("emb").stats()["disk_rows"] > 500
    else:
        assert stats["rows_evicted"] > 0
    restored.enter(0, 0)
    for clock in range(31, 41):
        ids = np.unique(rng.integers(0, 3_000, 300))
        step(live, clock, ids)
        step(restored, clock, ids)
    assert rows_of(restored.state_dict()) == rows_of(live.state_dict())


def test_a_damaged_link_makes_every_later_checkpoint_of_its_chain_unreadable(tmp_path):
    live = shard()
    store = CheckpointStore(tmp_path, keep=10)
    since = None
    for index in range(4):
        step(live, index + 1, np.arange(index * 10, index * 10 + 50, dtype=np.int64))
        cut(live, store, index, since)
        since = index
    (store.path(2) / f"{part_name(0)}.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CorruptCheckpoint, match="it follows checkpoint 2, which cannot be read"):
        shard_state(CheckpointStore(tmp_path), 3, 0)
    step_found, state = newest_shard_state(CheckpointStore(tmp_path), 0)
    assert step_found == 1 and state["tables"]["emb"]["version"] == 2


def test_pruning_keeps_the_checkpoints_a_kept_one_follows(tmp_path):
    live = shard()
    store = CheckpointStore(tmp_path, keep=2)
    since = None
    for index in range(5):
        step(live, index + 1, np.arange(index, index + 20, dtype=np.int64))
        cut(live, store, index, since if index != 3 else None)  # 3 is full again
        since = index
    assert store.steps() == [3, 4]  # 4 follows 3, which is full: nothing older is needed
    store = CheckpointStore(tmp_path / "b", keep=2)
    since = None
    for index in range(4):
        step(live, 6 + index, np.arange(index, index + 20, dtype=np.int64))
        cut(live, store, index, since)
        since = index
    assert store.steps() == [0, 1, 2, 3]  # 3 -> 2 -> 1 -> 0: the chain stays whole

"""Tables larger than memory: a table whose memory budget holds a fraction of its rows trains to the same
bits as one that holds them all, with rows going to disk and coming back; the disk tier on its own."""

from __future__ import annotations

import numpy as np
import pytest

from rayps.errors import ConfigError
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.sparse.disk_rows import DiskRows
from rayps.ps.sparse.row_optimizers import RowOptimizerConfig
from rayps.ps.sparse.table import SparseTable, TableConfig
from rayps.ps.sparse.tiers import TieredRowStore

DIM = 8


def table(memory_mb=None, eviction="lru", optimizer="adam", **kw) -> SparseTable:
    config = TableConfig("emb", 2**62, DIM, RowOptimizerConfig(optimizer, lr=0.05), ConsistencyConfig("asp"),
                         init_scale=0.1, memory_mb=memory_mb, eviction=eviction,
                         init="zeros" if optimizer == "ftrl" else "normal", **kw)
    return SparseTable(config, 0, 1, [0])


def zipf_batches(steps: int, batch: int = 2_000, seed: int = 0):
    """Batches of ids from the whole int64 space, Zipf-distributed over 200,000 distinct ids."""
    rng = np.random.default_rng(seed)
    vocab = rng.integers(0, 2**62, 200_000)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    for _ in range(steps):
        ids = np.unique(vocab[rng.choice(len(vocab), batch, p=weights / weights.sum())])
        yield ids, rng.normal(size=(len(ids), DIM)).astype(np.float32)


def train(t: SparseTable, steps: int, seed: int = 0) -> None:
    for clock, (ids, grads) in enumerate(zipf_batches(steps, seed=seed), start=1):
        t.rows(ids, 0)
        assert t.push(0, clock, ids, grads, 1) == "applied"


def every_row(t: SparseTable) -> dict:
    state = t.store.state_dict()
    order = np.argsort(state["ids"])
    return {"ids": state["ids"][order].tobytes(), "weights": state["weights"][order].tobytes(),
            **{k: v[order].tobytes() for k, v in state["state"].items()}}


@pytest.mark.parametrize("eviction, optimizer", [("lru", "adam"), ("lfu", "adagrad"), ("lru", "ftrl")])
def test_a_table_over_its_memory_budget_trains_to_the_same_bits_as_one_in_memory(eviction, optimizer):
    whole, tiered = table(optimizer=optimizer), table(memory_mb=0.5, eviction=eviction, optimizer=optimizer)
    train(whole, 60)
    train(tiered, 60)
    stats = tiered.stats()
    rows = len(whole.store.ids[:whole.store.count])
    assert stats["memory_rows"] <= stats["memory_budget_rows"] < rows / 3  # most rows live on disk
    assert stats["rows"] == stats["memory_rows"] + stats["disk_rows"] == rows
    # every row not in memory was written out; rows came back when asked again
    assert stats["rows_written_to_disk"] >= rows - stats["memory_rows"] and stats["rows_read_from_disk"] > 1_000
    assert tiered.store.nbytes <= 0.5 * 2**20  # what it holds in memory, index and slack included
    assert every_row(whole) == every_row(tiered)
    ids = np.unique(np.concatenate([ids for ids, _ in zipf_batches(3, seed=9)]))
    np.testing.assert_array_equal(whole.rows(ids), tiered.rows(ids))  # evaluation reads, disk rows included
    # handed back in parts (memory, then the disk a block of buckets at a time): every row once, as trained
    parts, part, more = [], 0, True
    while more:
        got_ids, got_rows, more = tiered.store.export(part)
        parts.append((got_ids, got_rows))
        part += 1
    got_ids = np.concatenate([i for i, _ in parts])
    got_rows = np.concatenate([r for _, r in parts])
    want_ids, want_rows, _ = whole.store.export()
    assert len(parts) > 1 and len(got_ids) == len(np.unique(got_ids)) == len(want_ids)
    np.testing.assert_array_equal(got_rows[np.argsort(got_ids)], want_rows[np.argsort(want_ids)])


def test_a_tiered_tables_state_restores_with_every_row_and_trains_on_alike():
    a = table(memory_mb=1)
    train(a, 30)
    b = table(memory_mb=1)
    b.load_state_dict(a.state_dict())
    assert every_row(a) == every_row(b)
    assert b.stats()["disk_rows"] > 0  # the rows beyond the budget went straight to disk
    b.consistency.join(0, 30)
    a.consistency.leave(0)
    a.consistency.join(0, 30)
    for t in (a, b):
        for clock, (ids, grads) in enumerate(zipf_batches(10, seed=3), start=31):
            t.rows(ids, 0)
            t.push(0, clock, ids, grads, 1)
    assert every_row(a) == every_row(b)


def test_the_budget_and_the_policy_are_checked():
    with pytest.raises(ConfigError, match=r"eviction \('fifo'\) must be one of lru, lfu"):
        table(memory_mb=1, eviction="fifo")
    with pytest.raises(ConfigError, match="evict_after does not go with it"):
        table(memory_mb=1, evict_after=10)
    with pytest.raises(ConfigError, match="must hold at least 1,024"):
        TieredRowStore(DIM, (), memory_bytes=10_000)
    t = table(memory_mb=1)  # a batch of more rows than the budget holds is refused
    too_many = np.arange(t.store.hot_rows + 10, dtype=np.int64)
    with pytest.raises(ConfigError, match="raise its memory_mb"):
        t.rows(too_many, 0)


def test_disk_rows_hold_what_was_written_through_growth():
    disk = DiskRows(3, [("step", np.dtype(np.int32))])
    rng = np.random.default_rng(0)
    want: dict[int, tuple] = {}
    for round_ in range(12):
        ids = np.unique(rng.integers(0, 2**63 - 1, 4_000))
        if want:  # some written again: their copies are replaced, not added
            ids = np.unique(np.concatenate([ids, rng.choice(list(want), 500)]))
        rows = np.zeros(len(ids), disk.row_dtype)
        rows["id"], rows["record"], rows["step"] = ids, rng.normal(size=(len(ids), 3)), round_
        disk.write(rows)
        want.update({int(r["id"]): (r["record"].tobytes(), int(r["step"])) for r in rows})
    assert disk.count == len(want) and disk.bits > 12  # it grew, and rehashed every row
    keys = np.array(list(want), np.int64)
    got = disk.read(disk.find(keys))
    assert all(want[int(r["id"])] == (r["record"].tobytes(), int(r["step"])) for r in got)
    assert (disk.find(rng.integers(0, 2**63 - 1, 1_000)) == -1).all()
    assert sum(len(part) for part in disk.items()) == len(want)


@pytest.mark.timeout(240)
def test_a_job_whose_table_is_mostly_on_disk_applies_every_row_gradient_once(in_process, tmp_path):
    """5,000 rows on 2 shards that keep about 1,200 each in memory: every example's row goes up by one per
    epoch (SGD, lr 1), through evictions and reads back, with a worker's rows evicted between its pull and
    its push by the other worker's pulls."""
    import functools

    import rayps
    from tests.test_sparse_jobs import SparseCounter

    x = np.arange(5_000, dtype=np.int64).reshape(-1, 1)
    rng = np.random.default_rng(0)
    x = x[rng.permutation(5_000)]
    test = np.arange(5_000, 5_100, dtype=np.int64).reshape(-1, 1)
    result = rayps.Job(model=functools.partial(SparseCounter, 5_100),
                       data={"train": (x, np.zeros(5_000, np.float32)), "test": (test, np.zeros(100, np.float32))},
                       loss="tests.test_sparse_jobs:minus_sum", optimizer={"name": "sgd", "lr": 1.0},
                       schedule={"name": "constant"}, servers=2, batch_size=50, epochs=3, eval_every_s=0,
                       sparse={"optimizer": {"name": "sgd", "lr": 1.0}, "init": "zeros", "memory_mb": 0.06,
                               "eviction": "lfu"}).run(
        output=tmp_path / "run", progress=False, dashboard=False, report=False, runtime=in_process)
    got = result.model.rows._source.pull("count", np.arange(5_000, dtype=np.int64))[:, 0]
    assert (got == 3).all(), np.flatnonzero(got != 3)[:10]
    table = result.summary["sparse_tables"]["count"]
    assert table["rows"] == 5_000 and table["disk_rows"] > 2_000 and table["rows_read_from_disk"] > 2_000

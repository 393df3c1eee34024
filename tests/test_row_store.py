"""How a shard stores a sparse table's rows: the hash index from id to slot, and the packed rows.

No Ray: the index is checked against a dict on ids from the whole int64 range and on patterns that
crowd a multiplicative hash; the store against what a row must hold after growth, eviction and a
restore, and against its memory bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from rayps.ps.sparse.row_optimizers import RowOptimizerConfig, make_row_optimizer
from rayps.ps.sparse.row_store import RowStore
from rayps.ps.sparse.slot_index import SlotIndex


def indexed(batches) -> tuple[SlotIndex, np.ndarray]:
    """An index filled batch by batch as a store fills it (packed slots, keys written first)."""
    index, keys, count = SlotIndex(), np.zeros(sum(len(b) for b in batches) + 1, np.int64), 0
    for ids in batches:
        keys[count:count + len(ids)] = ids
        index.insert(ids, np.arange(count, count + len(ids)), keys)
        count += len(ids)
    return index, keys


@pytest.mark.parametrize("pattern", ["random int64", "sequential", "strided by 2^20", "one big batch"])
def test_the_index_finds_every_id_it_holds_and_no_other(pattern):
    rng = np.random.default_rng(0)
    if pattern == "random int64":
        ids = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 60_000, dtype=np.int64))
    elif pattern == "sequential":
        ids = np.arange(60_000, dtype=np.int64)
    else:
        ids = np.arange(60_000, dtype=np.int64) << 20
    ids = rng.permutation(ids)
    sizes = [len(ids)] if pattern == "one big batch" else rng.integers(1, 3_000, 100)
    batches = np.split(ids, np.cumsum(sizes)[:-1])
    index, keys = indexed([b for b in batches if len(b)])
    assert index.count == len(ids) and index.count <= 0.5 * len(index.entries)  # the load it promises
    slot_of = {int(k): i for i, k in enumerate(keys[:len(ids)])}
    probe = np.concatenate([rng.choice(ids, 5_000), ids[:1] + 1, ids.max(keepdims=True) + 3])
    expected = np.array([slot_of.get(int(k), -1) for k in probe])
    np.testing.assert_array_equal(index.lookup(probe, keys), expected)
    assert (index.lookup(ids, keys) >= 0).all()


def test_the_index_rebuilt_after_rows_move_finds_them_where_they_went():
    ids = np.arange(0, 50_000 * 3, 3, dtype=np.int64)
    index, keys = indexed([ids])
    kept = keys[:len(ids)][::2].copy()  # eviction keeps every other row, packed
    index.rebuild(kept)
    np.testing.assert_array_equal(index.lookup(kept, kept), np.arange(len(kept)))
    assert (index.lookup(ids[1::2], kept) == -1).all()


def adam_store(dim=16) -> RowStore:
    return RowStore(dim, make_row_optimizer(RowOptimizerConfig("adam"))._spec())


def test_a_new_row_starts_fresh_in_a_slot_an_evicted_row_left():
    store = adam_store(4)
    old = np.array([10, 20, 30], np.int64)
    store.create(old, np.ones((3, 4), np.float32), step=0)
    slots = store.slots(old)
    store.state["exp_avg"][slots] = 7.0  # as if trained
    store.scalars["step"][slots] = 5
    store.last_seen[slots[1:]] = 9
    assert len(store.evict_unseen(before=1)) == 1 and store.count == 2
    new = np.array([40], np.int64)
    slot = store.create(new, np.full((1, 4), 2.0, np.float32), step=9)
    assert slot[0] == 2  # the freed slot, packed
    assert (store.weights[slot] == 2).all() and (store.state["exp_avg"][slot] == 0).all()
    assert store.scalars["step"][slot[0]] == 0
    np.testing.assert_array_equal(store.slots(np.array([10, 20, 30, 40])), [-1, 0, 1, 2])
    assert (store.state["exp_avg"][[0, 1]] == 7).all()  # the survivors kept their state


def test_rows_survive_growth_while_a_view_of_the_store_is_held():
    store = adam_store(4)
    first = np.arange(1000, dtype=np.int64)
    store.create(first, np.arange(4000, dtype=np.float32).reshape(1000, 4), step=0)
    held = store.weights  # a view: the arrays cannot grow in place, so they are copied
    store.create(np.arange(1000, 5000, dtype=np.int64), np.zeros((4000, 4), np.float32), step=0)
    assert store.capacity >= 5000
    np.testing.assert_array_equal(store.weights[store.slots(first)], np.arange(4000).reshape(1000, 4))
    assert held.shape[0] == 1024  # the old view still reads the old memory, intact


def test_a_store_holds_at_most_1_3x_a_row_and_its_optimizer_state():
    store = adam_store(16)
    rng = np.random.default_rng(1)
    ids = np.unique(rng.integers(0, 2**62, 200_000))
    for part in np.array_split(ids, 97):
        store.create(part, np.zeros((len(part), 16), np.float32), step=0)
    row_and_state = 16 * 4 * 3 + 4  # weights, Adam's two moments, its step count
    assert store.nbytes / store.count <= 1.3 * row_and_state, store.nbytes / store.count


def test_state_round_trip_restores_rows_state_and_index():
    store = adam_store(4)
    ids = np.array([5, 1, 9, 3], np.int64)
    store.create(ids, np.arange(16, dtype=np.float32).reshape(4, 4), step=2)
    store.state["exp_avg_sq"][:4] = 0.5
    other = adam_store(4)
    other.load_state_dict(store.state_dict())
    probe = np.array([9, 5, 7], np.int64)
    np.testing.assert_array_equal(other.slots(probe) >= 0, [True, True, False])
    np.testing.assert_array_equal(other.weights[other.slots(probe[:2])], store.weights[store.slots(probe[:2])])
    assert (other.state["exp_avg_sq"][:4] == 0.5).all() and (other.last_seen[:4] == 2).all()

"""Sparse tables without Ray: row-wise optimizers against references, creation, filter, eviction, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayps.errors import ConfigError, OutOfOrderError, ShapeError
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.sparse.row_optimizers import RowOptimizerConfig
from rayps.ps.sparse.row_store import initial_rows
from rayps.ps.sparse.table import SparseTable, TableConfig

DIM = 4


def table(opt: RowOptimizerConfig, rows: int = 50, shards: int = 1, shard: int = 0, **kw) -> SparseTable:
    cfg = TableConfig("t", rows, DIM, optimizer=opt, init="zeros" if opt.name == "ftrl" else "normal",
                      init_scale=0.1, **kw)
    return SparseTable(cfg, shard, shards, [0])


def touched_steps(steps: int = 12, rows: int = 20, seed: int = 0):
    """Per step: a few unique ids (not every row every step) and their gradients."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = np.unique(rng.integers(0, rows, 7)).astype(np.int64)
        yield ids, rng.normal(size=(len(ids), DIM)).astype(np.float32)


def train(t: SparseTable, steps) -> None:
    for clock, (ids, grads) in enumerate(steps, start=1):
        t.rows(ids, worker_id=0)
        assert t.push(0, clock, ids, grads, 1) == "applied"


def torch_rows(ids_grads, start: np.ndarray, make_opt) -> np.ndarray:
    """The same rows trained by a torch sparse optimizer, one 1-row embedding per row, stepped only when
    its row is touched: lazy updates with per-row step counts."""
    embs = [torch.nn.Embedding(1, DIM, sparse=True) for _ in range(len(start))]
    for e, row in zip(embs, start):
        e.weight.data[:] = torch.from_numpy(row)
    opts = [make_opt(e.parameters()) for e in embs]
    for ids, grads in ids_grads:
        for i, g in zip(ids, grads):
            opts[i].zero_grad()
            (embs[i](torch.zeros(1, dtype=torch.long)) * torch.from_numpy(g)).sum().backward()
            opts[i].step()
    return np.stack([e.weight.detach().numpy()[0] for e in embs])


@pytest.mark.parametrize("name,make_opt", [
    ("adam", lambda p: torch.optim.SparseAdam(list(p), lr=0.05)),
    ("adagrad", lambda p: torch.optim.Adagrad(list(p), lr=0.05)),
    ("sgd", lambda p: torch.optim.SGD(list(p), lr=0.05)),
])
def test_row_optimizers_match_torch_on_the_same_rows_and_gradients(name, make_opt):
    steps = list(touched_steps())
    t = table(RowOptimizerConfig(name, lr=0.05))
    ids = np.arange(20, dtype=np.int64)
    start = t.rows(ids, worker_id=0).copy()
    train(t, steps)
    expected = torch_rows(steps, start, make_opt)
    np.testing.assert_allclose(t.rows(ids), expected, rtol=2e-5, atol=2e-6)
    assert not np.allclose(t.rows(ids), start)  # it trained


def test_adam_step_count_is_per_row():
    t = table(RowOptimizerConfig("adam", lr=0.05))
    steps = list(touched_steps())
    train(t, steps)
    counts = np.zeros(20, np.int64)
    for ids, _ in steps:
        counts[ids] += 1
    slots = t.store.slots(np.arange(20))
    touched = counts > 0
    assert (slots[~touched] == -1).all()  # a row no step touched was never made
    np.testing.assert_array_equal(t.store.state["step"][slots[touched]], counts[touched])


def ftrl_reference(ids_grads, rows, alpha, beta, l1, l2) -> np.ndarray:
    """FTRL-proximal per coordinate, from the paper's Algorithm 1, in float64 loops."""
    z, n, w = np.zeros((rows, DIM)), np.zeros((rows, DIM)), np.zeros((rows, DIM))
    for ids, grads in ids_grads:
        for i, g_row in zip(ids, grads):
            for j, g in enumerate(g_row.astype(np.float64)):
                if abs(z[i, j]) <= l1:
                    w[i, j] = 0.0
                else:
                    w[i, j] = -(z[i, j] - math.copysign(l1, z[i, j])) / ((beta + math.sqrt(n[i, j])) / alpha + l2)
                sigma = (math.sqrt(n[i, j] + g * g) - math.sqrt(n[i, j])) / alpha
                z[i, j] += g - sigma * w[i, j]
                n[i, j] += g * g
    # the weight the next prediction uses
    return np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / ((beta + np.sqrt(n)) / alpha + l2))


def test_ftrl_matches_the_papers_update_equations():
    steps = list(touched_steps(steps=25))
    cfg = RowOptimizerConfig("ftrl", lr=0.1, beta=1.0, l1=0.3, l2=0.5)
    t = table(cfg)
    train(t, steps)
    expected = ftrl_reference(steps, 20, 0.1, 1.0, 0.3, 0.5)
    ids = np.arange(20, dtype=np.int64)
    np.testing.assert_allclose(t.rows(ids), expected, rtol=1e-4, atol=1e-6)
    assert (t.rows(ids) == 0).any() and (t.rows(ids) != 0).any()  # l1 made some exactly zero, not all


def test_ftrl_needs_a_zero_start():
    with pytest.raises(ConfigError, match="starts at zero"):
        TableConfig("w", 10, 1, optimizer=RowOptimizerConfig("ftrl"), init="normal")


def test_rows_are_created_on_first_touch_with_the_same_values_on_any_shard_count():
    one = table(RowOptimizerConfig("sgd"), rows=1000)
    ids = np.array([3, 998, 17], np.int64)
    assert one.store.count == 0
    values = one.rows(ids, worker_id=0)
    assert one.store.count == 3
    for shard in range(3):  # the same ids on a three-shard table: the same initial values
        t = table(RowOptimizerConfig("sgd"), rows=1000, shards=3, shard=shard)
        mine = ids[ids % 3 == shard]
        np.testing.assert_array_equal(t.rows(mine, worker_id=0), values[ids % 3 == shard])
    np.testing.assert_array_equal(values, initial_rows(ids, DIM, "normal", 0.1, 0, "t"))
    assert abs(initial_rows(np.arange(20000), 8, "normal", 1.0, 0, "x").std() - 1.0) < 0.02


def test_checks_refuse_bad_ids_and_gradients_and_change_nothing():
    t = table(RowOptimizerConfig("sgd"), rows=10, shards=2, shard=1)
    for bad, match in ((np.array([-1]), "out of range"), (np.array([11]), "out of range"),
                       (np.array([2]), "belongs to ps-shard-0"), (np.array([1.0]), "int64"),
                       (np.array([[1]]), "1-D")):
        with pytest.raises(ShapeError, match=match):
            t.check_ids(bad)
    ids = np.array([1, 3], np.int64)
    with pytest.raises(ShapeError, match=r"shape \(2, 4\)"):
        t.check_grads(ids, np.zeros((2, 3), np.float32))
    with pytest.raises(ShapeError, match="NaN"):
        t.check_grads(ids, np.full((2, DIM), np.nan, np.float32))
    assert t.store.count == 0 and t.version == 0


def test_clocks_duplicates_and_skips():
    t = table(RowOptimizerConfig("sgd"))
    ids, g = np.array([1], np.int64), np.ones((1, DIM), np.float32)
    t.rows(ids, 0)
    assert t.push(0, 1, ids, g, 1) == "applied"
    before = t.rows(ids).copy()
    assert t.push(0, 1, ids, g, 1) == "duplicate"
    np.testing.assert_array_equal(t.rows(ids), before)
    with pytest.raises(OutOfOrderError, match="skip ahead"):
        t.push(0, 3, ids, g, 1)


def test_bsp_table_sums_a_round_weighted_by_samples():
    cfg = TableConfig("t", 10, DIM, optimizer=RowOptimizerConfig("sgd", lr=1.0), init="zeros",
                      consistency=ConsistencyConfig("bsp"))
    t = SparseTable(cfg, 0, 1, [0, 1])
    ids = np.array([2], np.int64)
    t.rows(ids, 0)
    assert not t.ready(2)
    t.push(0, 1, ids, np.full((1, DIM), 1.0, np.float32), 1)
    assert t.version == 0 and not t.ready(2)  # waits for worker 1
    t.push(1, 1, ids, np.full((1, DIM), 4.0, np.float32), 3)
    assert t.version == 1 and t.ready(2)
    np.testing.assert_allclose(t.rows(ids), -(0.25 * 1 + 0.75 * 4))


def test_frequency_filter_creates_a_row_at_its_nth_touch_and_drops_gradients_before():
    t = table(RowOptimizerConfig("sgd"), min_touches=3)
    ids = np.array([5], np.int64)
    for clock in (1, 2):
        assert (t.rows(ids, 0) == 0).all() and t.store.count == 0
        t.push(0, clock, ids, np.ones((1, DIM), np.float32), 1)
    assert t.counters["rows_dropped"] == 2 and t.counters["rows_filtered"] == 2
    np.testing.assert_array_equal(t.rows(ids, 0), initial_rows(ids, DIM, "normal", 0.1, 0, "t"))
    assert t.store.count == 1


def test_rows_unseen_for_t_updates_are_evicted():
    t = table(RowOptimizerConfig("sgd", lr=0.1), evict_after=8)
    cold, hot = np.array([1], np.int64), np.array([2], np.int64)
    t.rows(np.array([1, 2], np.int64), 0)
    g = np.ones((1, DIM), np.float32)
    for clock in range(1, 15):
        t.rows(hot, 0)
        t.push(0, clock, hot, g, 1)
    assert t.store.count == 1 and t.counters["rows_evicted"] == 1
    assert t.store.slots(cold)[0] == -1 and t.store.slots(hot)[0] >= 0
    np.testing.assert_allclose(t.rows(hot), initial_rows(hot, DIM, "normal", 0.1, 0, "t") - 1.4, rtol=1e-5)


def test_state_round_trip_continues_exactly():
    steps = list(touched_steps(steps=20))
    a = table(RowOptimizerConfig("adam", lr=0.05), min_touches=2)
    train(a, steps[:10])
    b = table(RowOptimizerConfig("adam", lr=0.05), min_touches=2)
    b.load_state_dict(a.state_dict())
    for t in (a, b):
        for clock, (ids, grads) in enumerate(steps[10:], start=11):
            t.rows(ids, 0)
            t.push(0, clock, ids, grads, 1)
    ids = np.arange(20, dtype=np.int64)
    np.testing.assert_array_equal(a.rows(ids), b.rows(ids))
    assert a.store.count == b.store.count


def test_a_state_of_another_table_or_shard_is_refused_before_any_table_changes():
    a = table(RowOptimizerConfig("sgd"), rows=100, shards=2, shard=0)
    a.rows(np.array([2, 4], np.int64), 0)
    other_shard = table(RowOptimizerConfig("sgd"), rows=100, shards=2, shard=1)
    with pytest.raises(ShapeError, match="not this shard's rows"):
        other_shard.load_state_dict(a.state_dict())
    assert other_shard.store.count == 0

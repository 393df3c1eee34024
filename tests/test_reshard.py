"""Resharding a cut: N shards' states made into M shards' states, every value and row where the new layout
looks for it, and training on from them bit for bit as the N shards would have. Driven with asyncio, no Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rayps.errors import ConfigError, ShapeError
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.partition import partition
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import Step
from rayps.ps.reshard import reshard
from rayps.ps.shard import ParameterShard
from rayps.ps.sparse.client import split_by_shard
from rayps.ps.sparse.row_optimizers import RowOptimizerConfig
from rayps.ps.sparse.table import TableConfig

SIZE, BUFFERS, ROWS, DIM, WORKERS = 23, 5, 200, 3, 2
TABLES = (TableConfig("emb", ROWS, DIM, RowOptimizerConfig("adam", lr=0.05),
                      ConsistencyConfig("bsp"), init_scale=0.1, min_touches=2),
          TableConfig("wide", ROWS, 1, RowOptimizerConfig("adagrad", lr=0.1), ConsistencyConfig("bsp")))


def shards(n: int, mode: str = "bsp") -> list[ParameterShard]:
    init = np.linspace(-1, 1, SIZE).astype(np.float32)
    buffers = np.arange(BUFFERS, dtype=np.float64)
    out = []
    for r, b in zip(partition(SIZE, n), partition(BUFFERS, n, allow_empty=True)):
        out.append(ParameterShard(r.shard_id, init[r.lo:r.hi], list(range(WORKERS)),
                                  OptimizerConfig(name="adam", lr=0.01), ScheduleConfig(), ConsistencyConfig(mode),
                                  init_buffers=buffers[b.lo:b.hi], buffer_integer=np.zeros(b.size, bool),
                                  tables=TABLES, num_shards=n))
    return out


def step(group: list[ParameterShard], worker: int, clock: int) -> None:
    """What a worker does at ``clock``: pull its rows, push every table and its dense gradient to every shard."""
    n = len(group)
    rng = np.random.default_rng(1000 * clock + worker)
    grad = rng.normal(size=SIZE).astype(np.float32)
    buffers = rng.normal(size=BUFFERS)
    ranges, buffer_ranges = partition(SIZE, n), partition(BUFFERS, n, allow_empty=True)

    async def run():
        for t in TABLES:
            ids = np.unique(rng.integers(0, ROWS, 40)).astype(np.int64)
            rows = rng.normal(size=(len(ids), t.dim)).astype(np.float32)
            order, parts = split_by_shard(ids, n)
            grads = rows[order]
            at = 0
            for s, part in zip(group, parts):
                await s.sparse_pull(worker, t.name, part, 0)
                await s.sparse_push(worker, t.name, clock, part, grads[at:at + len(part)], 8)
                at += len(part)
        for s, r, b in zip(group, ranges, buffer_ranges):
            await s.push(Step(worker, clock, grad[r.lo:r.hi], clock - 1, 8, 0.5,
                              buffers[b.lo:b.hi] if b.size else None))
    asyncio.run(run())


def whole(group: list[ParameterShard]) -> dict:
    """The model the shards hold together: flat values and optimizer state, and every row with its state."""
    states = [s.state_dict() for s in group]
    out = {"params": np.concatenate([s["params"] for s in states]),
           "exp_avg": np.concatenate([s["optimizer"]["exp_avg"] for s in states]),
           "exp_avg_sq": np.concatenate([s["optimizer"]["exp_avg_sq"] for s in states]),
           "buffers": np.concatenate([s["buffers"]["values"] for s in states]),
           "step": {s["optimizer"]["step"] for s in states}, "version": {s["version"] for s in states}}
    for t in TABLES:
        stores = [s["tables"][t.name]["store"] for s in states]
        ids = np.concatenate([st["ids"] for st in stores])
        order = np.argsort(ids)
        out[t.name, "ids"] = ids[order]
        out[t.name, "weights"] = np.concatenate([st["weights"] for st in stores])[order]
        for k in stores[0]["state"]:
            out[t.name, k] = np.concatenate([st["state"][k] for st in stores])[order]
        # the frequency filter's counts, by id
        touched = [(np.asarray(s["tables"][t.name]["touched"]) * len(group) + i, s["tables"][t.name]["touches"])
                   for i, s in enumerate(states)]
        pairs = sorted(zip(np.concatenate([a for a, _ in touched]).tolist(),
                           np.concatenate([b for _, b in touched]).tolist()))
        out[t.name, "touches"] = pairs
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].tobytes() == b[key].tobytes(), key
        else:
            assert a[key] == b[key], key


def restored(states: list[dict], n: int) -> list[ParameterShard]:
    group = shards(n)
    for s, state in zip(group, reshard(states, n)):
        s.load_state_dict(state)
        for w in range(WORKERS):
            s.enter(w, 0)
    return group


@pytest.mark.parametrize("to", [3, 1, 2])
def test_a_cut_resharded_holds_every_value_row_and_state_and_trains_on_bit_for_bit(to):
    before = shards(2)
    for clock in (1, 2):
        for w in range(WORKERS):
            step(before, w, clock)
    step(before, 0, 3)  # a bsp round gathered part way: worker 0's clock 3 waits for worker 1's
    cut = [s.state_dict() for s in before]
    after = restored(cut, to)
    assert_same(whole(before), whole(after))
    assert whole(after)["emb", "touches"], "the frequency filter counted pulls: they move too"
    # both go on from the cut with the same pushes; the round gathered part way steps in both
    for group in (before, after):
        step(group, 1, 3)
        for w in range(WORKERS):
            step(group, w, 4)
    assert_same(whole(before), whole(after))
    # and back to the old layout: the same again
    assert_same(whole(before), whole(restored([s.state_dict() for s in after], 2)))


def test_the_summed_counters_keep_their_totals():
    before = shards(2, "asp")
    for w in range(WORKERS):
        step(before, w, 1)
    states = reshard([s.state_dict() for s in before], 3)
    applied = sum(s["counters"]["applied"] for s in states)
    assert applied == sum(s.state_dict()["counters"]["applied"] for s in before) == 4
    rows = sum(s["tables"]["emb"]["counters"].get("rows_pushed", 0) for s in states)
    assert rows == sum(s.state_dict()["tables"]["emb"]["counters"]["rows_pushed"] for s in before) > 0


def test_states_that_are_not_one_cut_are_refused():
    group = shards(2, "asp")
    step(group, 0, 1)
    states = [s.state_dict() for s in group]
    with pytest.raises(ShapeError, match=r"needs every shard of the cut; got shards \[1\]"):
        reshard(states[1:], 3)
    states[1]["version"] += 1
    with pytest.raises(ShapeError, match="differ in version"):
        reshard(states, 3)
    with pytest.raises(ConfigError, match=r"servers \(0\) must be an integer >= 1"):
        reshard(states, 0)

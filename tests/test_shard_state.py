"""ParameterShard.state_dict / load_state_dict: a restored shard resumes exactly where the saved one stood.

The seam the checkpoints of the failure work build on; driven with asyncio, no Ray.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rayps.errors import ConfigError, RolledBackError, ShapeError
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import Step
from rayps.ps.shard import ParameterShard

SIZE = 6


def make(mode="bsp", name="adam", seed_values=0.0):
    return ParameterShard(0, np.full(SIZE, seed_values, np.float32), [0, 1], OptimizerConfig(name=name, lr=0.1),
                          ScheduleConfig(), ConsistencyConfig(mode=mode), init_buffers=np.zeros(3),
                          buffer_integer=np.array([False, False, True]))


def grad(seed):
    return np.random.default_rng(seed).normal(size=SIZE).astype(np.float32)


def buffers(seed):
    return np.random.default_rng(100 + seed).normal(size=3).round(3)


def drive(shard, pushes):
    for worker, clock in pushes:
        asyncio.run(shard.push(Step(worker, clock, grad(10 * clock + worker), clock - 1, 8 + worker, 0.5,
                                    buffers(clock + worker))))


@pytest.mark.parametrize("mode", ["bsp", "asp"])
def test_a_restored_shard_continues_bit_for_bit_like_the_saved_one(mode):
    original = make(mode)
    drive(original, [(0, 1), (1, 1), (0, 2)])  # under bsp, worker 0's clock 2 is gathered, not yet stepped
    saved = original.state_dict()
    restored = make(mode)
    restored.load_state_dict(saved)
    with pytest.raises(RolledBackError, match="must register again"):  # its clocks moved back under it
        asyncio.run(restored.push(Step(1, 2, np.ones(restored.size, np.float32), 0, 1, 0.0)))
    # register() would wait on worker 0's bsp round, which this synchronous drive steps itself
    for worker in (0, 1):
        restored.enter(worker, 0)
    later = [(1, 2), (0, 3), (1, 3)]
    drive(original, later)
    drive(restored, later)
    a, b = asyncio.run(original.pull()), asyncio.run(restored.pull())
    assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1] and a[2].tobytes() == b[2].tobytes()
    sa, sb = asyncio.run(original.stats()), asyncio.run(restored.stats())
    for key in ("version", "clocks", "pushes_applied", "staleness_histogram", "samples", "max_clock_gap"):
        assert sa[key] == sb[key], key
    assert sa["version"] == (3 if mode == "bsp" else 6)


def test_the_state_is_a_copy_that_later_updates_do_not_change():
    shard = make("asp")
    drive(shard, [(0, 1)])
    saved = shard.state_dict()
    before = saved["params"].copy()
    drive(shard, [(0, 2), (1, 1)])
    np.testing.assert_array_equal(saved["params"], before)
    assert saved["version"] == 1 and saved["clocks"]["completed"] == {0: 1, 1: 0}


@pytest.mark.parametrize("corrupt, error, fragment", [
    (lambda s: s.update(params=np.zeros(SIZE + 1, np.float32)), ShapeError, "must be float32 of shape (6,)"),
    (lambda s: s.update(shard_id=3), ShapeError, "the state is ps-shard-3's"),
    (lambda s: s["optimizer"].update(name="sgd"), ConfigError, "optimizer state is for 'sgd'"),
    (lambda s: s["buffers"].update(values=np.zeros(5)), ShapeError, "buffer state holds 5 values"),
])
def test_a_bad_state_is_refused_and_changes_nothing(corrupt, error, fragment):
    source = make("asp")
    drive(source, [(0, 1), (1, 1)])
    state = source.state_dict()
    corrupt(state)
    target = make("asp", seed_values=7.0)
    with pytest.raises(error) as caught:
        target.load_state_dict(state)
    assert fragment in str(caught.value)
    params, version, merged = asyncio.run(target.pull())
    assert (params == 7.0).all() and version == 0 and (merged == 0).all()

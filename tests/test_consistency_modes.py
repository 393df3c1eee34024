"""A new consistency mode touches one file: this one defines a mode, registers it, and a job trains under it.

``DropLate`` is asp with one rule more: a push that arrives two or more clocks
behind the furthest any worker has completed is dropped as late (counted,
never applied), so a straggler's stale gradients cost nothing. Nothing in
ps/, worker/ or launcher/ names it: the config, the shards, the driver and the
progress line ask the mode object.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rayps.errors import ConfigError
from rayps.ps.core.consistency import ConsistencyConfig, Mode, register_mode
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import Step
from rayps.ps.shard import ParameterShard


class DropLate(Mode):
    name = "drop-late"
    waits = False  # nobody is ever held back

    def label(self, config, workers):
        return "drop-late"

    def on_push(self, state, worker_id, clock):
        return "late" if state.high - clock >= 2 else "apply"


register_mode(DropLate())


def shard(workers=(0, 1)) -> ParameterShard:
    return ParameterShard(0, np.zeros(2, np.float32), list(workers), OptimizerConfig(name="sgd", lr=1.0),
                          ScheduleConfig(), ConsistencyConfig(mode="drop-late"))


def test_the_registered_mode_is_a_choice_of_the_config_and_names_itself():
    config = ConsistencyConfig(mode="drop-late")
    assert config.bound is None and config.rules.label(config, 2) == "drop-late"
    with pytest.raises(ConfigError, match=r"mode \('nope'\) must be one of asp, ssp, bsp, drop-late"):
        ConsistencyConfig(mode="nope")
    with pytest.raises(ConfigError, match=r"quorum \(1\) applies to mode 'bsp' only, not 'drop-late'"):
        ConsistencyConfig(mode="drop-late", quorum=1)


def test_a_shard_asks_the_mode_and_drops_a_push_two_clocks_late():
    async def scenario():
        s = shard()
        for clock in (1, 2, 3):  # worker 0 races ahead: never held back
            answer = await asyncio.wait_for(s.step(Step(0, clock, np.ones(2, np.float32), clock - 1, 1, 0.0)), 1.0)
            assert answer.outcome == "applied"
        late = await s.step(Step(1, 1, np.full(2, 100.0, np.float32), 0, 1, 0.0))  # 3 - 1 >= 2: late
        fresh = await s.step(Step(1, 2, np.ones(2, np.float32), 3, 1, 0.0))  # 3 - 2 = 1: applied
        return late, fresh, await s.stats()

    late, fresh, stats = asyncio.run(scenario())
    assert late.outcome == "stale" and fresh.outcome == "applied"
    assert (stats["version"], stats["pushes_applied"], stats["pushes_dropped"]) == (4, 4, 1)
    np.testing.assert_array_equal(fresh.params, np.full(2, -4.0, np.float32))  # the late push changed nothing
    assert stats["clocks"] == {0: 3, 1: 2}


@pytest.mark.ray
@pytest.mark.slow
def test_a_job_trains_under_the_mode_in_actors_that_never_imported_this_file(ray_session, tmp_path):
    from rayps.launcher import Job

    result = Job(consistency={"mode": "drop-late"}, epochs=3, workers=2, debug={"slowdown": {1: 3.0}}).run(
        output=tmp_path / "run", progress=False, dashboard=False, report=False)
    s = result.summary
    assert s["consistency"] == "drop-late" and s["staleness_bound"] is None
    assert s["pushes_dropped"] > 0  # the slowed worker's late gradients were dropped, and counted
    assert s["pushes_applied"] + s["pushes_dropped"] == s["servers"] * sum(s["steps"].values())  # every push, once
    assert s["test_accuracy"] >= 0.9

"""The consistency contract as pure logic: clocks set by hand, no shard, no asyncio."""

import pytest

from rayps.errors import ConfigError, PSError, UnknownWorkerError
from rayps.ps.core.clocks import ClockTable
from rayps.ps.core.consistency import Consistency, ConsistencyConfig


def table_with(completed: dict[int, int]) -> ClockTable:
    table = ClockTable(completed)
    for worker, clock in completed.items():
        table.advance(worker, clock)
    return table


class Policy:
    """A mode's answers over a clock table set by hand."""

    def __init__(self, config: ConsistencyConfig):
        self.config = config

    def _state(self, table: ClockTable) -> Consistency:
        state = Consistency(self.config, [])
        state.clocks = table
        return state

    def admits(self, table: ClockTable, clock: int) -> bool:
        return self._state(table).admits(clock)

    def lead(self, table: ClockTable, clock: int) -> int:
        return self._state(table).lead(clock)

    def quorum(self, table: ClockTable) -> int:
        return self.config.rules.quorum(self._state(table), len(table.live))


def ssp(s: int) -> Policy:
    return Policy(ConsistencyConfig(mode="ssp", staleness=s))


# ---- ClockTable ---------------------------------------------------------------------


def test_new_table_has_every_worker_at_clock_zero():
    table = ClockTable([3, 1, 2])
    assert table.live == [1, 2, 3]
    assert table.snapshot() == {1: 0, 2: 0, 3: 0}
    assert table.min_completed() == 0


def test_advance_records_the_completed_clock_and_never_goes_back():
    table = ClockTable([0, 1])
    table.advance(0, 3)
    table.advance(0, 2)  # a late retry of an older clock
    assert table.completed(0) == 3
    assert table.completed(1) == 0
    assert table.min_completed() == 0


def test_leaving_worker_is_no_longer_live_nor_the_slowest():
    table = table_with({0: 5, 1: 1})
    table.leave(1)
    assert table.live == [0]
    assert not table.is_live(1)
    assert table.min_completed() == 5
    assert table.snapshot() == {0: 5}


def test_advance_of_a_left_worker_changes_nothing():
    table = table_with({0: 2, 1: 1})
    table.leave(1)
    table.advance(1, 10)
    assert table.snapshot() == {0: 2}


def test_min_completed_is_none_when_everyone_left():
    table = ClockTable([0])
    table.leave(0)
    assert table.min_completed() is None


@pytest.mark.parametrize("call", [
    lambda t: t.completed(7),
    lambda t: t.advance(7, 1),
    lambda t: t.leave(7),
])
def test_unknown_worker_id_raises_unknown_worker_error(call):
    table = ClockTable([0, 1])
    with pytest.raises(UnknownWorkerError, match="unknown worker id 7"):
        call(table)


def test_unknown_worker_error_is_a_ps_error_and_a_key_error():
    assert issubclass(UnknownWorkerError, PSError)
    assert issubclass(UnknownWorkerError, KeyError)


# ---- ssp admission ------------------------------------------------------------------


def test_ssp_zero_is_lock_step():
    policy = ssp(0)
    table = table_with({0: 1, 1: 0})
    # worker 1 is still in iteration 1: nobody may begin iteration 2
    assert policy.admits(table, 1)
    assert not policy.admits(table, 2)
    table.advance(1, 1)
    assert policy.admits(table, 2)
    assert not policy.admits(table, 3)


@pytest.mark.parametrize("slowest_completed", [0, 1, 4])
def test_ssp_admits_iteration_t_only_when_every_live_worker_completed_t_minus_s_minus_1(slowest_completed):
    s = 2
    policy = ssp(s)
    table = table_with({0: slowest_completed + 10, 1: slowest_completed, 2: slowest_completed + 1})
    highest_admitted = slowest_completed + s + 1
    assert policy.admits(table, highest_admitted)
    assert not policy.admits(table, highest_admitted + 1)


def test_ssp_lead_is_the_distance_to_the_slowest_iteration_in_progress():
    policy = ssp(2)
    table = table_with({0: 4, 1: 1})  # worker 1 is in iteration 2
    assert policy.lead(table, 2) == 0
    assert policy.lead(table, 4) == 2
    assert policy.lead(table, 5) == 3
    assert policy.admits(table, 4)
    assert not policy.admits(table, 5)


def test_lead_is_zero_when_no_worker_is_live():
    policy = ssp(0)
    table = ClockTable([0])
    table.leave(0)
    assert policy.lead(table, 100) == 0
    assert policy.admits(table, 100)


def test_leaving_worker_no_longer_holds_anyone_back():
    policy = ssp(1)
    table = table_with({0: 6, 1: 0, 2: 5})
    assert not policy.admits(table, 7)
    table.leave(1)
    assert policy.lead(table, 7) == 1
    assert policy.admits(table, 7)


def test_asp_always_admits():
    policy = Policy(ConsistencyConfig(mode="asp"))
    table = table_with({0: 0, 1: 1000})
    assert policy.admits(table, 10_000)


def test_bsp_admits_iteration_t_once_round_t_minus_1_stepped_whatever_the_clocks():
    policy = Policy(ConsistencyConfig(mode="bsp"))
    table = table_with({0: 0, 1: 5})
    assert policy.admits(table, 1) and not policy.admits(table, 2)  # round 1 is still being gathered


def test_a_bsp_round_nobody_owes_is_passed_over_and_the_joiners_are_admitted():
    """What the chaos soak found: one shard a round behind the others (a worker died between its pushes to
    them) and both workers replaced at the furthest shard's frontier, so nobody owes this shard's round. It
    used to wait for those pushes forever, and every worker with it."""
    state = Consistency(ConsistencyConfig(mode="bsp"), [0, 1])
    for clock in (1, 2):
        for worker in (0, 1):
            assert state.accept(worker, clock, lambda: {"grad": clock}) == "gathered"
        assert [w for w, _ in state.take_round()] == [0, 1]
    assert state.accept(0, 3, lambda: {"grad": 3}) == "gathered"  # worker 1 dies before pushing 3 here
    for worker in (0, 1):
        state.leave(worker)
    assert state.take_round() is not None and state.round_clock == 4  # the left worker's push still counts
    state.round_clock = 3  # ... but on the shard that never got it the round is empty (as that shard was)
    state.round = {}
    for worker in (0, 1):
        state.join(worker, 3)  # replacements at the other shard's frontier: neither owes round 3
    assert state.take_round() is None and state.round_clock == 4 and state.admits(4)
    assert state.accept(0, 4, lambda: {"grad": 4}) == "gathered" and state.take_round() is None  # 4 is owed
    state.accept(1, 4, lambda: {"grad": 4})
    assert [w for w, _ in state.take_round()] == [0, 1] and state.round_clock == 5


def test_an_empty_bsp_round_that_a_live_worker_owes_still_waits():
    state = Consistency(ConsistencyConfig(mode="bsp"), [0, 1])
    state.join(1, 0)
    assert state.take_round() is None and state.round_clock == 1 and not state.admits(2)


# ---- quorum -------------------------------------------------------------------------


def test_quorum_without_backup_workers_is_every_live_worker():
    policy = Policy(ConsistencyConfig(mode="bsp"))
    table = ClockTable([0, 1, 2])
    assert policy.quorum(table) == 3
    table.leave(2)
    assert policy.quorum(table) == 2


def test_quorum_is_min_of_k_and_live_workers():
    policy = Policy(ConsistencyConfig(mode="bsp", quorum=2))
    table = ClockTable([0, 1, 2, 3])
    assert policy.quorum(table) == 2
    table.leave(0)
    table.leave(1)
    table.leave(2)
    assert policy.quorum(table) == 1


# ---- config -------------------------------------------------------------------------


def test_config_defaults_to_ssp_with_staleness_two():
    config = ConsistencyConfig()
    assert (config.mode, config.staleness, config.quorum, config.staleness_aware_lr) == ("ssp", 2, None, False)


def test_config_rejects_an_unknown_mode_naming_the_choices():
    with pytest.raises(ConfigError, match=r"mode \('sync'\) must be one of asp, ssp, bsp"):
        ConsistencyConfig(mode="sync")


def test_config_rejects_negative_staleness():
    with pytest.raises(ConfigError, match=r"staleness \(-1\) must be >= 0"):
        ConsistencyConfig(mode="ssp", staleness=-1)


def test_config_rejects_non_integer_staleness():
    with pytest.raises(ConfigError, match=r"staleness \(1.5\) must be an integer"):
        ConsistencyConfig(mode="ssp", staleness=1.5)


@pytest.mark.parametrize("mode", ["asp", "ssp"])
def test_config_rejects_quorum_outside_bsp(mode):
    with pytest.raises(ConfigError, match=rf"quorum \(2\) applies to mode 'bsp' only, not '{mode}'"):
        ConsistencyConfig(mode=mode, quorum=2)


def test_config_rejects_quorum_below_one():
    with pytest.raises(ConfigError, match=r"quorum \(0\) must be >= 1"):
        ConsistencyConfig(mode="bsp", quorum=0)


def test_config_rejects_non_boolean_staleness_aware_lr():
    with pytest.raises(ConfigError, match=r"staleness_aware_lr \('yes'\) must be true or false"):
        ConsistencyConfig(staleness_aware_lr="yes")


@pytest.mark.parametrize("config, bound", [
    (ConsistencyConfig(mode="asp"), None),
    (ConsistencyConfig(mode="ssp", staleness=0), 0),
    (ConsistencyConfig(mode="ssp", staleness=3), 3),
    (ConsistencyConfig(mode="bsp"), 0),
    (ConsistencyConfig(mode="bsp", quorum=1), 0),
])
def test_bound_is_s_for_ssp_zero_for_bsp_and_none_for_asp(config, bound):
    assert config.bound == bound

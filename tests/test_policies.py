"""The controller's policies, with time passed in (no Ray)."""

from __future__ import annotations

from rayps.launcher.job.policies import CheckpointSchedule, RestartBudget, StallWatch


def test_the_restart_budget_restarts_and_replaces_until_it_is_spent_then_names_the_actor():
    budget = RestartBudget(2)
    assert budget.on_failure("ps-shard-1", "SIGKILL").action == "restart"
    assert budget.on_failure("worker-0", "SIGKILL").action == "replace"
    decision = budget.on_failure("worker-0", "ActorDiedError: killed")
    assert decision.action == "give_up"
    assert str(budget.give_up(decision)).startswith("worker-0 died and the job's restart budget is spent (2 of")
    assert dict(budget.restarts) == {"ps-shard-1": 1, "worker-0": 1}


def test_a_shard_without_checkpoints_is_not_restarted():
    decision = RestartBudget(5, can_restore=False).on_failure("ps-shard-0", "x")
    assert decision.action == "give_up" and "checkpoints are off" in decision.message


def test_a_stall_is_reported_once_when_a_live_workers_clock_stops_for_the_timeout():
    watch = StallWatch(stall_s=5.0)
    assert watch.observe(0.0, {0: 1, 1: 1}) == {}
    assert watch.observe(4.0, {0: 9, 1: 1}) == {}
    assert watch.observe(5.5, {0: 12, 1: 1}) == {1: 5.5}
    assert watch.observe(8.0, {0: 15, 1: 1}) == {}  # once per stall
    assert watch.observe(9.0, {0: 15, 1: 2}) == {}  # it moved again
    assert watch.observe(20.0, {0: 15}) == {0: 12.0}  # worker 1 left; worker 0 has not moved since 8.0
    watch.forget(0)  # replaced: its new life is watched afresh
    assert watch.observe(21.0, {0: 15}) == {}
    assert watch.stalls == 2


def test_checkpoints_fall_due_by_time_and_by_steps():
    by_time = CheckpointSchedule(every_s=10.0, every_steps=None)
    assert not by_time.due(9.9, 1000) and by_time.due(10.0, 0)
    by_time.taken(10.0, 0)
    assert not by_time.due(19.0, 0)
    by_steps = CheckpointSchedule(every_s=None, every_steps=50)
    assert not by_steps.due(100.0, 49) and by_steps.due(100.0, 50)
    by_steps.taken(100.0, 61)
    assert not by_steps.due(100.0, 99) and by_steps.due(100.0, 100)
    spaced = CheckpointSchedule(every_s=None, every_steps=50, min_gap_s=1.0)  # auto's: a second apart at least
    spaced.taken(100.0, 50)
    assert not spaced.due(100.5, 150) and spaced.due(101.0, 150)

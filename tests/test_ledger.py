"""The push ledger and the shard rules built on it: each (worker, incarnation, seq) applied once (no Ray)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rayps.errors import LeftJobError, OutOfOrderError, RolledBackError
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.ledger import PushLedger
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import Step
from rayps.ps.shard import ParameterShard


def shard(mode="asp", workers=(0, 1), **consistency):
    return ParameterShard(0, np.zeros(4, np.float32), list(workers), OptimizerConfig(name="sgd", lr=1.0),
                          ScheduleConfig(), ConsistencyConfig(mode=mode, **consistency), audit=True)


def push(s, worker, clock, grad, pulled, n, loss, incarnation=0, seq=0):
    """The push half of a step, driven to its end (no other coroutine runs: nothing waits)."""
    return asyncio.run(s.push(Step(worker, clock, grad, pulled, n, loss, None, 0, incarnation, seq)))


def ones():
    return np.ones(4, np.float32)


def test_a_retry_of_an_applied_seq_is_a_duplicate_and_changes_nothing():
    s = shard()
    assert push(s, 0, 1, ones(), 0, 1, 0.0, incarnation=0, seq=1) == "applied"
    assert push(s, 0, 1, ones(), 0, 1, 0.0, incarnation=0, seq=1) == "duplicate"
    params, version, _ = asyncio.run(s.pull())
    assert version == 1 and (params == -1).all()
    assert s.applied_log() == [(0, 0, 1)]


def test_a_seq_that_skips_ahead_is_refused_and_never_recorded():
    s = shard()
    push(s, 0, 1, ones(), 0, 1, 0.0, seq=1)
    with pytest.raises(OutOfOrderError, match="pushed seq 5, but its next seq is 2"):
        push(s, 0, 2, ones(), 0, 1, 0.0, seq=5)
    assert push(s, 0, 2, ones(), 0, 1, 0.0, seq=2) == "applied"  # the next one at normal seqs still counts
    assert s.version == 2


def test_a_new_incarnation_is_never_taken_for_a_retry_and_a_zombie_is_refused():
    s = shard()
    for clock in (1, 2, 3):
        push(s, 0, clock, ones(), 0, 1, 0.0, incarnation=0, seq=clock)
    with pytest.raises(OutOfOrderError, match="incarnation 1 has not joined"):
        push(s, 0, 4, ones(), 0, 1, 0.0, incarnation=1, seq=1)
    asyncio.run(s.finish(0, incarnation=0))  # died: leaves at once
    s.join(0, 1, s.frontier())  # the replacement joins where the slowest live worker stands
    assert s.position(0) == (0, 0)  # worker 1 never pushed: the frontier is clock 0; seq starts again
    assert push(s, 0, 1, ones(), 0, 1, 0.0, incarnation=1, seq=1) == "applied"  # seq 1 again, a new life
    with pytest.raises(LeftJobError, match="incarnation 0 was replaced by incarnation 1"):
        push(s, 0, 2, ones(), 0, 1, 0.0, incarnation=0, seq=4)
    assert s.version == 4 and s.applied_log()[-1] == (0, 1, 1)


def test_a_late_goodbye_from_a_replaced_incarnation_does_not_remove_its_replacement():
    s = shard("ssp")
    asyncio.run(s.finish(1, incarnation=0))
    s.join(1, 1, 0)
    asyncio.run(s.finish(1, incarnation=0))  # the old life's finish() arriving late
    assert 1 in asyncio.run(s.stats())["clocks"]


def test_after_a_restore_a_worker_must_register_but_a_retry_is_still_a_duplicate():
    s = shard()
    push(s, 0, 1, ones(), 0, 1, 0.0, seq=1)
    saved = s.state_dict()
    push(s, 0, 2, ones(), 0, 1, 0.0, seq=2)
    s.load_state_dict(saved)
    assert push(s, 0, 1, ones(), 0, 1, 0.0, seq=1) == "duplicate"  # what the checkpoint holds
    with pytest.raises(RolledBackError, match="must register again"):
        push(s, 0, 2, ones(), 0, 1, 0.0, seq=2)
    s.enter(0, 0)
    assert s.position(0) == (1, 1)
    assert push(s, 0, 2, ones(), 0, 1, 0.0, seq=2) == "applied"
    assert s.applied_log() == [(0, 0, 1), (0, 0, 2)]  # the undone push left the audit with the rollback


def test_a_waiter_is_sent_to_register_again_when_its_shard_is_restored():
    async def scenario():
        s = shard("ssp", workers=(0, 1), staleness=0)
        saved = s.state_dict()
        await s.push(Step(0, 1, ones(), 0, 1, 0.0, seq=1))
        waiting = asyncio.ensure_future(s.pull_for(0, 2))  # waits for worker 1 (s = 0)
        await asyncio.sleep(0.01)
        s.load_state_dict(saved)
        with pytest.raises(RolledBackError, match="waited for iteration 2"):
            await waiting
    asyncio.run(scenario())


def test_a_bsp_round_does_not_wait_for_a_worker_that_joined_after_it_began():
    s = shard("bsp", workers=(0, 1))
    push(s, 0, 1, ones(), 0, 8, 0.0)
    push(s, 1, 1, ones(), 0, 8, 0.0)  # round 1 steps
    push(s, 0, 2, ones(), 0, 8, 0.0)  # round 2: worker 0's in, worker 1's pending
    s.join(2, 0, 2)  # a worker added with clock 2 completed: its first push is clock 3
    push(s, 1, 2, ones(), 0, 8, 0.0)
    assert s.version == 2  # round 2 stepped on workers 0 and 1 alone
    assert push(s, 2, 3, ones(), 0, 8, 0.0) == "applied"


def test_a_cut_lets_through_exactly_the_pushes_up_to_the_agreed_clocks():
    async def scenario():
        s = shard("asp")
        await s.push(Step(0, 1, ones(), 0, 1, 0.0))
        assert s.freeze() == {0: 1, 1: 0}
        held = [asyncio.ensure_future(s.step(Step(w, c, ones(), 0, 1, 0.0))) for w, c in ((1, 1), (0, 2))]
        await asyncio.sleep(0.01)
        assert s.version == 1  # both held at the gate
        assert await s.cut({0: 1, 1: 1}, timeout_s=1.0)  # worker 1's clock 1 is needed; worker 0's 2 is not
        assert s.version == 2 and s.position(0) == (1, 1) and s.position(1) == (1, 1)
        assert not held[1].done()
        s.thaw()
        await asyncio.gather(*held)
        assert s.version == 3
    asyncio.run(scenario())


def test_a_cut_whose_push_never_comes_gives_up_in_time():
    async def scenario():
        s = shard("asp")
        s.freeze()
        assert not await s.cut({0: 1}, timeout_s=0.05)
        s.thaw()
    asyncio.run(scenario())


def test_the_ledger_state_round_trips():
    ledger = PushLedger([0, 1])
    ledger.join(1, 2)
    ledger.record(1, 7)
    copy = PushLedger()
    copy.load_state_dict(ledger.state_dict())
    assert copy.snapshot() == {0: (0, 0), 1: (2, 7)}

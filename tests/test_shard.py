"""ParameterShard driven directly with asyncio: concurrent coroutines stand in for workers.

Learning rates and gradients are powers of two (or sums of a few), so every
expected parameter value below is exact in float32 and compared with equality.
"""

import asyncio

import numpy as np
import pytest
import torch

from rayps.errors import PSError, ShapeError, UnknownWorkerError
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import Step
from rayps.ps.shard import ParameterShard

INIT = np.array([1.0, -2.0, 0.5, 4.0], dtype=np.float32)
LR = 0.5
BLOCKED_S = 0.05  # how long a "still waiting" check waits before it concludes so


def make_shard(mode="asp", workers=(0, 1), init=INIT, lr=LR, **consistency):
    return ParameterShard(
        shard_id=0,
        init_params=init,
        worker_ids=list(workers),
        optimizer=OptimizerConfig(name="sgd", lr=lr),
        schedule=ScheduleConfig(),
        consistency=ConsistencyConfig(mode=mode, **consistency),
    )


def grad(*values):
    return np.array(values, dtype=np.float32)


async def push(shard, worker, clock, g, pulled_version=0, num_samples=1, loss=0.0):
    """A step's parameters and version (these shards hold no model buffers)."""
    params, version, buffers, _ = await shard.step(Step(worker, clock, g, pulled_version, num_samples, loss))
    assert buffers is None
    return params, version


async def pushed(shard, worker, clock, g, pulled_version=0, num_samples=1, loss=0.0, buffers=None):
    """The push half of a step alone: its outcome."""
    return await shard.push(Step(worker, clock, g, pulled_version, num_samples, loss, buffers))


async def registered(shard, worker, incarnation=0):
    """A worker's registration: its parameters, their version and the merged buffers."""
    *_, pulled = await shard.register(worker, incarnation)
    return pulled


async def still_waiting(task, timeout=BLOCKED_S):
    """True when ``task`` has not finished after ``timeout`` seconds of the loop running."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    return not done


async def finished(task, timeout=1.0):
    return await asyncio.wait_for(task, timeout)


def run(coro):
    return asyncio.run(coro)


# ---- asp ----------------------------------------------------------------------------


def test_asp_push_applies_one_sgd_step_and_returns_the_new_version():
    async def scenario():
        shard = make_shard("asp", workers=[0])
        params, version, _ = await registered(shard, 0)
        assert version == 0
        np.testing.assert_array_equal(params, INIT)
        return await push(shard, 0, 1, grad(1, 2, -4, 0.5)), await shard.stats()

    (params, version), stats = run(scenario())
    np.testing.assert_array_equal(params, grad(0.5, -3, 2.5, 3.75))
    assert version == 1
    assert stats["version"] == 1
    assert stats["pushes_applied"] == 1
    assert stats["clocks"] == {0: 1}


def test_asp_staleness_histogram_counts_version_minus_pulled_version():
    async def scenario():
        shard = make_shard("asp", workers=[0, 1, 2])
        for w in range(3):
            await registered(shard, w)
        # all three computed from version 0; they land one after another
        results = [await push(shard, w, 1, grad(1, 1, 1, 1), pulled_version=0) for w in range(3)]
        return results, await shard.stats()

    results, stats = run(scenario())
    assert [v for _, v in results] == [1, 2, 3]
    assert stats["staleness_histogram"] == {0: 1, 1: 1, 2: 1}
    np.testing.assert_array_equal(results[-1][0], INIT - 3 * LR)


def test_asp_never_waits_for_a_slow_worker():
    async def scenario():
        shard = make_shard("asp", workers=[0, 1])
        for clock in range(1, 21):
            await asyncio.wait_for(push(shard, 0, clock, grad(0, 0, 0, 0)), BLOCKED_S)
        return await shard.stats()

    stats = run(scenario())
    assert stats["clocks"] == {0: 20, 1: 0}
    assert stats["version"] == 20


def test_pull_returns_a_copy_of_the_current_parameters():
    async def scenario():
        shard = make_shard("asp", workers=[0])
        params, _, _ = await shard.pull()
        params[:] = 99.0
        return await shard.pull()

    params, version, buffers = run(scenario())
    np.testing.assert_array_equal(params, INIT)
    assert buffers is None  # this shard holds no model buffers
    assert version == 0


# ---- staleness-aware learning rate --------------------------------------------------


@pytest.mark.parametrize("aware, third_step", [(True, LR / 2), (False, LR)])
def test_staleness_aware_lr_scales_the_step_by_one_over_staleness(aware, third_step):
    async def scenario():
        shard = make_shard("asp", workers=[0, 1, 2], staleness_aware_lr=aware)
        for w in range(3):  # staleness 0, 1, 2
            before, _, _ = await shard.pull()
            after, _ = await push(shard, w, 1, grad(1, 1, 1, 1), pulled_version=0)
            steps = before - after
        return steps, await shard.stats()

    last_step, stats = run(scenario())
    np.testing.assert_array_equal(last_step, np.full(4, third_step, dtype=np.float32))
    assert stats["staleness_histogram"] == {0: 1, 1: 1, 2: 1}


def test_staleness_aware_lr_takes_full_steps_at_staleness_zero_and_one():
    async def scenario():
        shard = make_shard("asp", workers=[0, 1], staleness_aware_lr=True)
        await push(shard, 0, 1, grad(1, 1, 1, 1), pulled_version=0)  # staleness 0
        return await push(shard, 1, 1, grad(1, 1, 1, 1), pulled_version=0)  # staleness 1

    params, version = run(scenario())
    np.testing.assert_array_equal(params, INIT - 2 * LR)


# ---- ssp ----------------------------------------------------------------------------


def test_ssp_blocks_pull_until_slowest_catches_up():
    async def scenario():
        shard = make_shard("ssp", workers=[0, 1], staleness=1)
        await registered(shard, 0)
        await registered(shard, 1)
        g = grad(1, 1, 1, 1)
        # worker 1 is in iteration 1, so worker 0 may begin iteration 2 (lead 1) ...
        _, v1 = await asyncio.wait_for(push(shard, 0, 1, g), BLOCKED_S)
        # ... but not iteration 3: its push of clock 2 is applied, its pull waits
        third = asyncio.create_task(push(shard, 0, 2, g, pulled_version=v1))
        assert await still_waiting(third)
        waiting_stats = await shard.stats()
        assert waiting_stats["clocks"] == {0: 2, 1: 0}
        assert waiting_stats["version"] == 2

        _, v_slow = await asyncio.wait_for(push(shard, 1, 1, g), BLOCKED_S)
        params, version = await finished(third)
        return params, version, v_slow, await shard.stats()

    params, version, v_slow, stats = run(scenario())
    assert v_slow == 3
    assert version == 3  # worker 0 begins iteration 3 with all three updates in
    np.testing.assert_array_equal(params, INIT - 3 * LR)
    assert stats["max_clock_gap"] == 1
    assert stats["wait_s"][0] >= BLOCKED_S * 0.5


def test_ssp_zero_is_lock_step_between_workers():
    async def scenario():
        shard = make_shard("ssp", workers=[0, 1], staleness=0)
        g = grad(0, 0, 0, 0)
        fast = asyncio.create_task(push(shard, 0, 1, g))
        assert await still_waiting(fast)
        await asyncio.wait_for(push(shard, 1, 1, g), BLOCKED_S)
        await finished(fast)
        return await shard.stats()

    stats = run(scenario())
    assert stats["max_clock_gap"] == 0
    assert stats["clocks"] == {0: 1, 1: 1}


@pytest.mark.parametrize("s", [0, 1, 2])
def test_ssp_max_clock_gap_reaches_but_never_exceeds_s(s):
    iterations = 12
    violations = []

    async def worker(shard, me, other, yields_per_step):
        _, version, _ = await registered(shard, me)
        for clock in range(1, iterations + 1):
            for _ in range(yields_per_step):
                await asyncio.sleep(0)
            _, version = await push(shard, me, clock, grad(0, 0, 0, 0), pulled_version=version)
            # admitted to begin clock + 1: the other must have completed clock - s
            other_done = (await shard.stats())["clocks"].get(other, iterations)
            if clock < iterations and other_done < clock + 1 - s - 1:
                violations.append((me, clock + 1, other_done))
        await shard.finish(me)

    async def scenario():
        shard = make_shard("ssp", workers=[0, 1], staleness=s)
        await asyncio.wait_for(
            asyncio.gather(worker(shard, 0, 1, 0), worker(shard, 1, 0, 5)), timeout=2.0)
        return await shard.stats()

    stats = run(scenario())
    assert violations == []
    assert stats["max_clock_gap"] == s
    assert stats["version"] == 2 * iterations


def test_ssp_finished_worker_stops_blocking_others():
    async def scenario():
        shard = make_shard("ssp", workers=[0, 1], staleness=0)
        blocked = asyncio.create_task(push(shard, 0, 1, grad(1, 1, 1, 1)))
        assert await still_waiting(blocked)
        await shard.finish(1)
        params, version = await finished(blocked)
        # with worker 1 gone, worker 0 runs freely
        for clock in range(2, 5):
            params, version = await asyncio.wait_for(push(shard, 0, clock, grad(1, 1, 1, 1)), BLOCKED_S)
        return params, version, await shard.stats()

    params, version, stats = run(scenario())
    assert version == 4
    np.testing.assert_array_equal(params, INIT - 4 * LR)
    assert stats["clocks"] == {0: 4}


def test_push_from_a_worker_that_left_is_refused():
    async def scenario():
        shard = make_shard("ssp", workers=[0, 1])
        await shard.finish(1)
        with pytest.raises(PSError, match="worker 1 has left the job"):
            await push(shard, 1, 1, grad(1, 1, 1, 1))
        return await shard.pull()

    params, version, _ = run(scenario())
    assert version == 0
    np.testing.assert_array_equal(params, INIT)


# ---- bsp ----------------------------------------------------------------------------


def test_bsp_steps_once_with_the_sample_weighted_mean_gradient():
    async def scenario():
        shard = make_shard("bsp", workers=[0, 1])
        first = asyncio.create_task(push(shard, 0, 1, grad(4, -8, 0.5, 0), num_samples=1))
        assert await still_waiting(first)
        assert (await shard.pull())[1] == 0  # nothing applied until the round fills
        second = await asyncio.wait_for(push(shard, 1, 1, grad(0, 4, 2, 8), num_samples=3), BLOCKED_S)
        return await finished(first), second, await shard.stats()

    (p0, v0), (p1, v1), stats = run(scenario())
    # weights 1/4 and 3/4: mean = (1, 1, 1.625, 6)
    expected = INIT - LR * grad(1, 1, 1.625, 6)
    np.testing.assert_array_equal(p0, expected)
    np.testing.assert_array_equal(p1, expected)
    assert v0 == v1 == 1
    assert stats["version"] == 1
    assert stats["pushes_applied"] == 2
    assert stats["staleness_histogram"] == {0: 2}
    assert stats["samples"] == {0: 1, 1: 3}


def test_bsp_with_one_worker_takes_exactly_the_sgd_step_of_its_gradient():
    rng = np.random.default_rng(0)
    init = rng.standard_normal(33).astype(np.float32)
    grads = [rng.standard_normal(33).astype(np.float32) for _ in range(3)]

    async def scenario():
        shard = make_shard("bsp", workers=[0], init=init, lr=0.1)
        _, version, _ = await registered(shard, 0)
        for clock, g in enumerate(grads, start=1):
            params, version = await asyncio.wait_for(
                push(shard, 0, clock, g, pulled_version=version, num_samples=7), BLOCKED_S)
        return params, version

    params, version = run(scenario())
    # torch.optim.SGD's single-tensor step, written out (torch.optim's first use costs seconds)
    weight = torch.from_numpy(init.copy())
    for g in grads:
        weight.add_(torch.from_numpy(g), alpha=-0.1)
    assert version == 3
    # Equal to float32 rounding: torch fuses param + alpha * grad into one rounding, the shard's numpy
    # rounds the product and the sum apart (at most one ulp a step); a step applied twice, scaled or
    # skipped would be off by 0.1 * grad, six orders of magnitude more.
    np.testing.assert_allclose(params, weight.numpy(), rtol=2e-6, atol=1e-7)


def test_bsp_quorum_steps_after_first_push_and_drops_the_late_one():
    async def scenario():
        shard = make_shard("bsp", workers=[0, 1], quorum=1)
        fast = await asyncio.wait_for(push(shard, 0, 1, grad(2, 2, 2, 2)), BLOCKED_S)
        late = await asyncio.wait_for(push(shard, 1, 1, grad(-100, 0, 0, 0)), BLOCKED_S)
        return fast, late, await shard.stats()

    (p_fast, v_fast), (p_late, v_late), stats = run(scenario())
    expected = INIT - LR * grad(2, 2, 2, 2)
    np.testing.assert_array_equal(p_fast, expected)
    np.testing.assert_array_equal(p_late, expected)  # the late worker still gets parameters
    assert v_fast == v_late == 1
    assert stats["pushes_applied"] == 1
    assert stats["pushes_dropped"] == 1
    assert stats["clocks"] == {0: 1, 1: 1}


def test_bsp_late_worker_joins_the_next_round_after_a_drop():
    async def scenario():
        shard = make_shard("bsp", workers=[0, 1], quorum=1)
        await push(shard, 0, 1, grad(1, 1, 1, 1))
        await push(shard, 1, 1, grad(8, 8, 8, 8))  # dropped
        return await asyncio.wait_for(push(shard, 1, 2, grad(2, 2, 2, 2)), BLOCKED_S)

    params, version = run(scenario())
    assert version == 2
    np.testing.assert_array_equal(params, INIT - LR * grad(3, 3, 3, 3))


def test_bsp_finished_worker_stops_blocking_others():
    async def scenario():
        shard = make_shard("bsp", workers=[0, 1])
        waiting = asyncio.create_task(push(shard, 0, 1, grad(2, 0, 0, 2)))
        assert await still_waiting(waiting)
        await shard.finish(1)
        return await finished(waiting), await shard.stats()

    (params, version), stats = run(scenario())
    assert version == 1
    np.testing.assert_array_equal(params, INIT - LR * grad(2, 0, 0, 2))
    assert stats["pushes_dropped"] == 0


def test_bsp_round_waits_for_live_workers_after_one_that_pushed_leaves():
    async def scenario():
        shard = make_shard("bsp", workers=[0, 1])
        # worker 0 pushes clock 1 and dies while waiting; worker 1 is still computing
        dead = asyncio.create_task(push(shard, 0, 1, grad(4, 4, 4, 4)))
        assert await still_waiting(dead)
        dead.cancel()
        await shard.finish(0)
        assert (await shard.pull())[1] == 0  # the live worker's gradient is still due
        live = await asyncio.wait_for(push(shard, 1, 1, grad(0, 0, 0, 0)), BLOCKED_S)
        return live, await shard.stats()

    (params, version), stats = run(scenario())
    assert version == 1
    assert stats["pushes_dropped"] == 0
    assert stats["pushes_applied"] == 2
    np.testing.assert_array_equal(params, INIT - LR * grad(2, 2, 2, 2))


def test_bsp_refuses_a_push_for_a_clock_ahead_of_the_round_and_records_nothing():
    async def scenario():
        shard = make_shard("bsp", workers=[0, 1])
        await pushed(shard, 0, 1, grad(1, 1, 1, 1), 0, 4, 1.0)  # gathered; the round waits for worker 1
        with pytest.raises(PSError, match="pushed clock 2 while clock 1 is still being gathered"):
            await pushed(shard, 0, 2, grad(1, 1, 1, 1), 0, 5, 2.0)
        return await shard.stats()

    stats = run(scenario())
    assert stats["version"] == 0
    assert stats["clocks"] == {0: 1, 1: 0}
    assert stats["samples"] == {0: 4}  # the refused push recorded nothing
    assert stats["loss"] == {0: 1.0}


@pytest.mark.parametrize("mode", ["asp", "ssp", "bsp"])
def test_a_clock_that_skips_ahead_is_refused_and_never_recorded(mode):
    async def scenario():
        shard = make_shard(mode, workers=[0, 1])
        for worker in (0, 1):  # clock 1 done everywhere (under bsp, the round steps)
            await pushed(shard, worker, 1, grad(1, 1, 1, 1), 0, 1, 0.0)
        with pytest.raises(PSError, match="worker 0 pushed clock 4611686018427387904, but its next clock is 2"):
            await pushed(shard, 0, 2 ** 62, grad(1, 1, 1, 1), 0, 1, 0.0)
        stats = await shard.stats()
        outcome = await pushed(shard, 0, 2, grad(1, 1, 1, 1), 1, 1, 0.0)  # the right next clock is still taken
        return stats, outcome

    stats, outcome = run(scenario())
    assert stats["clocks"][0] == 1 and stats["rejected"] == {"out_of_order": 1}
    assert outcome == "applied"


@pytest.mark.parametrize("mode", ["asp", "ssp", "bsp"])
@pytest.mark.parametrize("field, value, reason", [("pulled_version", 100, "future_version"),
                                                  ("pulled_version", 2 ** 64 - 1, "future_version"),
                                                  ("pulled_version", -1, "future_version"),
                                                  ("num_samples", -5, "num_samples")])
def test_a_push_claiming_what_cannot_be_true_is_refused_and_stats_keep_answering(mode, field, value, reason):
    """Every transport decodes into the same Step and calls this entry point (gRPC: test_grpc_server.py)."""
    async def scenario():
        shard = make_shard(mode, workers=[0, 1])
        for worker in (0, 1):
            await pushed(shard, worker, 1, grad(1, 1, 1, 1), 0, 1, 0.0)
        bad = {"pulled_version": 1, "num_samples": 1, field: value}
        with pytest.raises(PSError, match=field):
            await pushed(shard, 0, 2, grad(1, 1, 1, 1), bad["pulled_version"], bad["num_samples"], 0.0)
        before = await shard.stats()
        outcome = await pushed(shard, 0, 2, grad(1, 1, 1, 1), 1, 1, 0.0)  # the worker goes on as if it never came
        return before, outcome

    stats, outcome = run(scenario())
    assert stats["rejected"] == {reason: 1} and stats["clocks"] == {0: 1, 1: 1}
    assert stats["samples"] == {0: 1, 1: 1} and min(int(k) for k in stats["staleness_histogram"]) >= 0
    assert outcome == "applied"


@pytest.mark.parametrize("mode", ["asp", "ssp", "bsp"])
@pytest.mark.parametrize("fields, reason, message", [
    ({"clock": 0}, "clock", "pushed clock 0; clocks count from 1"),
    ({"clock": -3}, "clock", "pushed clock -3"),
    ({"loss": float("inf")}, "loss", "pushed loss inf; a loss must be finite"),
    ({"loss": float("-inf")}, "loss", "pushed loss -inf"),
    ({"seq": -1}, "seq", "pushed seq -1; seqs count from 1"),
])
def test_a_header_that_cannot_be_true_is_refused_before_anything_is_read(mode, fields, reason, message):
    async def scenario():
        shard = make_shard(mode, workers=[0, 1])
        for worker in (0, 1):
            await pushed(shard, worker, 1, grad(1, 1, 1, 1), 0, 1, 0.5)
        step = {"worker_id": 0, "clock": 2, "grad": grad(1, 1, 1, 1), "pulled_version": 1, "num_samples": 1, **fields}
        with pytest.raises(ShapeError, match=message):
            await shard.push(Step(**step))
        return await shard.stats(), await shard.pull()

    stats, (params, version, _) = run(scenario())
    assert stats["rejected"] == {reason: 1} and stats["clocks"] == {0: 1, 1: 1}
    assert version == (1 if mode == "bsp" else 2)  # a bsp round of two pushes is one step
    assert stats["duplicates"] == 0 and stats["loss"] == {0: 0.5, 1: 0.5} and stats["ledger"] == {0: [0, 1], 1: [0, 1]}
    np.testing.assert_array_equal(params, INIT - LR * grad(2, 2, 2, 2) / (2 if mode == "bsp" else 1))


def test_a_headerless_seq_before_the_incarnation_joined_names_no_push_and_a_zombies_is_its_own():
    """seq 0 means clock minus the clock the incarnation joined at: at or below it, that is no push at all."""
    async def scenario():
        shard = make_shard("asp", workers=[0, 1])
        for clock in (1, 2, 3):
            await pushed(shard, 0, clock, grad(1, 1, 1, 1), clock - 1)
        await shard.finish(0, 0)
        shard.join(0, 1, 3)  # the replacement carries on from clock 3
        with pytest.raises(ShapeError, match=r"seq 0 at clock 3, the incarnation having joined at clock 3 \(seq 0\)"):
            await shard.push(Step(0, 3, grad(1, 1, 1, 1), 3, 1, 0.0, incarnation=1))
        with pytest.raises(PSError, match="incarnation 0 was replaced"):  # the old life's retry: not malformed
            await shard.push(Step(0, 3, grad(1, 1, 1, 1), 2, 1, 0.0, incarnation=0))
        outcome = await shard.push(Step(0, 4, grad(1, 1, 1, 1), 3, 1, 0.0, incarnation=1))  # seq 1 of the new life
        return await shard.stats(), outcome, shard.applied_log()

    stats, outcome, _ = run(scenario())
    assert stats["rejected"] == {"seq": 1, "out_of_order": 1}
    assert outcome == "applied" and stats["ledger"][0] == [1, 1] and stats["version"] == 4


def test_the_largest_claims_the_wire_carries_never_break_stats():
    """Once a worker advanced to 2^64-1, then a retry asking 2^32-1 iterations ahead, left a clock gap past
    uint64 in the counters: msgpack refused every later Stats, for everyone."""
    import msgpack

    async def scenario():
        shard = make_shard("asp", workers=[0, 1])
        await pushed(shard, 1, 1, grad(1, 1, 1, 1))
        refused = []
        for call in (lambda: shard.advance(1, 2 ** 64 - 1),
                     lambda: shard.step(Step(1, 1, grad(1, 1, 1, 1), 0, 1, 0.0, None, 2 ** 32 - 1, 0, 1)),
                     lambda: shard.pull_for(1, 2 ** 64 - 1)):
            try:
                result = call()
                if asyncio.iscoroutine(result):
                    await result
            except PSError as e:
                refused.append(type(e).__name__)
        shard.advance(0, 2 ** 63 - 1)  # the highest clock a worker may claim: every sum from it fits
        await shard.pull_for(0, 2 ** 63 + 1024)
        return refused, await shard.stats()

    refused, stats = run(scenario())
    assert refused == ["InputError", "InputError", "OutOfOrderError"]
    assert msgpack.unpackb(msgpack.packb(stats), strict_map_key=False)["max_clock_gap"] == 2 ** 63 + 1024 - 2
    assert stats["clocks"] == {0: 2 ** 63 - 1, 1: 1}


# ---- exactly once -------------------------------------------------------------------


def test_duplicate_push_is_not_applied_twice():
    async def scenario():
        shard = make_shard("asp", workers=[0])
        first = await push(shard, 0, 1, grad(1, 1, 1, 1))
        retry = await asyncio.wait_for(push(shard, 0, 1, grad(1, 1, 1, 1)), BLOCKED_S)
        return first, retry, await shard.stats()

    (p_first, v_first), (p_retry, v_retry), stats = run(scenario())
    np.testing.assert_array_equal(p_retry, INIT - LR)
    np.testing.assert_array_equal(p_first, p_retry)
    assert v_first == v_retry == 1
    assert stats["duplicates"] == 1
    assert stats["pushes_applied"] == 1
    assert stats["samples"] == {0: 1}


def test_bsp_retry_of_a_gathered_gradient_is_not_counted_twice_in_the_round():
    async def scenario():
        shard = make_shard("bsp", workers=[0, 1])
        first = asyncio.create_task(push(shard, 0, 1, grad(4, 4, 4, 4)))
        retry = asyncio.create_task(push(shard, 0, 1, grad(4, 4, 4, 4)))
        assert await still_waiting(retry)
        await push(shard, 1, 1, grad(0, 0, 0, 0))
        return await finished(first), await finished(retry), await shard.stats()

    (p_first, _), (p_retry, v_retry), stats = run(scenario())
    expected = INIT - LR * grad(2, 2, 2, 2)
    np.testing.assert_array_equal(p_first, expected)
    np.testing.assert_array_equal(p_retry, expected)
    assert v_retry == 1
    assert stats["duplicates"] == 1
    assert stats["pushes_applied"] == 2


# ---- bad input ----------------------------------------------------------------------

BAD_GRADS = [
    ("dtype", np.ones(4, dtype=np.float64), r"dtype must be float32, got float64"),
    ("shape", np.ones(3, dtype=np.float32), r"shape must be \(4,\), got \(3,\)"),
    ("shape", np.ones((2, 2), dtype=np.float32), r"shape must be \(4,\), got \(2, 2\)"),
    ("non_finite", grad(1, np.nan, 1, 1), r"NaN or Inf"),
    ("non_finite", grad(1, 1, -np.inf, 1), r"NaN or Inf"),
    ("type", [1.0, 1.0, 1.0, 1.0], r"must be a numpy array, got list"),
]


@pytest.mark.parametrize("reason, bad, message", BAD_GRADS, ids=[
    "float64", "short", "2d", "nan", "inf", "list"])
def test_bad_gradient_is_rejected_with_a_clear_error_and_changes_nothing(reason, bad, message):
    async def scenario():
        shard = make_shard("asp", workers=[0])
        with pytest.raises(ShapeError, match=message) as error:
            await push(shard, 0, 1, bad)
        assert "ps-shard-0" in str(error.value)
        after_bad = await shard.pull()
        bad_stats = await shard.stats()
        good = await push(shard, 0, 1, grad(2, 2, 2, 2))  # the same clock is still due
        return after_bad, bad_stats, good, await shard.stats()

    (params, version, _), bad_stats, (good_params, good_version), stats = run(scenario())
    np.testing.assert_array_equal(params, INIT)
    assert version == 0
    assert bad_stats["clocks"] == {0: 0}
    assert bad_stats["rejected"] == {reason: 1}
    np.testing.assert_array_equal(good_params, INIT - LR * 2)
    assert good_version == 1
    assert stats["duplicates"] == 0


def test_rejections_are_counted_per_reason():
    async def scenario():
        shard = make_shard("asp", workers=[0])
        for _, bad, _ in BAD_GRADS:
            with pytest.raises(ShapeError):
                await push(shard, 0, 1, bad)
        return await shard.stats()

    stats = run(scenario())
    assert stats["rejected"] == {"dtype": 1, "shape": 2, "non_finite": 2, "type": 1}
    assert stats["version"] == 0


# ---- unknown workers ----------------------------------------------------------------


def test_unknown_worker_id_raises_on_every_call():
    async def scenario():
        shard = make_shard("ssp", workers=[0, 1])
        for call in (shard.register(7), push(shard, 7, 1, grad(1, 1, 1, 1)), shard.finish(7)):
            with pytest.raises(UnknownWorkerError, match="unknown worker id 7"):
                await call
        return await shard.stats()

    stats = run(scenario())
    assert stats["version"] == 0
    assert stats["clocks"] == {0: 0, 1: 0}


# ---- model buffers ------------------------------------------------------------------


def buffer_shard(mode, workers=(0, 1)):
    return ParameterShard(0, INIT, list(workers), OptimizerConfig(name="sgd", lr=LR), ScheduleConfig(),
                          ConsistencyConfig(mode=mode), init_buffers=np.array([0.0, 1.0, 0.0]),
                          buffer_integer=np.array([False, False, True]))


def test_bsp_buffers_of_a_round_become_visible_with_its_step_and_not_before():
    async def scenario():
        shard = buffer_shard("bsp")
        zero = grad(0, 0, 0, 0)
        await pushed(shard, 0, 1, zero, 0, 1, 0.0, np.array([2.0, 2.0, 5.0]))
        before = (await shard.pull())[2]  # the round has not stepped: still the initial values
        await pushed(shard, 1, 1, zero, 0, 1, 0.0, np.array([4.0, 6.0, 3.0]))
        after_round = (await shard.pull())[2]
        await pushed(shard, 1, 2, zero, 1, 1, 0.0, np.array([100.0, 100.0, 100.0]))  # next round, not yet stepped
        return before, after_round, (await shard.pull())[2]

    before, after_round, still = run(scenario())
    np.testing.assert_array_equal(before, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(after_round, [3.0, 4.0, 5.0])
    np.testing.assert_array_equal(still, [3.0, 4.0, 5.0])


def test_bad_buffers_refuse_the_whole_push_and_change_nothing():
    async def scenario():
        shard = buffer_shard("asp", workers=[0])
        with pytest.raises(ShapeError, match=r"ps-shard-0: buffers shape must be \(3,\), got \(2,\)"):
            await pushed(shard, 0, 1, grad(1, 1, 1, 1), 0, 1, 0.0, np.zeros(2))
        return await shard.pull(), await shard.stats()

    (params, version, buffers), stats = run(scenario())
    np.testing.assert_array_equal(params, INIT)  # the gradient beside bad buffers was not applied
    assert version == 0 and stats["clocks"] == {0: 0}
    np.testing.assert_array_equal(buffers, [0.0, 1.0, 0.0])
    assert stats["rejected"] == {"buffers": 1}


def test_bsp_sums_a_round_in_worker_order_whatever_order_it_arrived_in():
    # float32 addition is not associative: these three gradients sum to different
    # bits in different orders, so only a fixed order makes bsp reproducible.
    grads = {0: grad(1e8, 1, 3, 0.1), 1: grad(-1e8, 1e-8, 7, 0.2), 2: grad(1, 1e-8, 1e-7, 0.3)}

    async def scenario(order):
        shard = make_shard("bsp", workers=[0, 1, 2], lr=1.0)
        for w in order:
            await pushed(shard, w, 1, grads[w], 0, 1 + w, 0.0)
        return (await shard.pull())[0].tobytes()

    assert len({run(scenario(order)) for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0])}) == 1

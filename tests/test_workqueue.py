"""The work queue: units handed out, a dead worker's unapplied rest handed back, exact coverage (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from rayps.errors import ConfigError
from rayps.worker.queue.coordinator import RESYNC, STOP, WorkCoordinator
from rayps.worker.queue.sharder import EpochSharder
from rayps.worker.queue.workqueue import EpochBatches, Unit, WorkQueue


def drain(queue, worker, seq=0, incarnation=0):
    """Lease and finish units until none is left; returns the seq reached."""
    while (unit := queue.lease(worker, incarnation, seq + 1)) is not None:
        seq += len(unit)
        queue.complete(worker, incarnation, seq)
    return seq


def test_without_failures_each_worker_gets_exactly_its_static_shard_in_order():
    batches = EpochBatches(100, 2, 8, seed=3)
    queue = WorkQueue(batches.stretches, epochs=2, chunk_batches=3)
    got = {0: [], 1: []}
    seqs = {0: 0, 1: 0}
    for _ in range(100):
        for w in (0, 1):
            unit = queue.lease(w, 0, seqs[w] + 1, seqs[w])
            if unit is not None:
                got[w] += [b.tolist() for b in batches.batches(unit)]
                seqs[w] += len(unit)
    sharder = EpochSharder(100, 2, 8, seed=3)
    for w in (0, 1):
        assert got[w] == [b.tolist() for e in range(2) for b in sharder.batches(e, w)]


def test_a_dead_workers_unapplied_rest_goes_back_and_every_batch_is_done_once():
    queue = WorkQueue([10, 10], epochs=1, chunk_batches=4)
    a = queue.lease(0, 0, 1)  # batches 0-3 pushed as seqs 1-4
    b = queue.lease(0, 0, 5)  # batches 4-7 as seqs 5-8
    assert (a, b) == (Unit(0, 0, 4), Unit(0, 4, 8))
    back = queue.release(0, {0: 6})  # died after seq 6 was applied: batches 0-5 are done
    assert back == 2
    assert queue.lease(1, 0, 1) == Unit(0, 6, 8)  # handed back: first come, first served
    drain(queue, 1, 2)
    drain(queue, 0, 0, incarnation=1)  # the replacement
    assert queue.coverage() == {0: [(0, 20)]} and queue.done[0] == 20 and queue.remaining == 0


def test_a_worker_with_nothing_left_takes_anothers_last_unit_unless_stealing_is_off():
    queue = WorkQueue([4, 4], epochs=1, chunk_batches=2)
    assert [queue.lease(0, 0, s) for s in (1, 3)] == [Unit(0, 0, 2), Unit(0, 2, 4)]
    assert queue.lease(0, 0, 5) == Unit(0, 6, 8)  # worker 1's last
    assert queue.stolen == 1
    strict = WorkQueue([4, 4], epochs=1, chunk_batches=2, steal=False)
    strict.lease(0, 0, 1), strict.lease(0, 0, 3)
    assert strict.lease(0, 0, 5) is None
    assert strict.lease(7, 0, 1) == Unit(0, 6, 8)  # a worker added mid-job has no stretch: it may


def test_max_steps_bounds_each_workers_own_stretch():
    queue = WorkQueue([10, 10], epochs=3, chunk_batches=4, max_steps=6)
    assert queue.budget == 12
    units = []
    while (u := queue.lease(0, 0, 1)) is not None and u.lo < 10:
        units.append(u)
    assert units == [Unit(0, 0, 4), Unit(0, 4, 6)]


def test_a_rollback_settles_the_leases_of_the_cut_against_the_shards_ledgers():
    queue = WorkQueue([8], epochs=1, chunk_batches=4)
    queue.lease(0, 0, 1)
    queue.lease(0, 0, 5)
    saved = queue.state_dict()  # the cut: the shards had applied seqs 1..3
    queue.complete(0, 0, 8)  # the job went on and finished both units ...
    assert queue.remaining == 0
    back = queue.load_state_dict(saved, {0: (0, 3)})  # ... then rolled back to the cut
    assert back == 5 and queue.remaining == 5 and queue.done[0] == 3
    drain(queue, 0, 3)
    assert queue.coverage() == {0: [(0, 8)]} and queue.done[0] == 8


def test_the_coordinator_refuses_stale_generations_and_stops_removed_workers():
    batches = EpochBatches(40, 2, 4)
    coordinator = WorkCoordinator(WorkQueue(batches.stretches, 1, 2), batches, 2)
    assert coordinator.lease(0, 0, 0, 1) == (0, 0, 2)
    coordinator.begin_recovery()
    assert coordinator.lease(0, 0, 0, 3) == RESYNC
    assert coordinator.end_recovery() == 1
    assert coordinator.lease(0, 0, 0, 3) == RESYNC  # still generation 0: register again first
    assert coordinator.lease(0, 0, 1, 3) == (0, 2, 4)
    coordinator.remove(1)
    assert coordinator.lease(1, 0, 1, 1) == STOP
    assert coordinator.lease(0, 0, 1, 5, 4) == (0, 5, 7)  # worker 1's stretch is anyone's now, first
    coverage = coordinator.coverage()
    assert coverage["examples_per_epoch"] == {"0": 16} and coverage["ranges"] == {"0": [[0, 4]]}


def test_chunk_batches_must_be_positive():
    with pytest.raises(ConfigError, match=r"chunk_batches \(0\) must be >= 1"):
        WorkQueue([3], 1, 0)


def test_epoch_batches_cover_every_example_once_per_epoch():
    batches = EpochBatches(101, 3, 7, seed=1)
    every = np.concatenate(batches.batches(Unit(2, 0, batches.per_epoch)))
    assert sorted(every.tolist()) == list(range(101))


def test_units_never_cross_a_chunk_end_so_each_unit_reads_whole_chunks():
    # one worker, 10 batches an epoch in chunks ending at 3, 4 and 10 (epoch 0) and at 6 (epoch 1)
    ends = {0: [3, 4, 10], 1: [6, 10]}
    queue = WorkQueue([10], epochs=2, chunk_batches=5, chunk_ends=lambda e: ends[e])
    units = []
    while (unit := queue.lease(0, 0, 1)) is not None:
        units.append((unit.epoch, unit.lo, unit.hi))
    assert units == [(0, 0, 3), (0, 3, 4), (0, 4, 9), (0, 9, 10), (1, 0, 5), (1, 5, 6), (1, 6, 10)]
    assert queue.budget == 20

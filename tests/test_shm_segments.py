"""A worker's own shared-memory segment (protos/shm_wire.py: IN_SEGMENT): what the shard reads and writes there,
and every segment it refuses to open.

A worker whose model trains on its segment pushes and pulls with no copy; the shard finds the segment by a
name it derives (the job's tag, the worker id), so a request can never point it at another file.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from rayps.protos.shm_wire import (IN_SEGMENT, PUBLISHED, PUSH_PULL, REGISTER, WORKER_SEGMENT_FILE, SegmentPlace,
                                   WorkerSegment, published_params_file, worker_segment_dir)
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.shard import ParameterShard
from rayps.ps.transport.shm_server import start_shm_server
from tests.grpc_fixtures import TOKEN
from tests.shm_fixtures import ShmServed, stop_shm

pytest_plugins = ["tests.grpc_fixtures"]  # its loop_thread fixture

pytestmark = pytest.mark.timeout(60)

TOTAL, LO, SIZE = 12, 4, 8  # the shard holds values 4..12 of a 12-value model
TAG = "0123456789ab"


def make_segment(root, worker_id: int, dir_mode: int = 0o700, nbytes: int | None = None):
    """A worker's segment as its client makes it: the whole gradient and parameters."""
    directory = worker_segment_dir(str(root), TAG, worker_id)
    os.mkdir(directory, dir_mode)
    os.chmod(directory, dir_mode)
    layout, total = WorkerSegment(TOTAL), TOTAL
    path = os.path.join(directory, WORKER_SEGMENT_FILE)
    with open(path, "wb") as f:
        f.truncate(layout.nbytes if nbytes is None else nbytes)
    if nbytes is not None:
        return None
    mapped = np.memmap(path, np.uint8, "r+", shape=(layout.nbytes,))
    return (mapped[layout.grad_at:layout.grad_at + 4 * total].view(np.float32),
            mapped[layout.params_at:layout.params_at + 4 * total].view(np.float32))


@pytest.fixture
def served(loop_thread, tmp_path):
    shard = ParameterShard(0, np.zeros(SIZE, np.float32), [0, 1], OptimizerConfig(name="sgd", lr=0.5),
                           ScheduleConfig(), ConsistencyConfig(mode="asp"))
    made = ShmServed(shard, loop_thread.run(start_shm_server(shard, TOKEN, str(tmp_path),
                                                             place=SegmentPlace(TAG, LO, TOTAL))), TOKEN)
    yield made
    stop_shm(loop_thread, made)


def test_a_push_in_the_segment_is_read_there_and_answered_there_and_the_slot_is_never_touched(loop_thread, served,
                                                                                               tmp_path):
    grad, params = make_segment(tmp_path, 0)
    grad[:] = 7.0  # another shard's values: never read by this one
    grad[LO:] = 1.0
    client = served.connect(0)
    try:
        client.grad[:] = 99.0  # the slot: a shard that read it would step by 99
        assert client.call(REGISTER, flags=IN_SEGMENT).status == "OK"
        assert (params[LO:] == 0).all()
        reply = client.call(PUSH_PULL, flags=IN_SEGMENT, clock=1, pulled=0, samples=1)
        assert reply.status == "OK" and reply.version == 1
        shard_params, version, _ = loop_thread.run(served.shard.pull())
        assert (shard_params == -0.5).all() and version == 1
        assert (params[LO:] == -0.5).all()  # the answer, in the segment at the shard's range
        assert (params[:LO] == 0).all()  # and nowhere else
        assert (client.params == 0).all()  # the slot's parameters: not written
    finally:
        client.close()


def _symlinked(root) -> None:
    """A good segment elsewhere, and a link to it where the shard looks."""
    elsewhere = os.path.join(root, "elsewhere")
    os.mkdir(elsewhere)
    make_segment(elsewhere, 0)
    os.symlink(worker_segment_dir(elsewhere, TAG, 0), worker_segment_dir(str(root), TAG, 0))


BAD_SEGMENTS = {
    "missing": (lambda root: None, "No such file"),
    "a directory others may open": (lambda root: make_segment(root, 0, dir_mode=0o755), "not this user's alone"),
    "shorter than the model": (lambda root: make_segment(root, 0, nbytes=16), "not a file of"),
    "a symbolic link": (_symlinked, "Not a directory"),  # O_NOFOLLOW: the link itself, not what it names
}


@pytest.mark.parametrize("case", list(BAD_SEGMENTS))
def test_a_segment_that_is_missing_or_not_safe_is_refused_and_the_shard_serves_on(case, loop_thread, served,
                                                                                   tmp_path):
    prepare, fragment = BAD_SEGMENTS[case]
    prepare(tmp_path)
    client = served.connect(0)
    try:
        reply = client.call(PUSH_PULL, flags=IN_SEGMENT, clock=1, pulled=0, samples=1)
        assert reply.status == "INVALID_ARGUMENT" and "segment" in reply.message and fragment in reply.message, reply
        stats = loop_thread.run(served.shard.stats())
        assert stats["rejected"]["segment"] == 1 and stats["pushes_applied"] == 0
        # the same connection, through its slot: served as ever
        assert client.push(np.ones(SIZE, np.float32), 1, samples=1).status == "OK"
        assert loop_thread.run(served.shard.stats())["pushes_applied"] == 1
    finally:
        client.close()


def test_a_shard_given_no_segment_place_refuses_in_segment_requests(loop_thread, tmp_path):
    shard = ParameterShard(0, np.zeros(SIZE, np.float32), [0], OptimizerConfig(name="sgd", lr=0.5),
                           ScheduleConfig(), ConsistencyConfig(mode="asp"))
    served = ShmServed(shard, loop_thread.run(start_shm_server(shard, TOKEN, str(tmp_path))), TOKEN)
    client = served.connect(0)
    try:
        reply = client.call(PUSH_PULL, flags=IN_SEGMENT, clock=1, pulled=0, samples=1)
        assert reply.status == "INVALID_ARGUMENT" and "serves no workers' segments" in reply.message
    finally:
        client.close()
        stop_shm(loop_thread, served)


def test_stopping_removes_the_segments_workers_left_behind(loop_thread, served, tmp_path):
    make_segment(tmp_path, 0)
    make_segment(tmp_path, 1)
    other_job = os.path.join(tmp_path, "rayps-ffffffffffff-worker0")
    os.mkdir(other_job)
    stop_shm(loop_thread, served)
    assert not os.path.exists(worker_segment_dir(str(tmp_path), TAG, 0))
    assert not os.path.exists(worker_segment_dir(str(tmp_path), TAG, 1))
    assert os.path.isdir(other_job)  # another job's: not this shard's to remove


def test_asking_to_read_the_parameters_in_place_is_refused_where_they_change_while_workers_compute(
        loop_thread, served, tmp_path):
    make_segment(tmp_path, 0)
    client = served.connect(0)
    try:  # asp: another worker's push may step them while this one computes
        reply = client.call(PUSH_PULL, flags=IN_SEGMENT | PUBLISHED, clock=1, pulled=0, samples=1)
        assert reply.status == "INVALID_ARGUMENT" and "only bsp without a quorum" in reply.message
        assert loop_thread.run(served.shard.stats())["pushes_applied"] == 0
    finally:
        client.close()


def test_under_bsp_the_parameters_are_published_once_and_read_where_they_lie(loop_thread, tmp_path):
    shard = ParameterShard(0, np.full(SIZE, 3.0, np.float32), [0, 1], OptimizerConfig(name="sgd", lr=0.5),
                           ScheduleConfig(), ConsistencyConfig(mode="bsp"))
    served = ShmServed(shard, loop_thread.run(start_shm_server(shard, TOKEN, str(tmp_path),
                                                               place=SegmentPlace(TAG, LO, TOTAL))), TOKEN)
    published = np.memmap(published_params_file(str(tmp_path), TAG), np.float32, "r", shape=(TOTAL,))
    assert (published[LO:] == 3.0).all()  # the shard's parameters now live there, at its range
    segments = [make_segment(tmp_path, w) for w in (0, 1)]
    for grad, _ in segments:
        grad[:] = 1.0
    clients = [served.connect(0), served.connect(1)]
    try:
        replies = [None, None]

        def push(w):
            replies[w] = clients[w].call(PUSH_PULL, flags=IN_SEGMENT | PUBLISHED, clock=1, pulled=0, samples=1)
        threads = [threading.Thread(target=push, args=(w,)) for w in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert [r.status for r in replies] == ["OK", "OK"] and replies[0].version == 1
        assert (published[LO:] == 2.5).all()  # one round: the mean gradient, once, where every worker reads it
        for _, params in segments:
            assert (params == 0).all()  # and no copy written for anyone
    finally:
        for c in clients:
            c.close()
        stop_shm(loop_thread, served)
    assert not os.path.exists(published_params_file(str(tmp_path), TAG))  # removed with the job's segments

"""The same-node server against a real shard, driven on its own wire (protos/shm_wire.py) by hand.

Every header field of a request is checked as the gRPC server checks the same
field of a TensorChunk (tests/test_grpc_server.py ``BAD_PUSHES``, ``BAD_CALLS``):
a value that cannot be true is refused with the status protos/ps.proto names,
counted under its reason, and changes nothing; the connection and the shard
serve on, and the shard's stats still encode as the Stats call sends them.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from rayps.protos.shm_wire import BUFFERS_FOLLOW, REGISTER
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.shard import ParameterShard
from rayps.ps.sparse.row_optimizers import RowOptimizerConfig
from rayps.ps.sparse.table import TableConfig
from tests.grpc_fixtures import TOKEN, LoopThread
from tests.shm_fixtures import ShmServed, serve_shm, stop_shm

pytest_plugins = ["tests.grpc_fixtures"]  # its loop_thread fixture

pytestmark = pytest.mark.timeout(60)

SIZE = 8
ONES = np.ones(SIZE, np.float32)
U64, U32 = 2 ** 64 - 1, 2 ** 32 - 1



@pytest.fixture
def served(loop_thread, tmp_path):
    """A shard of SIZE zeros (sgd lr 0.5, asp, workers 0 and 1, table "emb" of 16 x 2 zeros) behind a shm server."""
    table = TableConfig("emb", 16, 2, optimizer=RowOptimizerConfig("sgd", lr=0.5), consistency=ConsistencyConfig("asp"),
                        init="zeros")
    shard = ParameterShard(0, np.zeros(SIZE, np.float32), [0, 1], OptimizerConfig(name="sgd", lr=0.5),
                           ScheduleConfig(), ConsistencyConfig(mode="asp"), tables=(table,))
    made = serve_shm(loop_thread, shard, TOKEN, str(tmp_path))
    yield made
    stop_shm(loop_thread, made)


@pytest.fixture
def clients(served):
    """Workers 0 and 1, each on its own connection."""
    made = [served.connect(0), served.connect(1)]
    yield made
    for client in made:
        client.close()


def counters(loop_thread: LoopThread, served: ShmServed) -> dict:
    """The shard's stats as the Stats call sends them: through msgpack, which must take every value."""
    return msgpack.unpackb(msgpack.packb(loop_thread.run(served.shard.stats()), use_bin_type=True), strict_map_key=False)


def assert_params(loop_thread: LoopThread, served: ShmServed, value: float, version: int) -> None:
    params, got_version, _ = loop_thread.run(served.shard.pull())
    assert got_version == version
    assert (params == np.float32(value)).all(), f"expected all {value}, got {np.unique(params)}"


# name -> (the request, on worker 0's and worker 1's connections; status; fragments of its message; stats reason)
BAD_REQUESTS = {
    "clock_zero": (lambda c: c[0].push(ONES, 0, pulled=1, samples=1), "INVALID_ARGUMENT", ["clock 0", "from 1"],
                   "clock"),
    # no header at all from a worker that has applied nothing: once answered DUPLICATE, as if applied
    "no_header_from_a_fresh_worker": (lambda c: c[1].push(ONES, 0), "INVALID_ARGUMENT", ["clock 0"], "clock"),
    "clock_at_uint64_max": (lambda c: c[0].push(ONES, U64, pulled=1), "FAILED_PRECONDITION",
                            [f"clock {U64}", "next clock is 2"], "out_of_order"),
    "seq_at_uint64_max": (lambda c: c[0].push(ONES, 2, pulled=1, seq=U64), "FAILED_PRECONDITION",
                          [f"seq {U64}", "next seq is 2"], "out_of_order"),
    "version_at_uint64_max": (lambda c: c[0].push(ONES, 2, pulled=U64), "INVALID_ARGUMENT",
                              [f"pulled_version {U64}"], "future_version"),
    "loss_inf": (lambda c: c[0].push(ONES, 2, pulled=1, loss=math.inf), "INVALID_ARGUMENT", ["loss inf", "finite"],
                 "loss"),
    "loss_minus_inf": (lambda c: c[0].push(ONES, 2, pulled=1, loss=-math.inf), "INVALID_ARGUMENT", ["loss -inf"],
                       "loss"),
    "nan_gradient": (lambda c: c[0].push(np.where(np.arange(SIZE) == 3, np.nan, 1.0), 2, pulled=1),
                     "INVALID_ARGUMENT", ["1 NaN or Inf"], "non_finite"),
    "ahead_at_uint32_max": (lambda c: c[0].push(ONES, 2, pulled=1, ahead=U32), "INVALID_ARGUMENT",
                            [f"{U32} iterations ahead", "at most 1024"], "ahead"),
    "incarnation_not_joined": (lambda c: c[0].push(ONES, 2, pulled=1, incarnation=U32), "FAILED_PRECONDITION",
                               [f"incarnation {U32} has not joined"], "out_of_order"),
    "unknown_flag_bits": (lambda c: c[0].push(ONES, 2, pulled=1, flags=0x80), "INVALID_ARGUMENT",
                          ["flags 0x80", "known: 0xf"], "flags"),
    "buffers_to_a_shard_without_any": (lambda c: c[0].push(ONES, 2, pulled=1, flags=BUFFERS_FOLLOW), "NOT_FOUND",
                                       ["holds no 'buffers' tensor"], "unknown_tensor"),
    "unknown_op": (lambda c: c[0].call(9, clock=2), "INVALID_ARGUMENT", ["unknown request op 9"], "malformed"),
    "another_workers_id": (lambda c: c[0].push(ONES, 1, worker_id=1), "NOT_FOUND",
                           ["worker 0's, not worker 1's"], "unknown_worker"),
    "register_unjoined_incarnation": (lambda c: c[1].call(REGISTER, incarnation=U32), "FAILED_PRECONDITION",
                                      [f"incarnation {U32} has not joined"], "out_of_order"),
    "sparse_push_clock_zero": (lambda c: c[0].sparse_push("emb", [3], [[1.0, 1.0]], 0), "INVALID_ARGUMENT",
                               ["clock 0", "from 1"], "clock"),
    "sparse_pull_far_future": (lambda c: c[0].sparse_pull("emb", [3], clock=U64)[0], "FAILED_PRECONDITION",
                               [f"iteration {U64}", "next is 1"], "out_of_order"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_refused_with_its_status_and_changes_nothing(case, loop_thread, served, clients):
    make, status, fragments, reason = BAD_REQUESTS[case]
    assert clients[0].push(ONES, 1, samples=1).status == "OK"
    assert_params(loop_thread, served, -0.5, 1)
    before = counters(loop_thread, served)

    reply = make(clients)
    assert reply.status == status, reply.message
    for fragment in fragments:
        assert fragment in reply.message

    assert_params(loop_thread, served, -0.5, 1)
    stats = counters(loop_thread, served)
    assert stats["rejected"] == {reason: 1}
    assert (stats["pushes_applied"], stats["duplicates"], stats["clocks"]) == (1, 0, {0: 1, 1: 0})
    assert stats["ledger"] == {0: [0, 1], 1: [0, 0]}
    # nothing else moved: no clock, seq, sample, loss, clock gap or table row
    assert {k for k in stats if stats[k] != before[k]} <= {"rejected", "uptime_s", "rss_bytes"}
    # the same connections serve on, as if the bad request never came
    assert clients[0].push(ONES, 2, pulled=1, samples=1).status == "OK"
    assert clients[1].push(ONES, 1, pulled=2, samples=1).status == "OK"
    assert_params(loop_thread, served, -1.5, 3)


def test_a_retry_of_an_applied_push_is_still_a_duplicate(loop_thread, served, clients):
    first = clients[0].push(ONES, 1, samples=4, seq=1)
    retry = clients[0].push(ONES, 1, samples=4, seq=1)
    headerless_retry = clients[0].push(ONES, 1, samples=4)  # seq 0: the clock's place, 1 again
    assert [r.outcome for r in (first, retry, headerless_retry)] == [0, 1, 1]  # APPLIED, DUPLICATE, DUPLICATE
    assert_params(loop_thread, served, -0.5, 1)
    stats = counters(loop_thread, served)
    assert (stats["duplicates"], stats["samples"], stats["rejected"]) == (2, {0: 4}, {})


def test_a_nan_loss_is_none_reported_and_leaves_the_last_loss_standing(loop_thread, served, clients):
    assert clients[0].push(ONES, 1, loss=0.25).status == "OK"
    assert clients[0].push(ONES, 2, pulled=1, loss=math.nan).status == "OK"  # a loop that reports no loss
    assert_params(loop_thread, served, -1.0, 2)
    assert counters(loop_thread, served)["loss"] == {0: 0.25}

"""The gRPC transport against a live server on 127.0.0.1, driven with the generated stubs only.

Clients are ``protos.ps_pb2_grpc.ParameterServerStub`` on a plain channel
(see tests/grpc_fixtures.py), so these tests also show that a client needs
nothing but ps.proto. Expected status codes are the ones the proto's comments
promise. Bearer token and mTLS: test_grpc_security.py; ``GrpcShardClient``:
test_grpc_client.py.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from rayps.protos import ps_pb2, ps_pb2_grpc
from rayps.protos.codec import MAX_MESSAGE_BYTES, encode_chunks
from rayps.errors import UnknownWorkerError
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.core.step import Step
from rayps.ps.shard import ParameterShard
from rayps.ps.sparse.row_optimizers import RowOptimizerConfig
from rayps.ps.sparse.table import TableConfig
from tests.grpc_fixtures import (APPLIED, buffer_chunks, AUTH, CHUNK_VALUES, DUPLICATE, PULL, PUSH, REGISTER, SIZE, TIMEOUT, Code,
                                 assert_params, gradient, pull, push, raw, stats)

pytest_plugins = ["tests.grpc_fixtures"]
pytestmark = pytest.mark.timeout(60)
U64, U32 = 2 ** 64 - 1, 2 ** 32 - 1


# ---- the good path -----------------------------------------------------------------


def test_register_answers_the_layout_version_and_protocol(stub):
    reply = stub.Register(ps_pb2.RegisterRequest(worker_id=1), timeout=TIMEOUT, metadata=AUTH)
    assert (reply.shard_id, reply.version, reply.protocol, reply.chunk_bytes) == (0, 0, 1, CHUNK_VALUES * 4)
    assert [(t.name, t.dtype, list(t.shape)) for t in reply.tensors] == [("dense", "float32", [SIZE])]


def test_chunked_push_applies_once_and_its_retry_answers_duplicate(stub):
    stub.Register(ps_pb2.RegisterRequest(worker_id=0), timeout=TIMEOUT, metadata=AUTH)
    ones = np.ones(SIZE, np.float32)
    chunks = gradient(ones, worker_id=0, clock=1)
    assert len(chunks) == 4

    reply = push(stub, chunks)
    assert (reply.outcome, reply.version) == (APPLIED, 1)
    params, version = pull(stub)
    assert version == 1
    assert np.array_equal(params, np.full(SIZE, -0.5, np.float32))  # 0 - lr 0.5 * 1, exactly

    retry = push(stub, chunks)
    assert (retry.outcome, retry.version) == (DUPLICATE, 1)
    assert_params(stub, -0.5, 1)

    counters = stats(stub)
    assert (counters["pushes_applied"], counters["duplicates"], counters["version"]) == (1, 1, 1)
    assert counters["rejected"] == {}
    assert counters["clocks"] == {0: 1, 1: 0}


def test_advance_clock_without_a_gradient_moves_the_clock_only(stub):
    reply = stub.AdvanceClock(ps_pb2.ClockRequest(worker_id=1, clock=3), timeout=TIMEOUT, metadata=AUTH)
    assert reply.version == 0
    assert stats(stub)["clocks"] == {0: 0, 1: 3}
    assert_params(stub, 0.0, 0)


# ---- bad input: refused with its status, nothing changes, serving goes on ---------


def _garbage():
    return b"\xff" * 16


def _unmarked_last():
    chunks = gradient(np.ones(SIZE), 0, 2, pulled_version=1)
    chunks[-1].last = False
    return chunks


def _chunk_after_last():
    chunks = gradient(np.ones(SIZE), 0, 2, pulled_version=1)
    return chunks + [chunks[-1]]


# name -> (the requests: chunks, or raw bytes, code, fragments the details must hold, stats reason)
BAD_PUSHES = {
    "garbage_bytes": (lambda: [_garbage()], Code.INVALID_ARGUMENT, ["TensorChunk"], "malformed"),
    "unknown_tensor_name": (lambda: gradient(np.ones(SIZE), 0, 2, c0={"name": "sparse"}),
                            Code.NOT_FOUND, ["'sparse'", "'dense'"], "unknown_tensor"),
    "dtype_float64": (lambda: gradient(np.ones(SIZE), 0, 2, c0={"dtype": "float64"}),
                      Code.INVALID_ARGUMENT, ["float32", "'float64'"], "dtype"),
    "wrong_shape": (lambda: gradient(np.ones(SIZE), 0, 2, c0={"shape": [10, 100]}),
                    Code.INVALID_ARGUMENT, ["[1000]", "[10, 100]"], "shape"),
    "bytes_short_of_the_shape": (lambda: gradient(np.ones(SIZE), 0, 2, chunk_values=SIZE,
                                                  c0={"data": np.ones(999, np.float32).tobytes()}),
                                 Code.INVALID_ARGUMENT, ["3996 bytes", "expected 4000"], "byte_length"),
    "bytes_past_the_shape": (lambda: gradient(np.ones(SIZE), 0, 2, chunk_values=SIZE,
                                              c0={"data": np.ones(1001, np.float32).tobytes()}),
                             Code.INVALID_ARGUMENT, ["element 1001", "[1000]", "4000 bytes"], "byte_length"),
    "bytes_not_whole_floats": (lambda: gradient(np.ones(SIZE), 0, 2, c0={"data": b"\0" * 999}),
                               Code.INVALID_ARGUMENT, ["999 bytes", "float32"], "byte_length"),
    "chunk_at_wrong_offset": (lambda: gradient(np.ones(SIZE), 0, 2, c1={"offset": 300}),
                              Code.INVALID_ARGUMENT, ["offset 250", "offset 300"], "offset"),
    "stream_ends_mid_tensor": (lambda: gradient(np.ones(SIZE), 0, 2)[:2],
                               Code.INVALID_ARGUMENT, ["ended inside", "4000 bytes", "2000"], "malformed"),
    "empty_stream": (lambda: [], Code.INVALID_ARGUMENT, ["empty push", "'dense'"], "malformed"),
    "nan_values": (lambda: gradient(np.where(np.arange(SIZE) == 600, np.nan, 1.0), 0, 2),
                   Code.INVALID_ARGUMENT, ["1 NaN or Inf", "finite"], "non_finite"),
    "inf_values": (lambda: gradient(np.where(np.arange(SIZE) % 100 == 0, -np.inf, 1.0), 0, 2),
                   Code.INVALID_ARGUMENT, ["10 NaN or Inf", "finite"], "non_finite"),
    "unknown_worker_id": (lambda: gradient(np.ones(SIZE), 7, 1), Code.NOT_FOUND, ["worker id 7"],
                          "unknown_worker"),
    # a version from the future was applied once, and made every later Stats fail for everyone
    "version_from_the_future": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=100), Code.INVALID_ARGUMENT,
                                ["pulled_version 100", "(0..1)"], "future_version"),
    "version_at_uint64_max": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=2**64 - 1),
                              Code.INVALID_ARGUMENT, [f"pulled_version {2**64 - 1}"], "future_version"),
    # the proto's chunk rules: a tensor's chunks run up to the one marked last, and a Push carries one push
    "no_chunk_marked_last": (_unmarked_last, Code.INVALID_ARGUMENT, ["no chunk was marked last"], "malformed"),
    "chunk_after_last": (_chunk_after_last, Code.INVALID_ARGUMENT, ["after the push's last chunk"], "malformed"),
    "offset_at_uint64_max": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=1, c1={"offset": U64}),
                             Code.INVALID_ARGUMENT, ["offset 250", f"offset {U64}"], "offset"),
    "shape_at_uint64_max": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=1, c0={"shape": [U64]}),
                            Code.INVALID_ARGUMENT, ["[1000]", f"[{U64}]"], "shape"),
    # every header field checked against what can be true (protos/ps.proto)
    "clock_zero": (lambda: gradient(np.ones(SIZE), 0, 0, pulled_version=1), Code.INVALID_ARGUMENT,
                   ["clock 0", "from 1"], "clock"),
    # no header at all from a worker that has applied nothing: once answered DUPLICATE, as if applied
    "no_header_from_a_fresh_worker": (lambda: gradient(np.ones(SIZE), 1, 0, c0={"num_samples": 0, "loss": 0.0}),
                                      Code.INVALID_ARGUMENT, ["worker 1 pushed clock 0"], "clock"),
    "clock_at_uint64_max": (lambda: gradient(np.ones(SIZE), 0, U64, pulled_version=1), Code.FAILED_PRECONDITION,
                            [f"clock {U64}", "next clock is 2"], "out_of_order"),
    "seq_at_uint64_max": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=1, c0={"seq": U64}),
                          Code.FAILED_PRECONDITION, [f"seq {U64}", "next seq is 2"], "out_of_order"),
    "loss_inf": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=1, c0={"loss": float("inf")}),
                 Code.INVALID_ARGUMENT, ["loss inf", "finite"], "loss"),
    "loss_minus_inf": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=1, c0={"loss": -float("inf")}),
                       Code.INVALID_ARGUMENT, ["loss -inf", "finite"], "loss"),
    "ahead_on_a_push": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=1, c0={"ahead": 1}),
                        Code.INVALID_ARGUMENT, ["ahead 1 on a Push", "Step field"], "ahead"),
    "incarnation_not_joined": (lambda: gradient(np.ones(SIZE), 0, 2, pulled_version=1, c0={"incarnation": U32}),
                               Code.FAILED_PRECONDITION, [f"incarnation {U32} has not joined"], "out_of_order"),
}


@pytest.mark.parametrize("case", list(BAD_PUSHES))
def test_bad_push_is_refused_with_its_status_and_changes_nothing(case, stub, channel):
    build, code, fragments, reason = BAD_PUSHES[case]
    assert push(stub, gradient(np.ones(SIZE), 0, 1)).outcome == APPLIED
    assert_params(stub, -0.5, 1)

    requests = build()
    with pytest.raises(grpc.RpcError) as caught:
        if requests and isinstance(requests[0], bytes):
            raw(channel, PUSH)(iter(requests), timeout=TIMEOUT, metadata=AUTH)
        else:
            push(stub, requests)
    assert caught.value.code() == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()

    assert_params(stub, -0.5, 1)
    counters = stats(stub)
    assert counters["rejected"] == {reason: 1}
    assert (counters["pushes_applied"], counters["clocks"]) == (1, {0: 1, 1: 0})
    # the same worker goes on as if the bad push never came
    assert push(stub, gradient(np.ones(SIZE), 0, 2, pulled_version=1)).outcome == APPLIED
    assert_params(stub, -1.0, 2)


def _step(stub, chunks) -> list:
    """One push on a Step stream, and the answer's chunks."""
    return list(stub.Step(iter(chunks), timeout=TIMEOUT, metadata=AUTH))


def _advance(stub, **fields):
    return stub.AdvanceClock(ps_pb2.ClockRequest(**fields), timeout=TIMEOUT, metadata=AUTH)


def _sparse_push(stub, **fields):
    request = dict(worker_id=0, table="emb", ids=np.array([3], "<i8").tobytes(), grads=np.ones(2, "<f4").tobytes(),
                   dim=2, num_samples=1)
    return stub.SparsePush(ps_pb2.SparsePushRequest(**{**request, **fields}), timeout=TIMEOUT, metadata=AUTH)


def _sparse_pull(stub, **fields):
    request = dict(worker_id=0, table="emb", ids=np.array([3], "<i8").tobytes())
    return stub.SparsePull(ps_pb2.SparsePullRequest(**{**request, **fields}), timeout=TIMEOUT, metadata=AUTH)


# Every other call's fields: name -> (the call, on a stub; the shard's mode and staleness; code; fragments of the
# details; stats reason). After worker 0's push of clock 1, each is refused and changes nothing, as a bad push.
BAD_CALLS = {
    "pull_at_uint64_max": (lambda stub: pull(stub, 0, U64), ("asp", 0), Code.FAILED_PRECONDITION,
                           [f"iteration {U64}", "its next is 2", "1024"], "out_of_order"),
    "pull_one_past_the_horizon": (lambda stub: pull(stub, 0, 2 + 1024 + 1), ("asp", 0), Code.FAILED_PRECONDITION,
                                  ["iteration 1027"], "out_of_order"),
    "step_clock_zero": (lambda stub: _step(stub, gradient(np.ones(SIZE), 0, 0, pulled_version=1)), ("asp", 0),
                        Code.INVALID_ARGUMENT, ["clock 0"], "clock"),
    "step_ahead_at_uint32_max": (lambda stub: _step(stub, gradient(np.ones(SIZE), 0, 2, 1, c0={"ahead": U32})),
                                 ("asp", 0), Code.INVALID_ARGUMENT, [f"{U32} iterations ahead", "at most 1024"],
                                 "ahead"),
    # ssp s=1: an answer for clock + 1 + 2 is 2 past the worker's own clock: it would wait for itself forever
    "step_ahead_past_the_ssp_bound": (lambda stub: _step(stub, gradient(np.ones(SIZE), 0, 2, 1, c0={"ahead": 2})),
                                      ("ssp", 1), Code.FAILED_PRECONDITION, ["past the staleness bound 1"],
                                      "out_of_order"),
    "advance_to_clock_zero": (lambda stub: _advance(stub, worker_id=1, clock=0), ("asp", 0), Code.INVALID_ARGUMENT,
                              ["advanced to clock 0", "1 .. 9223372036854775807"], "clock"),
    "advance_past_the_highest_clock": (lambda stub: _advance(stub, worker_id=1, clock=U64), ("asp", 0),
                                       Code.INVALID_ARGUMENT, [f"advanced to clock {U64}"], "clock"),
    "advance_from_an_unjoined_incarnation": (lambda stub: _advance(stub, worker_id=1, clock=3, incarnation=U32),
                                             ("asp", 0), Code.FAILED_PRECONDITION,
                                             [f"incarnation {U32} has not joined"], "out_of_order"),
    "register_an_unjoined_incarnation": (
        lambda stub: stub.Register(ps_pb2.RegisterRequest(worker_id=1, incarnation=U32), timeout=TIMEOUT,
                                   metadata=AUTH), ("asp", 0), Code.FAILED_PRECONDITION,
        [f"incarnation {U32} has not joined"], "out_of_order"),
    "sparse_push_clock_zero": (lambda stub: _sparse_push(stub, clock=0), ("asp", 0), Code.INVALID_ARGUMENT,
                               ["clock 0", "from 1"], "clock"),
    "sparse_push_dim_at_uint32_max": (lambda stub: _sparse_push(stub, clock=1, dim=U32), ("asp", 0),
                                      Code.INVALID_ARGUMENT, [f"1 x {U32}"], "rows_shape"),
    "sparse_push_unknown_codec": (lambda stub: _sparse_push(stub, clock=1, codec="zstd"), ("asp", 0),
                                  Code.INVALID_ARGUMENT, ["'zstd'", "'none'"], "codec"),
    "sparse_pull_at_uint64_max": (lambda stub: _sparse_pull(stub, clock=U64), ("asp", 0), Code.FAILED_PRECONDITION,
                                  [f"iteration {U64}", "its next is 1"], "out_of_order"),
    "sparse_pull_unjoined_incarnation": (lambda stub: _sparse_pull(stub, clock=1, incarnation=U32), ("asp", 0),
                                         Code.FAILED_PRECONDITION, [f"incarnation {U32} has not joined"],
                                         "out_of_order"),
}

EMB = TableConfig("emb", 16, 2, optimizer=RowOptimizerConfig("sgd", lr=0.5), consistency=ConsistencyConfig("asp"),
                  init="zeros")


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_call_is_refused_with_its_status_and_changes_nothing(case, serve, channels):
    call, (mode, staleness), code, fragments, reason = BAD_CALLS[case]
    stub = ps_pb2_grpc.ParameterServerStub(channels(serve(mode=mode, staleness=staleness, tables=(EMB,)).address))
    assert push(stub, gradient(np.ones(SIZE), 0, 1)).outcome == APPLIED
    before = stats(stub)

    with pytest.raises(grpc.RpcError) as caught:
        call(stub)
    assert caught.value.code() == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()

    assert_params(stub, -0.5, 1)
    counters = stats(stub)  # Stats answers, and every counter but the refusal's is as it was
    assert counters["rejected"] == {reason: 1}
    assert {k for k in counters if counters[k] != before[k]} <= {"rejected", "uptime_s", "rss_bytes"}
    assert push(stub, gradient(np.ones(SIZE), 0, 2, pulled_version=1)).outcome == APPLIED
    assert_params(stub, -1.0, 2)


def test_the_horizon_itself_is_answered_and_a_nan_loss_reports_none(stub):
    """The limits are not off by one, and NaN (a loop that reported no loss) is taken, not recorded."""
    assert push(stub, gradient(np.ones(SIZE), 0, 1, c0={"loss": 0.25})).outcome == APPLIED
    assert push(stub, gradient(np.ones(SIZE), 0, 2, 1, c0={"loss": float("nan")})).outcome == APPLIED
    assert pull(stub, 0, 3 + 1024)[1] == 2  # asp: no wait, even 1024 past the next iteration
    assert len(_step(stub, gradient(np.ones(SIZE), 0, 3, 2, c0={"ahead": 1024, "loss": float("nan")}))) == 4
    counters = stats(stub)
    assert (counters["version"], counters["loss"], counters["rejected"]) == (3, {0: 0.25}, {})
    assert counters["max_clock_gap"] == 3 + 1 + 1024 - 1  # iteration 1028 asked with worker 1 still at 0


def test_bsp_advances_only_over_rounds_that_stepped(serve, channels):
    stub = ps_pb2_grpc.ParameterServerStub(channels(serve(mode="bsp").address))
    with pytest.raises(grpc.RpcError) as caught:  # round 1 needs worker 1's push: it may not skip it
        _advance(stub, worker_id=1, clock=1)
    assert caught.value.code() == Code.FAILED_PRECONDITION
    assert "round of clock 1 needs its push" in caught.value.details()
    assert stats(stub)["clocks"] == {0: 0, 1: 0}
    for worker in (0, 1):
        assert push(stub, gradient(np.ones(SIZE), worker, 1)).outcome == APPLIED
    assert_params(stub, -0.5, 1)  # the round stepped, as if the refused advance never came
    assert _advance(stub, worker_id=1, clock=1).version == 1  # over a round that stepped: nothing to refuse
    assert stats(stub)["rejected"] == {"out_of_order": 1}


def test_a_bsp_round_of_pushes_claiming_no_samples_steps_with_their_plain_mean(serve, channels):
    """Once a ZeroDivisionError after the round was taken: the round lost, the clocks moved on, INTERNAL."""
    stub = ps_pb2_grpc.ParameterServerStub(channels(serve(mode="bsp").address))
    for worker, value in ((0, 1.0), (1, 3.0)):
        chunks = gradient(np.full(SIZE, value), worker, 1, c0={"num_samples": 0})
        assert push(stub, chunks).outcome == APPLIED
    assert_params(stub, -1.0, 1)  # lr 0.5 x the mean 2
    assert stats(stub)["rejected"] == {}


def test_an_advance_from_a_worker_that_left_is_refused(stub):
    _advance(stub, worker_id=1, leave=True)
    with pytest.raises(grpc.RpcError) as caught:
        _advance(stub, worker_id=1, clock=5)
    assert caught.value.code() == Code.FAILED_PRECONDITION and "has left" in caught.value.details()
    assert stats(stub)["clocks"] == {0: 0}


@pytest.mark.parametrize("method,kind", [(REGISTER, "unary_unary"), (PULL, "unary_stream")])
def test_garbage_unary_request_is_invalid_argument(method, kind, stub, channel):
    with pytest.raises(grpc.RpcError) as caught:
        reply = raw(channel, method, kind)(_garbage(), timeout=TIMEOUT, metadata=AUTH)
        if kind == "unary_stream":
            list(reply)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert "not a valid" in caught.value.details()
    assert stats(stub)["rejected"] == {"malformed": 1}
    assert_params(stub, 0.0, 0)


@pytest.mark.parametrize("call", ["Register", "Pull", "AdvanceClock"])
def test_unknown_worker_is_not_found_on_every_call(call, stub):
    request = {"Register": ps_pb2.RegisterRequest(worker_id=9), "Pull": ps_pb2.PullRequest(worker_id=9),
               "AdvanceClock": ps_pb2.ClockRequest(worker_id=9, clock=1)}[call]
    with pytest.raises(grpc.RpcError) as caught:
        reply = getattr(stub, call)(request, timeout=TIMEOUT, metadata=AUTH)
        if call == "Pull":
            list(reply)
    assert caught.value.code() == Code.NOT_FOUND
    assert "worker id 9" in caught.value.details()
    assert stats(stub)["rejected"] == {"unknown_worker": 1}
    assert_params(stub, 0.0, 0)


def test_message_over_the_limit_is_resource_exhausted(stub, server, channels):
    big = channels(server.address, options=[("grpc.max_send_message_length", 2 * MAX_MESSAGE_BYTES)])
    oversized = ps_pb2.TensorChunk(name="dense", dtype="float32", shape=[SIZE], offset=0, last=True, worker_id=0,
                                   clock=1, data=b"\0" * (MAX_MESSAGE_BYTES + 4))
    with pytest.raises(grpc.RpcError) as caught:
        push(ps_pb2_grpc.ParameterServerStub(big), [oversized])
    assert caught.value.code() == Code.RESOURCE_EXHAUSTED
    assert str(MAX_MESSAGE_BYTES) in caught.value.details()

    assert_params(stub, 0.0, 0)
    # gRPC refuses the message before our code sees it; the handler sees the push's
    # stream end without a tensor and counts that (it may land just after the status).
    deadline = time.monotonic() + 2.0
    while not stats(stub)["rejected"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(stats(stub)["rejected"].values()) == 1
    assert stats(stub)["clocks"] == {0: 0, 1: 0}
    assert push(stub, gradient(np.ones(SIZE), 0, 1)).outcome == APPLIED
    assert_params(stub, -0.5, 1)


def test_push_from_a_worker_that_left_is_failed_precondition(stub):
    assert push(stub, gradient(np.ones(SIZE), 1, 1)).outcome == APPLIED
    stub.AdvanceClock(ps_pb2.ClockRequest(worker_id=1, leave=True), timeout=TIMEOUT, metadata=AUTH)
    assert stats(stub)["clocks"] == {0: 0}

    with pytest.raises(grpc.RpcError) as caught:
        push(stub, gradient(np.ones(SIZE), 1, 2, pulled_version=1))
    assert caught.value.code() == Code.FAILED_PRECONDITION
    assert "worker 1 has left" in caught.value.details()

    assert_params(stub, -0.5, 1)
    assert stats(stub)["rejected"] == {"out_of_order": 1}
    assert push(stub, gradient(np.ones(SIZE), 0, 1)).outcome == APPLIED
    assert_params(stub, -1.0, 2)


def test_one_clients_bad_push_does_not_disturb_another_on_its_own_channel(stub, server, channels):
    other = ps_pb2_grpc.ParameterServerStub(channels(server.address))
    with pytest.raises(grpc.RpcError):
        push(other, gradient(np.ones(SIZE), 1, 1, c2={"offset": 0}))
    assert push(stub, gradient(np.ones(SIZE), 0, 1)).outcome == APPLIED
    assert push(other, gradient(np.ones(SIZE), 1, 1, pulled_version=1)).outcome == APPLIED
    assert_params(stub, -1.0, 2)


# ---- deadlines -------------------------------------------------------------------


def test_pull_that_waits_past_its_deadline_is_deadline_exceeded_and_the_server_goes_on(serve, channels):
    served = serve(mode="ssp", staleness=0)
    stub = ps_pb2_grpc.ParameterServerStub(channels(served.address))
    assert push(stub, gradient(np.ones(SIZE), 0, 1)).outcome == APPLIED
    with pytest.raises(grpc.RpcError) as caught:
        pull(stub, worker_id=0, clock=2, timeout=0.3)  # must wait for worker 1, which never comes
    assert caught.value.code() == Code.DEADLINE_EXCEEDED

    assert_params(stub, -0.5, 1)
    assert push(stub, gradient(np.ones(SIZE), 1, 1)).outcome == APPLIED
    params, version = pull(stub, worker_id=0, clock=2)  # worker 1 caught up: no wait now
    assert version == 2 and (params == -1.0).all()


# ---- ParameterShard.pull_for(take=...): how the servicer reads parameters out --------

SMALL = np.array([1.0, -2.0, 0.5, 4.0], np.float32)


def _small_shard(mode: str = "ssp", staleness: int = 0) -> ParameterShard:
    return ParameterShard(0, SMALL, [0, 1], OptimizerConfig(name="sgd", lr=0.5), ScheduleConfig(),
                          ConsistencyConfig(mode=mode, staleness=staleness))


async def _push(shard: ParameterShard, worker: int, clock: int, value: float) -> None:
    await shard.push(Step(worker, clock, np.full(SMALL.size, value, np.float32), 0, 1, 0.0))


def test_pull_for_hands_take_the_parameters_at_the_version_it_returns():
    async def scenario():
        shard = _small_shard("ssp", staleness=0)
        seen = []

        def take(params):
            seen.append((params.copy(), shard.version))
            return "taken"

        assert await shard.pull_for(0, 0, take=take) == ("taken", 0, None)  # clock 0: no wait; no buffers
        await _push(shard, 0, 1, 1.0)
        waiting = asyncio.create_task(shard.pull_for(0, 2, take=take))  # iteration 2 waits for worker 1
        await asyncio.sleep(0.05)
        assert not waiting.done() and len(seen) == 1
        await _push(shard, 1, 1, 2.0)
        result = await asyncio.wait_for(waiting, TIMEOUT)
        await _push(shard, 0, 2, 4.0)  # a later update changes nothing taken before it
        return result, seen

    result, seen = asyncio.run(scenario())
    assert result == ("taken", 2, None)
    assert [version for _, version in seen] == [0, 2]  # once per pull, at the version returned
    np.testing.assert_array_equal(seen[0][0], SMALL)
    np.testing.assert_array_equal(seen[1][0], SMALL - 0.5 * 1.0 - 0.5 * 2.0)


def test_pull_for_with_the_encoder_as_take_sends_the_parameters_of_its_version():
    async def scenario():
        shard = _small_shard("asp")
        await _push(shard, 0, 1, 1.0)
        encoded, version, _ = await shard.pull_for(0, 2, take=lambda params: list(encode_chunks("dense", params, 8)))
        await _push(shard, 1, 1, 2.0)
        return encoded, version

    encoded, version = asyncio.run(scenario())
    assert version == 1 and len(encoded) == 2
    sent = b"".join(ps_pb2.TensorChunk.FromString(b).data for b in encoded)
    assert np.frombuffer(sent, "<f4").tobytes() == (SMALL - 0.5).tobytes()


def test_pull_for_by_default_returns_a_copy_that_later_updates_do_not_change():
    async def scenario():
        shard = _small_shard("asp")
        first = await shard.pull_for(0, 0)
        await _push(shard, 0, 1, 1.0)
        second = await shard.pull_for(0, 2)
        await _push(shard, 1, 1, 2.0)
        return first, second, await shard.pull()

    (p0, v0, _), (p1, v1, _), (now, v_now, _) = asyncio.run(scenario())
    assert (v0, v1, v_now) == (0, 1, 2)
    np.testing.assert_array_equal(p0, SMALL)
    np.testing.assert_array_equal(p1, SMALL - 0.5)
    np.testing.assert_array_equal(now, SMALL - 1.5)


def test_pull_for_an_unknown_worker_raises_before_take_is_called():
    seen = []
    with pytest.raises(UnknownWorkerError):
        asyncio.run(_small_shard().pull_for(9, 1, take=seen.append))
    assert seen == []


# ---- model buffers over the wire -------------------------------------------------------


def with_buffers(values, worker_id, clock, buffers, **buffer_kwargs):
    chunks = gradient(values, worker_id, clock)
    chunks[0].buffers_follow = True
    return chunks + buffer_chunks(buffers, **buffer_kwargs)


def pull_all(stub, worker_id=0) -> dict[str, np.ndarray]:
    """Every tensor of a Pull answer, by name, in the order they came."""
    got: dict[str, list] = {}
    for chunk in stub.Pull(ps_pb2.PullRequest(worker_id=worker_id), timeout=TIMEOUT, metadata=AUTH):
        got.setdefault(chunk.name, []).append(np.frombuffer(chunk.data, "<f8" if chunk.dtype == "float64" else "<f4"))
    return {name: np.concatenate(parts) for name, parts in got.items()}


def test_buffers_follow_a_push_and_come_back_after_the_parameters(serve, channels):
    served = serve(buffers=5)
    stub = ps_pb2_grpc.ParameterServerStub(channels(served.address))
    reply = stub.Register(ps_pb2.RegisterRequest(worker_id=0), timeout=TIMEOUT, metadata=AUTH)
    assert [(t.name, t.dtype, list(t.shape)) for t in reply.tensors] == [
        ("dense", "float32", [SIZE]), ("buffers", "float64", [5])]
    assert push(stub, with_buffers(np.ones(SIZE), 0, 1, [1, 2, 3, 4, 5])).outcome == APPLIED
    assert push(stub, with_buffers(np.ones(SIZE), 1, 1, [3, 4, 5, 6, 7])).outcome == APPLIED
    got = pull_all(stub)
    assert list(got) == ["dense", "buffers"]
    np.testing.assert_array_equal(got["buffers"], [2, 3, 4, 5, 6])  # equal batches: the plain mean
    assert (got["dense"] == -1.0).all()


@pytest.mark.parametrize("make, code, fragment", [
    (lambda: with_buffers(np.ones(SIZE), 0, 1, [1, 2, 3, 4, 5], dtype="<f4"), Code.INVALID_ARGUMENT,
     "tensor 'buffers': expected dtype float64, got 'float32'"),
    (lambda: with_buffers(np.ones(SIZE), 0, 1, [1, 2, np.nan, 4, 5]), Code.INVALID_ARGUMENT,
     "buffers hold 1 NaN values"),
    (lambda: with_buffers(np.ones(SIZE), 0, 1, [1, 2, 3, 4, 5, 6]), Code.INVALID_ARGUMENT,
     "tensor 'buffers': expected shape [5], got [6]"),
    (lambda: with_buffers(np.ones(SIZE), 0, 1, [1, 2, 3, 4, 5])[:-1], Code.INVALID_ARGUMENT,
     "the stream ended inside tensor 'buffers': expected 40 bytes, got 24"),
], ids=["float32", "nan", "too_long", "cut_off"])
def test_bad_buffers_get_a_clear_status_and_change_nothing(serve, channels, make, code, fragment):
    served = serve(buffers=5)
    stub = ps_pb2_grpc.ParameterServerStub(channels(served.address))
    with pytest.raises(grpc.RpcError) as caught:
        push(stub, make())
    assert caught.value.code() == code and fragment in caught.value.details()
    got = pull_all(stub)
    assert (got["dense"] == 0).all() and (got["buffers"] == 0).all()  # the gradient beside them was not applied
    assert stats(stub)["clocks"] == {0: 0, 1: 0}
    # and the server serves on: the same push, done right, is applied
    assert push(stub, with_buffers(np.ones(SIZE), 0, 1, [1, 2, 3, 4, 5])).outcome == APPLIED


def test_buffers_to_a_shard_that_holds_none_are_refused_as_an_unknown_tensor(stub):
    with pytest.raises(grpc.RpcError) as caught:
        push(stub, with_buffers(np.ones(SIZE), 0, 1, [1.0]))
    assert caught.value.code() == Code.NOT_FOUND and "holds no 'buffers' tensor" in caught.value.details()
    assert_params(stub, 0.0, 0)

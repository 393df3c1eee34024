"""``GrpcShardClient`` against live servers: refused steps, a stopped server, and one shard's refusal cancelling the rest."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rayps.protos import ps_pb2_grpc
from rayps.ps.transport.grpc_client import GrpcShardClient, TransportError
from rayps.ps.core.partition import ShardRange
from tests.grpc_fixtures import APPLIED, CHUNK_VALUES, SIZE, TIMEOUT, TOKEN, Served, gradient, push

pytest_plugins = ["tests.grpc_fixtures"]
pytestmark = pytest.mark.timeout(60)


# ---- GrpcShardClient after a refused step ---------------------------------------


def _client(*served: Served, worker_id: int = 0) -> GrpcShardClient:
    ranges = [ShardRange(i, i * SIZE, (i + 1) * SIZE) for i in range(len(served))]
    return GrpcShardClient(worker_id, [s.address for s in served], ranges, TOKEN, timeout_s=TIMEOUT,
                           chunk_bytes=CHUNK_VALUES * 4)


REFUSALS = 20
REFUSED_STEPS = {
    # refused once the whole gradient is in: the client has finished writing
    "nan_gradient": (np.where(np.arange(SIZE) == 600, np.nan, 1.0).astype(np.float32),
                     ["INVALID_ARGUMENT", "1 NaN or Inf", "finite"], "non_finite"),
    # refused at the first chunk: the server ends the stream while the client still writes
    "short_gradient": (np.ones(SIZE - 1, np.float32), ["INVALID_ARGUMENT", "expected shape [1000]", "got [999]"],
                       "shape"),
}


@pytest.mark.parametrize("case", list(REFUSED_STEPS))
def test_grpc_client_step_refused_raises_transport_error_and_the_next_step_works(case, serve, loop_thread):
    bad, fragments, reason = REFUSED_STEPS[case]
    served = serve()
    client = _client(served)
    try:
        params = np.full(SIZE, np.nan, np.float32)
        client.register(params)
        client.push_pull(1, np.ones(SIZE, np.float32), params, num_samples=8, loss=1.0)
        assert (params == -0.5).all()

        for _ in range(REFUSALS):  # whichever comes first, the status or a failed write: the shard's message
            with pytest.raises(TransportError) as caught:
                client.push_pull(2, bad, params, num_samples=8, loss=1.0)
            for fragment in fragments + [served.address, "step 2"]:
                assert fragment in str(caught.value)
        assert (params == -0.5).all()  # no reply came, so nothing was written
        shard_params, version, _ = loop_thread.run(served.shard.pull())
        assert version == 1 and (shard_params == -0.5).all()
        counters = loop_thread.run(served.shard.stats())
        assert (counters["rejected"], counters["clocks"]) == ({reason: REFUSALS}, {0: 1, 1: 0})

        # the same client, the same clock, a good gradient: a fresh stream, applied once
        client.push_pull(2, np.full(SIZE, 2.0, np.float32), params, num_samples=8, loss=1.0)
        assert (params == -1.5).all()  # -0.5 - 0.5 * 2, exactly
        client.push_pull(3, np.ones(SIZE, np.float32), params, num_samples=8, loss=1.0)
        assert (params == -2.0).all()
        (counters,) = client.stats()
        assert (counters["pushes_applied"], counters["version"], counters["clocks"], counters["rejected"]) == (
            3, 3, {0: 3, 1: 0}, {reason: REFUSALS})
    finally:
        client.finish()


def test_grpc_client_step_after_the_server_stopped_is_a_transport_error(serve, loop_thread):
    served = serve()
    client = _client(served)
    try:
        params = np.zeros(SIZE, np.float32)
        client.register(params)
        client.push_pull(1, np.ones(SIZE, np.float32), params, num_samples=8, loss=1.0)
        loop_thread.run(served.server.stop(0.1))
        for _ in range(2):  # the stream the server ended, then a fresh one to a server that is gone
            with pytest.raises(TransportError) as caught:
                client.push_pull(2, np.ones(SIZE, np.float32), params, num_samples=8, loss=1.0)
            assert f"shard at {served.address}, step 2: UNAVAILABLE: " in str(caught.value)
        assert (params == -0.5).all()
    finally:
        client.close()


def test_grpc_client_cancels_the_other_shards_steps_when_one_is_refused(serve, loop_thread, channels):
    fine, waits = serve(), serve(mode="ssp", staleness=0)  # the second holds clock 2 until worker 1 pushes
    client = _client(fine, waits)
    try:
        params = np.full(2 * SIZE, np.nan, np.float32)
        client.register(params)
        assert (params == 0.0).all()
        bad = np.ones(2 * SIZE, np.float32)
        bad[7] = np.inf
        with pytest.raises(TransportError) as caught:
            client.push_pull(1, bad, params, num_samples=8, loss=1.0)
        assert fine.address in str(caught.value) and "NaN or Inf" in str(caught.value)

        # Worker 1 lets the waiting shard answer: the cancelled step must not write into params.
        # (Whether that step's gradient reached the shard before the cancel is a race; either is fine.)
        other = ps_pb2_grpc.ParameterServerStub(channels(waits.address))
        assert push(other, gradient(np.ones(SIZE), 1, 1)).outcome == APPLIED
        time.sleep(0.2)
        assert (params == 0.0).all()

        client.push_pull(1, np.full(2 * SIZE, 2.0, np.float32), params, num_samples=8, loss=1.0)
        assert (params[:SIZE] == -1.0).all()  # 0 - 0.5 * 2: the refused push left no trace
        expected, _, _ = loop_thread.run(waits.shard.pull())
        assert np.array_equal(params[SIZE:], expected)
    finally:
        client.finish()

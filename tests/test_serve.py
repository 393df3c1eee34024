"""psctl serve: one shard as a plain gRPC server in its own process, spoken to with nothing but the proto."""

from __future__ import annotations

import re
import subprocess
import sys

import grpc
import msgpack
import numpy as np
import pytest

from rayps.protos import ps_pb2, ps_pb2_grpc

TIMEOUT = 10


@pytest.fixture
def served(tmp_path):
    token_file = tmp_path / "token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayps", "serve", "--size", "6", "--workers", "1",
         "--token-file", str(token_file), "--set", "optimizer={name: sgd, lr: 0.5}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"on (127\.0\.0\.1:\d+) \(plaintext\); token from (.+)$", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        yield proc, match.group(1), token_file.read_text().strip(), line
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=TIMEOUT)


def test_psctl_serve_trains_a_shard_for_a_client_holding_only_the_proto(served):
    proc, address, token, banner = served
    assert token and token not in banner  # the token is in its file, never on stdout
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(address) as channel:
        stub = ps_pb2_grpc.ParameterServerStub(channel)
        reply = stub.Register(ps_pb2.RegisterRequest(worker_id=0), timeout=TIMEOUT, metadata=metadata)
        assert [(t.name, t.dtype, list(t.shape)) for t in reply.tensors] == [("dense", "float32", [6])]

        grad = np.full(6, 2.0, dtype="<f4")
        chunk = ps_pb2.TensorChunk(name="dense", dtype="float32", shape=[6], offset=0, data=grad.tobytes(),
                                   last=True, worker_id=0, clock=1, num_samples=8, loss=1.0)
        pushed = stub.Push(iter([chunk]), timeout=TIMEOUT, metadata=metadata)
        assert pushed.outcome == ps_pb2.PushReply.APPLIED and pushed.version == 1

        pulled = list(stub.Pull(ps_pb2.PullRequest(worker_id=0, clock=2), timeout=TIMEOUT, metadata=metadata))
        values = np.frombuffer(b"".join(c.data for c in pulled), dtype="<f4")
        np.testing.assert_array_equal(values, np.full(6, -1.0))  # zeros - 0.5 * 2

        stats = msgpack.unpackb(stub.Stats(ps_pb2.StatsRequest(), timeout=TIMEOUT, metadata=metadata).msgpack,
                                strict_map_key=False)
        assert stats["pushes_applied"] == 1 and stats["samples"] == {0: 8}

        with pytest.raises(grpc.RpcError) as info:
            stub.Stats(ps_pb2.StatsRequest(), timeout=TIMEOUT, metadata=(("authorization", "Bearer wrong"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    proc.terminate()
    assert proc.wait(timeout=TIMEOUT) == 0
    assert "stopped" in proc.stdout.read()


def test_psctl_serve_rejects_a_bad_setting_before_binding(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rayps", "serve", "--set", "consistency.mode=fastest"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "mode ('fastest') must be one of asp, ssp, bsp" in proc.stderr
    assert not (tmp_path / "psctl-serve.token").exists()

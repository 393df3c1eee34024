"""A live gRPC parameter server on 127.0.0.1 and a client built from ps.proto alone, for the tests/test_grpc_*.py files.

A real ``ParameterShard`` is served by ``start_grpc_server`` on an event loop
thread; clients are ``protos.ps_pb2_grpc.ParameterServerStub`` on a plain
channel with the bearer token as metadata and a deadline on every call.
Test modules load the fixtures with ``pytest_plugins = ["tests.grpc_fixtures"]``
and import the constants and helpers by name.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass

import grpc
import msgpack
import numpy as np
import pytest

from rayps.protos import ps_pb2, ps_pb2_grpc
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.transport.grpc_security import TLSConfig
from rayps.ps.transport.grpc_server import GrpcShardServer, start_grpc_server
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.shard import ParameterShard

TOKEN = "tok-" + secrets.token_urlsafe(24)
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SIZE = 1000
CHUNK_VALUES = 250  # a tensor of SIZE crosses in 4 chunks, both ways
TIMEOUT = 5.0  # every call's deadline: a bug fails a test, never hangs the suite
PUSH = "/rayps.v1.ParameterServer/Push"
PULL = "/rayps.v1.ParameterServer/Pull"
REGISTER = "/rayps.v1.ParameterServer/Register"
APPLIED, DUPLICATE = ps_pb2.PushReply.APPLIED, ps_pb2.PushReply.DUPLICATE
Code = grpc.StatusCode


# ---- a live server ---------------------------------------------------------------------


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-test-server", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@dataclass
class Served:
    shard: ParameterShard
    address: str
    port: int
    server: GrpcShardServer | None = None


@pytest.fixture
def loop_thread():
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def serve(loop_thread):
    """serve(mode=..., staleness=..., tls=..., buffers=N, tables=...) -> Served; every server stops at teardown.

    ``buffers``: the shard also holds N model-buffer values (float64, initially 0); ``tables``: its sparse
    tables (TableConfig), the shard being the only one.
    """
    servers = []

    def start(mode: str = "asp", staleness: int = 0, tls: TLSConfig | None = None, token: str = TOKEN,
              buffers: int = 0, tables: tuple = ()) -> Served:
        shard = ParameterShard(0, np.zeros(SIZE, np.float32), [0, 1], OptimizerConfig(name="sgd", lr=0.5),
                               ScheduleConfig(), ConsistencyConfig(mode=mode, staleness=staleness),
                               init_buffers=np.zeros(buffers) if buffers else None, tables=tables)
        server = loop_thread.run(start_grpc_server(shard, token, "127.0.0.1", 0, tls, chunk_bytes=CHUNK_VALUES * 4))
        servers.append(server)
        host, port = server.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        return Served(shard, server.address, int(port), server)

    yield start
    for server in servers:
        loop_thread.run(server.stop(0.5))


@pytest.fixture
def channels():
    """channels(address, secure=creds, **options) -> grpc.Channel; all closed at teardown."""
    opened = []

    def open_(address: str, credentials: grpc.ChannelCredentials | None = None, options=()) -> grpc.Channel:
        channel = (grpc.secure_channel(address, credentials, options=list(options)) if credentials
                   else grpc.insecure_channel(address, options=list(options)))
        opened.append(channel)
        return channel

    yield open_
    for channel in opened:
        channel.close()


@pytest.fixture
def server(serve):
    return serve()


@pytest.fixture
def channel(server, channels):
    return channels(server.address)


@pytest.fixture
def stub(channel):
    return ps_pb2_grpc.ParameterServerStub(channel)


# ---- what a client built from the proto alone does ---------------------------------


def gradient(values, worker_id: int, clock: int, pulled_version: int = 0, chunk_values: int = CHUNK_VALUES,
             **overrides) -> list[ps_pb2.TensorChunk]:
    """A push, cut into TensorChunks by hand: header on the first chunk, ``last`` on the final one."""
    data = np.asarray(values, dtype="<f4").reshape(-1)
    out = []
    for lo in range(0, data.size, chunk_values):
        hi = min(data.size, lo + chunk_values)
        fields = dict(name="dense", dtype="float32", shape=[data.size], offset=lo, data=data[lo:hi].tobytes(),
                      last=hi == data.size)
        if lo == 0:
            fields.update(worker_id=worker_id, clock=clock, pulled_version=pulled_version, num_samples=8, loss=1.0)
        out.append(ps_pb2.TensorChunk(**fields))
    for i, changes in overrides.items():  # chunk index -> fields to change
        for key, value in changes.items():
            if key == "shape":
                del out[int(i[1:])].shape[:]
                out[int(i[1:])].shape.extend(value)
            else:
                setattr(out[int(i[1:])], key, value)
    return out


def push(stub, chunks, timeout: float = TIMEOUT, metadata=AUTH) -> ps_pb2.PushReply:
    return stub.Push(iter(chunks), timeout=timeout, metadata=metadata)


def pull(stub, worker_id: int = 0, clock: int = 0, timeout: float = TIMEOUT) -> tuple[np.ndarray, int]:
    """The parameters and their version, reassembled from the streamed chunks."""
    params = np.full(SIZE, np.nan, np.float32)
    version = None
    replies = list(stub.Pull(ps_pb2.PullRequest(worker_id=worker_id, clock=clock), timeout=timeout, metadata=AUTH))
    assert replies[-1].last and not any(c.last for c in replies[:-1])
    for chunk in replies:
        assert (chunk.name, chunk.dtype, list(chunk.shape)) == ("dense", "float32", [SIZE])
        if chunk.offset == 0:
            version = chunk.version
        values = np.frombuffer(chunk.data, dtype="<f4")
        params[chunk.offset:chunk.offset + values.size] = values
    return params, version


def stats(stub) -> dict:
    reply = stub.Stats(ps_pb2.StatsRequest(), timeout=TIMEOUT, metadata=AUTH)
    return msgpack.unpackb(reply.msgpack, strict_map_key=False)


def raw(channel, method: str, kind: str = "stream_unary"):
    """A call on ``method`` that sends the given bytes as they are (no serializer)."""
    return getattr(channel, kind)(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def assert_params(stub, value: float, version: int) -> None:
    params, got_version = pull(stub)
    assert got_version == version
    assert (params == np.float32(value)).all(), f"expected all {value}, got {np.unique(params)}"


def buffer_chunks(values, dtype: str = "<f8", chunk_values: int = 3) -> list[ps_pb2.TensorChunk]:
    """Model buffers as the TensorChunks that follow a push's gradient (tensor "buffers", float64)."""
    data = np.asarray(values, dtype=dtype).reshape(-1)
    name = {"<f8": "float64", "<f4": "float32"}[dtype]
    return [ps_pb2.TensorChunk(name="buffers", dtype=name, shape=[data.size], offset=lo,
                               data=data[lo:lo + chunk_values].tobytes(), last=lo + chunk_values >= data.size)
            for lo in range(0, data.size, chunk_values)]

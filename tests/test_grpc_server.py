"""The gRPC transport against a live server on 127.0.0.1, driven with the generated stubs only.

A real ``ParameterShard`` is served by ``start_grpc_server`` on an event loop
thread; clients are ``protos.ps_pb2_grpc.ParameterServerStub`` on a plain
channel with the bearer token as metadata and a deadline on every call, so
these tests also show that a client needs nothing but ps.proto. Expected
status codes are the ones the proto's comments promise.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import msgpack
import numpy as np
import pytest

from protos import ps_pb2, ps_pb2_grpc
from protos.codec import MAX_MESSAGE_BYTES, encode_chunks
from ps.consistency import ConsistencyConfig, UnknownWorkerError
from ps.grpc_client import GrpcEndpoints, GrpcShardClient, TransportError
from ps.grpc_security import TLSConfig, TokenAuth
from ps.grpc_server import GrpcShardServer, start_grpc_server
from ps.optimizers import OptimizerConfig
from ps.partition import ShardRange
from ps.schedules import ScheduleConfig
from ps.shard import ParameterShard

pytestmark = pytest.mark.timeout(60)

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
    """serve(mode=..., staleness=..., tls=...) -> Served; every server stops at teardown."""
    servers = []

    def start(mode: str = "asp", staleness: int = 0, tls: TLSConfig | None = None, token: str = TOKEN) -> Served:
        shard = ParameterShard(0, np.zeros(SIZE, np.float32), [0, 1], OptimizerConfig(name="sgd", lr=0.5),
                               ScheduleConfig(), ConsistencyConfig(mode=mode, staleness=staleness))
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


# ---- the bearer token ------------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer not-the-token"),),
                                      (("authorization", TOKEN),)], ids=["none", "wrong", "without_bearer"])
def test_call_without_the_right_token_is_unauthenticated(metadata, stub):
    for call in (lambda: stub.Register(ps_pb2.RegisterRequest(worker_id=0), timeout=TIMEOUT, metadata=metadata),
                 lambda: push(stub, gradient(np.ones(SIZE), 0, 1), metadata=metadata),
                 lambda: list(stub.Pull(ps_pb2.PullRequest(worker_id=0), timeout=TIMEOUT, metadata=metadata))):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == Code.UNAUTHENTICATED
    assert_params(stub, 0.0, 0)
    assert stats(stub)["rejected"] == {"unauthenticated": 3}


def test_the_right_token_is_accepted(stub):
    reply = stub.Register(ps_pb2.RegisterRequest(worker_id=0), timeout=TIMEOUT, metadata=AUTH)
    assert reply.protocol == 1


def test_token_never_appears_in_logs_or_reprs(serve, channels, caplog):
    with caplog.at_level(logging.DEBUG):
        served = serve()
        stub = ps_pb2_grpc.ParameterServerStub(channels(served.address))
        push(stub, gradient(np.ones(SIZE), 0, 1))
        pull(stub)
        for bad in (gradient(np.ones(SIZE), 0, 2, c0={"dtype": "float64"}), gradient(np.ones(SIZE), 5, 1)):
            with pytest.raises(grpc.RpcError):
                push(stub, bad)
        with pytest.raises(grpc.RpcError):
            stub.Stats(ps_pb2.StatsRequest(), timeout=TIMEOUT, metadata=(("authorization", f"Bearer {TOKEN}x"),))
    assert "serves gRPC on" in caplog.text  # the server did log, at DEBUG and up
    assert TOKEN not in caplog.text
    assert not any(TOKEN in record.getMessage() for record in caplog.records)
    assert TOKEN not in repr(TokenAuth(TOKEN)) and TOKEN not in str(TokenAuth(TOKEN))
    assert TOKEN not in repr(GrpcEndpoints(("127.0.0.1:1",), TOKEN))


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


# ---- mTLS ------------------------------------------------------------------------


def _pki(tmp_path: Path) -> dict[str, str]:
    """A CA, a server cert for 127.0.0.1 and a client cert it signed, and an unrelated CA with its own client."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths = {}

    def write(name: str, key, cert) -> None:
        (tmp_path / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[name] = str(tmp_path / f"{name}.pem")
        paths[f"{name}_key"] = str(tmp_path / f"{name}.key")

    def issue(common_name: str, signer=None, ca: bool = False, usage=None, ip: str | None = None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        issuer_cert, issuer_key = signer if signer else (None, key)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer_cert.subject if issuer_cert else subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        return key, builder.sign(issuer_key, hashes.SHA256())

    ca_key, ca_cert = issue("test ca", ca=True)
    write("ca", ca_key, ca_cert)
    write("server", *issue("ps shard", (ca_cert, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1"))
    write("client", *issue("worker", (ca_cert, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    other_key, other_cert = issue("other ca", ca=True)
    write("other_ca", other_key, other_cert)
    write("other_client", *issue("intruder", (other_cert, other_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    return paths


@pytest.fixture
def tls_server(serve, tmp_path):
    pki = _pki(tmp_path)
    served = serve(tls=TLSConfig(ca=pki["ca"], server_cert=pki["server"], server_key=pki["server_key"]))
    return served, pki


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _register(channel, timeout: float = TIMEOUT) -> ps_pb2.RegisterReply:
    return ps_pb2_grpc.ParameterServerStub(channel).Register(
        ps_pb2.RegisterRequest(worker_id=0), timeout=timeout, metadata=AUTH)


def test_mtls_client_with_a_cert_from_the_ca_is_served(tls_server, channels):
    served, pki = tls_server
    creds = grpc.ssl_channel_credentials(_read(pki["ca"]), _read(pki["client_key"]), _read(pki["client"]))
    stub = ps_pb2_grpc.ParameterServerStub(channels(served.address, creds))
    assert stub.Register(ps_pb2.RegisterRequest(worker_id=0), timeout=TIMEOUT, metadata=AUTH).protocol == 1
    assert push(stub, gradient(np.ones(SIZE), 0, 1)).outcome == APPLIED
    assert_params(stub, -0.5, 1)


@pytest.mark.parametrize("who", ["no_client_cert", "cert_from_another_ca", "plaintext"])
def test_mtls_refuses_a_client_without_a_cert_from_the_ca(who, tls_server, channels):
    served, pki = tls_server
    ca = _read(pki["ca"])
    if who == "plaintext":
        channel = channels(served.address)
    elif who == "no_client_cert":
        channel = channels(served.address, grpc.ssl_channel_credentials(ca))
    else:
        channel = channels(served.address, grpc.ssl_channel_credentials(
            ca, _read(pki["other_client_key"]), _read(pki["other_client"])))
    with pytest.raises(grpc.RpcError) as caught:
        _register(channel, timeout=2.0)
    assert caught.value.code() == Code.UNAVAILABLE

    good = grpc.ssl_channel_credentials(ca, _read(pki["client_key"]), _read(pki["client"]))
    assert _register(channels(served.address, good)).protocol == 1  # and the server still serves the right one
    assert served.shard.version == 0


def test_grpc_shard_client_trains_over_mtls(tls_server, loop_thread):
    served, pki = tls_server
    tls = TLSConfig(ca=pki["ca"], client_cert=pki["client"], client_key=pki["client_key"])
    client = GrpcShardClient(0, [served.address], [ShardRange(0, 0, SIZE)], TOKEN, tls, timeout_s=TIMEOUT,
                             chunk_bytes=CHUNK_VALUES * 4)
    try:
        params = np.full(SIZE, np.nan, np.float32)
        client.register(params)
        assert (params == 0.0).all()
        client.push_pull(1, np.ones(SIZE, np.float32), params, num_samples=8, loss=2.0)
        assert (params == -0.5).all()
        client.push_pull(2, np.full(SIZE, 2.0, np.float32), params, num_samples=8, loss=1.0)
        assert (params == -1.5).all()
        (counters,) = client.stats()
        assert (counters["pushes_applied"], counters["version"], counters["clocks"]) == (2, 2, {0: 2, 1: 0})
    finally:
        client.finish()
    assert loop_thread.run(served.shard.stats())["clocks"] == {1: 0}  # finish: worker 0 left the clock table


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
        shard_params, version = loop_thread.run(served.shard.pull())
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
        expected, _ = loop_thread.run(waits.shard.pull())
        assert np.array_equal(params[SIZE:], expected)
    finally:
        client.finish()


# ---- ParameterShard.pull_for(take=...): how the servicer reads parameters out --------

SMALL = np.array([1.0, -2.0, 0.5, 4.0], np.float32)


def _small_shard(mode: str = "ssp", staleness: int = 0) -> ParameterShard:
    return ParameterShard(0, SMALL, [0, 1], OptimizerConfig(name="sgd", lr=0.5), ScheduleConfig(),
                          ConsistencyConfig(mode=mode, staleness=staleness))


def _push(shard: ParameterShard, worker: int, clock: int, value: float) -> None:
    shard.push(worker, clock, np.full(SMALL.size, value, np.float32), 0, 1, 0.0)


def test_pull_for_hands_take_the_parameters_at_the_version_it_returns():
    async def scenario():
        shard = _small_shard("ssp", staleness=0)
        seen = []

        def take(params):
            seen.append((params.copy(), shard.version))
            return "taken"

        assert await shard.pull_for(0, 0, take=take) == ("taken", 0)  # clock 0: no wait
        _push(shard, 0, 1, 1.0)
        waiting = asyncio.create_task(shard.pull_for(0, 2, take=take))  # iteration 2 waits for worker 1
        await asyncio.sleep(0.05)
        assert not waiting.done() and len(seen) == 1
        _push(shard, 1, 1, 2.0)
        result = await asyncio.wait_for(waiting, TIMEOUT)
        _push(shard, 0, 2, 4.0)  # a later update changes nothing taken before it
        return result, seen

    result, seen = asyncio.run(scenario())
    assert result == ("taken", 2)
    assert [version for _, version in seen] == [0, 2]  # once per pull, at the version returned
    np.testing.assert_array_equal(seen[0][0], SMALL)
    np.testing.assert_array_equal(seen[1][0], SMALL - 0.5 * 1.0 - 0.5 * 2.0)


def test_pull_for_with_the_encoder_as_take_sends_the_parameters_of_its_version():
    async def scenario():
        shard = _small_shard("asp")
        _push(shard, 0, 1, 1.0)
        encoded, version = await shard.pull_for(0, 2, take=lambda params: list(encode_chunks("dense", params, 8)))
        _push(shard, 1, 1, 2.0)
        return encoded, version

    encoded, version = asyncio.run(scenario())
    assert version == 1 and len(encoded) == 2
    sent = b"".join(ps_pb2.TensorChunk.FromString(b).data for b in encoded)
    assert np.frombuffer(sent, "<f4").tobytes() == (SMALL - 0.5).tobytes()


def test_pull_for_by_default_returns_a_copy_that_later_updates_do_not_change():
    async def scenario():
        shard = _small_shard("asp")
        first = await shard.pull_for(0, 0)
        _push(shard, 0, 1, 1.0)
        second = await shard.pull_for(0, 2)
        _push(shard, 1, 1, 2.0)
        return first, second, await shard.pull()

    (p0, v0), (p1, v1), (now, v_now) = asyncio.run(scenario())
    assert (v0, v1, v_now) == (0, 1, 2)
    np.testing.assert_array_equal(p0, SMALL)
    np.testing.assert_array_equal(p1, SMALL - 0.5)
    np.testing.assert_array_equal(now, SMALL - 1.5)


def test_pull_for_an_unknown_worker_raises_before_take_is_called():
    seen = []
    with pytest.raises(UnknownWorkerError):
        asyncio.run(_small_shard().pull_for(9, 1, take=seen.append))
    assert seen == []

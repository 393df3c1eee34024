"""Who the gRPC server serves: the bearer token, kept out of logs, and mTLS with certificates made per test."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import pickle
from pathlib import Path

import grpc
import numpy as np
import pytest

from rayps.protos import ps_pb2, ps_pb2_grpc
from rayps.ps.transport.grpc_client import GrpcEndpoints, GrpcShardClient
from rayps.errors import ConfigError
from rayps.launcher.job.transports import wire_keys
from rayps.ps.transport.grpc_security import GrpcConfig, TLSConfig, TokenAuth
from rayps.ps.transport.job_ca import SHARD_NAME, JobAuthority
from tests import capture
from rayps.ps.core.partition import ShardRange
from tests.grpc_fixtures import (APPLIED, AUTH, CHUNK_VALUES, SIZE, TIMEOUT, TOKEN, Code, assert_params, gradient,
                                 pull, push, stats)

pytest_plugins = ["tests.grpc_fixtures"]
pytestmark = pytest.mark.timeout(60)


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


# ---- the job's own authority: mTLS with nothing configured ---------------------------------


SHARD_OPTIONS = (("grpc.ssl_target_name_override", SHARD_NAME),)


@pytest.fixture
def job_ca_server(serve):
    authority = JobAuthority("test")
    return serve(tls=authority.shard_keys(0)), authority


def test_a_worker_with_the_jobs_certificate_trains_over_mtls(job_ca_server, loop_thread):
    served, authority = job_ca_server
    client = GrpcShardClient(0, [served.address], [ShardRange(0, 0, SIZE)], TOKEN, authority.worker_keys(0),
                             timeout_s=TIMEOUT, chunk_bytes=CHUNK_VALUES * 4)
    try:
        params = np.full(SIZE, np.nan, np.float32)
        client.register(params)
        client.push_pull(1, np.ones(SIZE, np.float32), params, num_samples=8, loss=2.0)
        assert (params == -0.5).all()
    finally:
        client.finish()


@pytest.mark.parametrize("who", ["plaintext_with_token", "server_verified_no_cert", "another_jobs_cert",
                                 "a_shard_cert_as_client"])
def test_the_jobs_shards_refuse_at_the_handshake_anyone_without_a_worker_certificate_of_the_job(
        who, job_ca_server, channels):
    served, authority = job_ca_server
    other = JobAuthority("another job")
    if who == "plaintext_with_token":
        channel = channels(served.address)
    elif who == "server_verified_no_cert":
        channel = channels(served.address, grpc.ssl_channel_credentials(authority.ca), SHARD_OPTIONS)
    elif who == "another_jobs_cert":
        keys = other.worker_keys(0)
        channel = channels(served.address, grpc.ssl_channel_credentials(authority.ca, keys.key, keys.cert),
                           SHARD_OPTIONS)
    else:  # a certificate of this job, but for serving, not for a client (extended key usage)
        keys = authority.shard_keys(1)
        channel = channels(served.address, grpc.ssl_channel_credentials(authority.ca, keys.key, keys.cert),
                           SHARD_OPTIONS)
    with pytest.raises(grpc.RpcError) as caught:
        _register(channel, timeout=2.0)
    assert caught.value.code() == Code.UNAVAILABLE
    assert served.shard.version == 0
    keys = authority.worker_keys(0)
    good = channels(served.address, keys.channel_credentials(), SHARD_OPTIONS)
    assert _register(good).protocol == 1  # the server serves on, to the job's own workers


def test_a_worker_certificate_speaks_only_for_its_own_worker_life(job_ca_server, channels, loop_thread):
    """A certificate of the job names one worker life: whoever holds worker 1's (a worker, or a thief) is
    refused when it speaks for worker 0 or for a later life of worker 1, on every call that names one, with
    nothing changed and each refusal counted; its own life is served as before."""
    served, authority = job_ca_server
    one = ps_pb2_grpc.ParameterServerStub(
        channels(served.address, authority.worker_keys(1).channel_credentials(), SHARD_OPTIONS))
    P = ps_pb2
    impostures = {
        "register as worker 0": lambda: one.Register(P.RegisterRequest(worker_id=0), timeout=TIMEOUT, metadata=AUTH),
        "register as its next life": lambda: one.Register(P.RegisterRequest(worker_id=1, incarnation=1),
                                                          timeout=TIMEOUT, metadata=AUTH),
        "push as worker 0": lambda: push(one, gradient(np.ones(SIZE), 0, 1)),
        "push as its next life": lambda: push(one, gradient(np.ones(SIZE), 1, 1, c0={"incarnation": 1})),
        "step as worker 0": lambda: list(one.Step(iter(gradient(np.ones(SIZE), 0, 1)), timeout=TIMEOUT,
                                                  metadata=AUTH)),
        "pull as worker 0": lambda: list(one.Pull(P.PullRequest(worker_id=0), timeout=TIMEOUT, metadata=AUTH)),
        "leave as worker 0": lambda: one.AdvanceClock(P.ClockRequest(worker_id=0, leave=True), timeout=TIMEOUT,
                                                      metadata=AUTH),
    }
    before = loop_thread.run(served.shard.stats())
    for what, call in impostures.items():
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == Code.PERMISSION_DENIED, what
        assert "worker 1 incarnation 0's" in caught.value.details(), what
    after = loop_thread.run(served.shard.stats())
    assert after["rejected"] == {"identity": len(impostures)}
    assert {k for k in after if after[k] != before[k]} <= {"rejected", "uptime_s", "rss_bytes"}
    assert one.Register(P.RegisterRequest(worker_id=1), timeout=TIMEOUT, metadata=AUTH).protocol == 1
    assert push(one, gradient(np.ones(SIZE), 1, 1)).outcome == APPLIED


def test_a_worker_refuses_a_shard_whose_certificate_another_authority_signed(serve, channels):
    impostor = JobAuthority("impostor")
    served = serve(tls=impostor.shard_keys(0))  # serves mTLS, but not with this job's CA
    keys = JobAuthority("job").worker_keys(0)
    with pytest.raises(grpc.RpcError) as caught:
        _register(channels(served.address, keys.channel_credentials(), SHARD_OPTIONS), timeout=2.0)
    assert caught.value.code() == Code.UNAVAILABLE


def test_keys_never_appear_in_reprs():
    keys = JobAuthority("job").worker_keys(3, 1)
    assert keys.subject == "rayps job worker 3.1"
    assert b"PRIVATE KEY" in keys.key and "PRIVATE" not in repr(keys)
    assert "PRIVATE" not in repr(GrpcEndpoints(("127.0.0.1:1",), TOKEN, keys))


@pytest.mark.skipif(capture.available() is not None, reason=str(capture.available()))
@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "mtls"])
def test_a_capture_of_the_link_shows_gradients_and_token_only_in_plaintext(secure, serve, loop_thread):
    """What someone reading the wire sees. Plaintext is the control: the same capture finds the token and a
    gradient's bytes there, so their absence under mTLS is the encryption's doing, not the capture's."""
    authority = JobAuthority("test")
    token = "token-" + "x7Q" * 12
    gradient_values = np.full(SIZE, 1234.5678, np.float32)  # a value whose bytes are easy to recognize
    with capture.LoopbackCapture() as seen:
        served = serve(tls=authority.shard_keys(0) if secure else None, token=token)
        client = GrpcShardClient(0, [served.address], [ShardRange(0, 0, SIZE)], token,
                                 authority.worker_keys(0) if secure else None, timeout_s=TIMEOUT,
                                 chunk_bytes=CHUNK_VALUES * 4)
        try:
            params = np.zeros(SIZE, np.float32)
            client.register(params)
            client.push_pull(1, gradient_values, params, num_samples=8, loss=2.0)
        finally:
            client.finish()
        seen.stop()
    assert (params == np.float32(-0.5) * gradient_values).all()
    wire = seen.on_port(served.port)
    assert len(wire) > SIZE * 4  # the gradient crossed, one way or the other
    evidence = {"token": token.encode() in wire, "tensor chunk": capture.TENSOR_CHUNK_PLAINTEXT in wire,
                "gradient bytes": gradient_values[:4].tobytes() in wire}
    if secure:
        assert not any(evidence.values()), evidence
        assert wire.count(b"\x17\x03\x03") > 0  # TLS application-data records
    else:
        assert evidence == {"token": evidence["token"], "tensor chunk": True, "gradient bytes": True}


# ---- which jobs get which wire ---------------------------------------------------------------

ONE_NODE, TWO_NODES = [{"Alive": True}, {"Alive": False}], [{"Alive": True}, {"Alive": True}]


@pytest.mark.parametrize("grpc_config, nodes, kind", [
    (GrpcConfig(), ONE_NODE, "plaintext"),  # loopback: never leaves the machine, like shared memory
    (GrpcConfig(host="127.0.0.1"), ONE_NODE, "plaintext"),
    (GrpcConfig(), TWO_NODES, "mtls (job CA)"),
    (GrpcConfig(host="127.0.0.1"), TWO_NODES, "mtls (job CA)"),  # other nodes: other machines, whatever the name
    (GrpcConfig(host="0.0.0.0"), ONE_NODE, "mtls (job CA)"),  # bound beyond loopback: reachable from outside
], ids=["one_node", "one_node_loopback", "two_nodes", "two_nodes_loopback_name", "one_node_all_interfaces"])
def test_grpc_is_mutual_tls_by_default_wherever_it_can_leave_the_machine(grpc_config, nodes, kind):
    assert wire_keys(grpc_config, nodes).kind == kind


def test_plaintext_across_nodes_only_by_name_and_with_a_warning():
    with pytest.warns(UserWarning, match="unencrypted"):
        assert wire_keys(GrpcConfig(plaintext=True), TWO_NODES).kind == "plaintext"
    with pytest.raises(ConfigError, match="contradict"):
        GrpcConfig(plaintext=True, tls=TLSConfig(ca=__file__))


def test_each_worker_incarnation_gets_its_own_certificate_and_no_spec_carries_the_ca_key():
    keys = wire_keys(GrpcConfig(), TWO_NODES, job="j")
    spec = GrpcEndpoints(("127.0.0.1:1",), TOKEN, keys.worker(0))
    first, again, other = (keys.for_worker(spec, w, i).tls for w, i in ((1, 0), (1, 1), (2, 0)))
    assert len({first.cert, again.cert, other.cert}) == 3
    assert (first.subject, again.subject, other.subject) == ("rayps j worker 1.0", "rayps j worker 1.1",
                                                            "rayps j worker 2.0")
    assert first.ca == keys.authority.ca
    from cryptography.hazmat.primitives import serialization
    ca_key = keys.authority._key
    ca_pem = ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    sent = pickle.dumps(keys.for_worker(spec, 1, 0))  # what a worker's actor receives
    assert ca_pem.splitlines()[1] not in sent  # the CA's key, in the form a key file would hold it
    assert ca_key.private_numbers().private_value.to_bytes(32, "big") not in sent  # or raw

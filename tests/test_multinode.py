"""psctl submit against a real three-node Ray cluster on this machine (ray.cluster_utils).

The cluster runs in this process without joining it (connect=False), so a
test session's own local Ray is left alone. Nodes: the head and one more
carry ``ps_server: 1``; the third carries ``ps_worker: 2``. Token auth is
on, and everything binds 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rayps.launcher.cluster.auth import Token, find_token
from rayps.launcher.cli import main
from rayps.errors import ClusterError
from rayps.launcher.cluster.jobs import Jobs
from tests import capture

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    import ray._common.utils
    import ray._private.utils
    import ray.experimental.internal_kv as internal_kv
    from ray._raylet import AuthenticationTokenLoader, Config

    with pytest.MonkeyPatch.context() as env:
        # cluster_utils assumes it owns the process and the machine: it points this process's
        # internal KV client at the new cluster (and clears it at shutdown), and writes (then
        # deletes) /tmp/ray/ray_current_cluster. Keep the session's own Ray, and other Ray
        # instances on the machine, as they were.
        env.setattr(internal_kv, "global_gcs_client", internal_kv.global_gcs_client)
        env.setattr(internal_kv, "_initialized", internal_kv._initialized)
        write_ray_address = ray._private.utils.write_ray_address
        env.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
        env.setattr(ray._common.utils, "reset_ray_address", lambda *args, **kwargs: None)
        # Every process of the cluster reads these as it starts: token auth on; and, as Ray does on
        # macOS, 127.0.0.1 as the node address, so nothing binds beyond loopback and Ray's clients do
        # not rewrite 127.0.0.1 to the machine's outward address (which nothing listens on).
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        env.delenv("RAY_ADDRESS", raising=False)
        own_token = find_token() is None
        if own_token:  # no token on this machine: use one that lives only as long as the cluster
            env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
            AuthenticationTokenLoader.instance().reset_cache()
        Config.initialize("")  # this process's GCS client (cluster_utils waits for nodes with it) sends it too
        c = temp = None
        try:
            failures = []
            for _ in range(2):  # a dashboard that never answers is Ray's start failing: start once more
                temp = tempfile.mkdtemp(prefix="rayps-mn-", dir="/tmp")  # short: Ray's unix sockets live here
                c, nodes = _start_cluster(temp, write_ray_address)
                why = _dashboard_fails(f"http://{c.webui_url}", temp)
                if why is None:
                    break
                failures.append(why)
                c.shutdown()
                shutil.rmtree(temp, ignore_errors=True)
                c = None
            else:
                raise RuntimeError("the test cluster's dashboard never answered:\n" + "\n\n".join(failures))
            head, server, worker = nodes
            yield {"address": f"http://{c.webui_url}", "ps_server": {head.node_id, server.node_id},
                   "ps_worker": {worker.node_id}}
        finally:
            if c is not None:
                c.shutdown()
                shutil.rmtree(temp, ignore_errors=True)
            env.undo()
            Config.initialize("")
            if own_token:
                AuthenticationTokenLoader.instance().reset_cache()


def _start_cluster(temp: str, write_ray_address):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=False, connect=False)
    node = dict(num_cpus=1, node_ip_address="127.0.0.1")
    head = c.add_node(**node, resources={"ps_server": 1}, temp_dir=temp, include_dashboard=True,
                      dashboard_host="127.0.0.1", dashboard_port=0, dashboard_agent_listen_port=0)
    # A submitted job's driver finds its cluster through "auto": the address file in the
    # head's temp dir. Without it, "auto" takes whichever Ray instance on the machine it
    # sees first (another test's, say); so write it, there and only there.
    write_ray_address(head.gcs_address, temp)
    server = c.add_node(**node, resources={"ps_server": 1})
    worker = c.add_node(**node, resources={"ps_worker": 2})
    c.wait_for_nodes()
    return c, (head, server, worker)


def _dashboard_fails(address: str, temp: str, within_s: float = 60) -> str | None:
    """None once the Jobs API answers; else what the dashboard's own logs end with."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            Jobs(address).list()
            return None
        except ClusterError as e:
            if time.monotonic() > deadline:
                logs = sorted(Path(temp).glob("session_*/logs/dashboard.*"))
                tails = [f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in logs if p.suffix in (".log", ".err", ".out")]
                return f"{address}: {e}\n" + "\n".join(tails)
        time.sleep(1)


def test_the_cluster_refuses_requests_without_its_token(cluster):
    import requests

    assert requests.get(f"{cluster['address']}/api/jobs/", timeout=10).status_code == 401
    with pytest.raises(ClusterError, match="rejected the Ray auth token from a wrong token"):
        Jobs(cluster["address"], token=Token("0" * 64, "a wrong token")).list()


def test_status_logs_and_stop_manage_a_running_job(cluster, tmp_path, capsys):
    address = cluster["address"]
    (tmp_path / "app").mkdir()
    jobs = Jobs(address)
    job_id = jobs.submit(f"{sys.executable} -c \"import time; print('hello', flush=True); time.sleep(120)\"",
                         tmp_path / "app")
    deadline = time.monotonic() + 60
    while "hello" not in jobs.logs(job_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    capsys.readouterr()
    assert main(["logs", job_id, "--address", address]) == 0
    assert "hello" in capsys.readouterr().out
    assert main(["stop", job_id, "--address", address]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: STOPPED"
    assert main(["status", "--address", address]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(job_id))
    assert row.split()[1] == "STOPPED"
    assert main(["logs", job_id, "--address", address, "--follow"]) == 1  # follows to the end: not SUCCEEDED
    followed = capsys.readouterr()
    assert "hello" in followed.out and f"job {job_id} STOPPED" in followed.err


def test_a_submitted_job_runs_on_the_nodes_the_config_names_and_psctl_scale_removes_a_worker_while_it_runs(
        cluster, loopback, tmp_path, capsys):
    """One submission for three claims: where the actors are placed, scaling a job that runs, and the wire
    between its nodes: mutual TLS with nothing configured (a capture of the link, and a stranger refused)."""
    out = tmp_path / "run"
    address = cluster["address"]
    began = time.monotonic()
    seen = loopback
    assert main(["submit", str(ROOT / "cluster.yaml"), "--address", address, "--no-wait", "--output", str(out),
                 "--set", "epochs=30", "--set", "servers=2", "--set", "workers=2",
                 "--set", "server_resources={ps_server: 1}", "--set", "worker_resources={ps_worker: 1}",
                 # slowed, so it still runs when the scale request (itself a short Ray job) reaches it
                 "--set", "debug.slow_workers={0: 0.03, 1: 0.03}", "--set", "eval_every_s=0"]) == 0
    submitted = capsys.readouterr().out
    assert submitted.startswith("submitted raysubmit_"), submitted
    job_id = submitted.split()[1]
    jobs = Jobs(address)
    deadline = time.monotonic() + 120
    while "step" not in jobs.logs(job_id) and time.monotonic() < deadline:  # training under way
        assert jobs.status(job_id) in ("PENDING", "RUNNING"), jobs.logs(job_id)[-2000:]
        time.sleep(0.5)
    wire = re.search(r"gRPC \((.+?)\) on ([^\s,]+(?:, [^\s,]+)*)", jobs.logs(job_id))
    assert wire is not None and wire[1] == "mtls (job CA)", jobs.logs(job_id)[-2000:]
    shard_addresses = wire[2].split(", ")
    _assert_strangers_are_refused_at_the_handshake(shard_addresses)
    assert main(["scale", job_id, "--workers", "1", "--address", address]) == 0
    assert f"{job_id}: asked for 1 workers" in capsys.readouterr().out
    assert main(["logs", job_id, "--address", address, "--follow"]) == 0, capsys.readouterr().err
    followed = capsys.readouterr()
    assert f"run directory: {out}" in followed.out and f"job {job_id} SUCCEEDED" in followed.out, followed
    summary = json.loads((out / "summary.json").read_text())
    placement = summary["placement"]
    # One ps_server unit per node and one per shard: the two shards sit on the two server nodes.
    assert {placement[f"ps-shard-{i}"]["node_id"] for i in range(2)} == cluster["ps_server"]
    assert {placement[f"worker-{i}"]["node_id"] for i in range(2)} == cluster["ps_worker"]
    assert all(p["node_ip"] == "127.0.0.1" for p in placement.values())
    assert summary["servers"] == 2 and summary["workers"] == 2
    assert summary["test_accuracy"] > 0.5  # trained, not random (0.1)
    assert summary["workers_removed"] == 1
    assert summary["examples_per_epoch"] == {str(e): 1437 for e in range(30)}
    assert summary["transport"] == "grpc" and summary["wire"] == "mtls (job CA)"
    if seen is not None:  # what crossed the link to and from the shards: TLS records, never a tensor chunk
        seen.stop()
        for port in (int(a.rsplit(":", 1)[1]) for a in shard_addresses):
            link = seen.on_port(port)
            assert link.count(b"\x17\x03\x03") > 100, (port, len(link))  # TLS application data, many steps
            assert capture.TENSOR_CHUNK_PLAINTEXT not in link and b"float32" not in link
    print(f"submitted job took {time.monotonic() - began:.1f} s")


@pytest.fixture
def loopback():
    """A capture of the loopback link while the test runs; None where raw sockets are not allowed."""
    if capture.available() is not None:
        yield None
        return
    with capture.LoopbackCapture() as seen:
        yield seen


def _assert_strangers_are_refused_at_the_handshake(addresses: list[str]) -> None:
    """A plaintext client with a guessed token, and a client with another job's certificate: refused before
    any request (UNAVAILABLE: the TLS handshake fails), while the job's own workers train on."""
    import grpc

    from rayps.protos import ps_pb2, ps_pb2_grpc
    from rayps.ps.transport.job_ca import SHARD_NAME, JobAuthority

    stranger = JobAuthority("stranger").worker_keys(0)
    options = [("grpc.ssl_target_name_override", SHARD_NAME)]
    for address in addresses:
        for channel in (grpc.insecure_channel(address),
                        grpc.secure_channel(address, stranger.channel_credentials(), options)):
            with channel, pytest.raises(grpc.RpcError) as caught:
                ps_pb2_grpc.ParameterServerStub(channel).Stats(
                    ps_pb2.StatsRequest(), timeout=5, metadata=(("authorization", "Bearer guessed"),))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value

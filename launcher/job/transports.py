"""The wire between a job's workers and its shards: which transport, its servers started, served again.

``transport: auto`` is shared memory when the job has one node to run on and
gRPC across nodes. The shards serve it (ps/served.py) and the workers connect
through the spec returned here (ps/transport/contract.py). A restarted shard
serves again where it served, so the clients reconnect in place.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ...errors import ConfigError
from ...runtime import RAY, Runtime
from ...ps.transport.grpc_client import GrpcEndpoints
from ...ps.transport.grpc_security import GrpcConfig, new_token
from ...ps.transport.object_store import RayTransport
from ...ps.transport.shm_client import ShmEndpoints
from .config import JobConfig
from .throttle import ThrottledLink


def chosen_transport(config: JobConfig, nodes: list[dict]) -> str:
    """``auto``: shared memory when the job has one node to run on, gRPC streams across nodes."""
    if config.transport != "auto":
        return config.transport
    return "shm" if len([n for n in nodes if n.get("Alive")]) == 1 else "grpc"


def job_transport(config: JobConfig, shards, ranges, buffer_ranges, runtime: Runtime = RAY):
    """The transport spec every worker connects through (ps/transport/contract.py)."""
    spec = make_transport(chosen_transport(config, runtime.nodes()), shards, ranges, buffer_ranges,
                          config.workers, config.grpc, runtime)
    if isinstance(spec, GrpcEndpoints):  # gRPC pulls may come compressed (fp16, bf16): the clients decode
        spec = dataclasses.replace(spec, pull=config.compression.pull)
    return spec


def make_transport(name: str, shards, ranges, buffer_ranges, workers: int, grpc: GrpcConfig | None = None,
                   runtime: Runtime = RAY):
    """Have the shards serve transport ``name`` and return the spec workers connect through."""
    grpc = grpc or GrpcConfig()
    if name == "grpc":
        return _serve_grpc(grpc, shards, ranges, buffer_ranges, runtime)
    if name == "shm":
        token = new_token()
        placed = runtime.get([s.where.remote() for s in shards])
        directories = runtime.get([s.serve_shm.remote(token) for s in shards])
        return ShmEndpoints(tuple(directories), tuple(p["node_id"] for p in placed), token, ranges, buffer_ranges,
                            grpc.timeout_s)
    return RayTransport(tuple(shards), ranges, buffer_ranges, runtime=runtime)


def _serve_grpc(g: GrpcConfig, shards, ranges, buffer_ranges, runtime: Runtime) -> GrpcEndpoints:
    """Have every shard serve gRPC (port 0) and collect the addresses it bound."""
    host = g.host
    if host is None and len([n for n in runtime.nodes() if n.get("Alive")]) == 1:
        host = "127.0.0.1"  # one machine: stay on loopback
    token = new_token()  # one per job; it reaches the actors as arguments, never a log line
    addresses = runtime.get([s.serve_grpc.remote(token, host, g.tls, g.chunk_bytes) for s in shards])
    return GrpcEndpoints(tuple(addresses), token, g.tls, g.timeout_s, g.chunk_bytes, ranges, buffer_ranges)


def serve_again(transport, shards, grpc: GrpcConfig, runtime: Runtime = RAY) -> Callable[[int], None]:
    """How a restarted shard serves again where it served, so clients reconnect in place."""
    def serve(i: int) -> None:
        if isinstance(transport, GrpcEndpoints):
            host, port = transport.addresses[i].rsplit(":", 1)
            runtime.get(shards[i].serve_grpc.remote(transport.token, host.strip("[]"), grpc.tls, grpc.chunk_bytes,
                                                int(port)))
        elif isinstance(transport, ShmEndpoints):
            runtime.get(shards[i].serve_shm.remote(transport.token, transport.directories[i]))
    return serve


def stop_serving(shards, runtime: Runtime = RAY) -> None:
    """Ask every shard to close its servers and remove its shared memory; a dead one cannot, and is skipped."""
    done, _ = runtime.wait([s.stop_serving.remote() for s in shards], num_returns=len(shards), timeout=5.0)
    for ref in done:
        try:
            runtime.get(ref)
        except Exception:  # a dead shard's files go with its node's tmpfs; nothing more to do from here
            pass


def throttled(transport, mbit: float, latency_ms: float):
    """The job's gRPC endpoints behind one bandwidth-limited link (launcher/job/throttle.py), for benchmarks."""
    if not isinstance(transport, GrpcEndpoints):
        raise ConfigError(f"debug.link_mbit emulates a slow network for gRPC; this job's transport is"
                          f" {transport.name}: set transport: grpc")
    link = ThrottledLink(mbit, latency_ms)
    try:
        return link, dataclasses.replace(transport, addresses=tuple(link.proxy(a) for a in transport.addresses))
    except BaseException:
        link.close()
        raise

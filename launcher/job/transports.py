"""The wire between a job's workers and its shards: which transport, its servers started, served again.

``transport: auto`` is shared memory when the job has one node to run on and
gRPC across nodes. The shards serve it (ps/served.py) and the workers connect
through the spec returned here (ps/transport/contract.py). A restarted shard
serves again where it served, so the clients reconnect in place.

gRPC whose traffic can leave the machine is mutual TLS by default: the job's
own authority (ps/transport/job_ca.py) issues each shard and each worker
incarnation its keys (``WireKeys``). Plaintext there only when the job asks
for it by name (``grpc.plaintext: true``), with a warning; one node on
loopback stays plaintext, as shared memory does: its bytes never leave the
machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import warnings
from typing import Callable

from ...errors import ConfigError
from ...runtime import RAY, Runtime
from ...ps.transport.grpc_client import GrpcEndpoints
from ...ps.transport.grpc_security import GrpcConfig, TLSConfig, new_token
from ...ps.transport.job_ca import JobAuthority, TLSKeys
from ...ps.transport.mixed import NodeLocalEndpoints
from ...ps.transport.object_store import RayTransport
from ...ps.transport.shm_client import ShmEndpoints
from ...protos.shm_wire import SegmentPlace
from .config import JobConfig
from .throttle import ThrottledLink


def chosen_transport(config: JobConfig, nodes: list[dict]) -> str:
    """``auto``: shared memory when the job has one node to run on, gRPC streams across nodes."""
    if config.transport != "auto":
        return config.transport
    return "shm" if _one_node(nodes) else "grpc"


@dataclasses.dataclass(frozen=True)
class WireKeys:
    """Who holds which TLS keys on a job's gRPC wire: nobody (plaintext), the user's files, or the job's
    own authority (its CA key stays in the driver; each shard and worker incarnation gets its own)."""

    files: TLSConfig | None = None
    authority: JobAuthority | None = None

    @property
    def kind(self) -> str:
        """What the summary and the log say: ``mtls (job CA)``, ``mtls (files)`` or ``plaintext``."""
        return "mtls (job CA)" if self.authority else "mtls (files)" if self.files else "plaintext"

    def shard(self, shard_id: int) -> TLSConfig | TLSKeys | None:
        return self.authority.shard_keys(shard_id) if self.authority else self.files

    def worker(self, worker_id: int, incarnation: int = 0) -> TLSConfig | TLSKeys | None:
        return self.authority.worker_keys(worker_id, incarnation) if self.authority else self.files

    def for_worker(self, spec, worker_id: int, incarnation: int):
        """The spec one worker incarnation connects through: with its own certificate, where the job has
        an authority (a spec with the job CA's keys is never shared between workers)."""
        if self.authority is None:
            return spec
        if isinstance(spec, NodeLocalEndpoints):
            return dataclasses.replace(spec, grpc=self.for_worker(spec.grpc, worker_id, incarnation))
        if not isinstance(spec, GrpcEndpoints):
            return spec
        return dataclasses.replace(spec, tls=self.worker(worker_id, incarnation))


def _one_node(nodes: list[dict]) -> bool:
    """Whether the cluster has exactly one live node (Ray's ``nodes()`` rows)."""
    return len([n for n in nodes if n.get("Alive")]) == 1


def wire_keys(grpc: GrpcConfig, nodes: list[dict], job: str = "job") -> WireKeys:
    """mTLS wherever the traffic can leave the machine, unless asked for plaintext by name."""
    if grpc.tls is not None:
        return WireKeys(files=grpc.tls)
    if _stays_on_this_machine(grpc, nodes):
        return WireKeys()
    if grpc.plaintext:
        warnings.warn("grpc.plaintext: true: gradients, parameters and the job's bearer token cross the"
                      " network between nodes unencrypted; anyone who can read that traffic can push"
                      " gradients for the rest of the job", UserWarning, stacklevel=2)
        return WireKeys()
    return WireKeys(authority=JobAuthority(job))


def _stays_on_this_machine(grpc: GrpcConfig, nodes: list[dict]) -> bool:
    """One live node serving on a loopback address: no byte of the wire leaves the machine."""
    if not _one_node(nodes):
        return False
    if grpc.host is None:
        return True  # one node: _serve_grpc binds 127.0.0.1
    try:
        return ipaddress.ip_address(grpc.host.strip("[]")).is_loopback
    except ValueError:
        return grpc.host == "localhost"


def job_transport(config: JobConfig, shards, ranges, buffer_ranges, runtime: Runtime = RAY,
                  job: str = "job") -> tuple[object, WireKeys]:
    """The transport spec the workers connect through (ps/transport/contract.py), and the keys of its
    wire (``WireKeys.for_worker`` gives each worker its own)."""
    nodes = runtime.nodes()
    name = chosen_transport(config, nodes)
    keys = wire_keys(config.grpc, nodes, job) if name == "grpc" else WireKeys()
    spec = make_transport(name, shards, ranges, buffer_ranges, config.workers, config.grpc, runtime, keys)
    if isinstance(spec, GrpcEndpoints):  # gRPC pulls may come compressed (fp16, bf16): the clients decode
        spec = dataclasses.replace(spec, pull=config.compression.pull)
    if isinstance(spec, ShmEndpoints):  # bsp without a quorum: workers read the parameters where they lie
        c = config.consistency
        spec = dataclasses.replace(spec, published=c.mode == "bsp" and c.quorum is None)
    if isinstance(spec, GrpcEndpoints) and config.grpc.local == "shm" and not _one_node(nodes):
        # across nodes, each worker reaches the shards on its own node through shared memory
        local = make_transport("shm", shards, ranges, buffer_ranges, config.workers, config.grpc, runtime)
        spec = NodeLocalEndpoints(spec, local)
    return spec, keys


def local_shm(spec) -> ShmEndpoints | None:
    """A job's shared-memory endpoints: shm's own, or those beside gRPC across nodes; None for the others."""
    if isinstance(spec, NodeLocalEndpoints):
        return spec.shm
    return spec if isinstance(spec, ShmEndpoints) else None


def make_transport(name: str, shards, ranges, buffer_ranges, workers: int, grpc: GrpcConfig | None = None,
                   runtime: Runtime = RAY, keys: WireKeys | None = None):
    """Have the shards serve transport ``name`` and return the spec workers connect through (under
    ``keys``; default: the config's TLS files, or plaintext)."""
    grpc = grpc or GrpcConfig()
    if name == "grpc":
        return _serve_grpc(grpc, shards, ranges, buffer_ranges, runtime, keys or WireKeys(files=grpc.tls))
    if name == "shm":
        token = new_token()
        placed = runtime.get([s.where.remote() for s in shards])
        places = segment_places(ranges)
        directories = runtime.get([s.serve_shm.remote(token, None, place) for s, place in zip(shards, places)])
        return ShmEndpoints(tuple(directories), tuple(p["node_id"] for p in placed), token, ranges, buffer_ranges,
                            grpc.timeout_s, tag=places[0].tag if places else None)
    return RayTransport(tuple(shards), ranges, buffer_ranges, runtime=runtime)


def segment_places(ranges, tag: str | None = None) -> list[SegmentPlace]:
    """Where each shard's values lie in the workers' own shared-memory segments, under one tag for the job."""
    tag = tag or secrets.token_hex(6)
    total = max((r.hi for r in ranges), default=0)
    return [SegmentPlace(tag, r.lo, total) for r in ranges]


def _serve_grpc(g: GrpcConfig, shards, ranges, buffer_ranges, runtime: Runtime, keys: WireKeys) -> GrpcEndpoints:
    """Have every shard serve gRPC (port 0) and collect the addresses it bound. The spec carries the
    worker side's keys only (for the job's authority, worker 0's: ``WireKeys.for_worker`` gives each its own)."""
    host = g.host
    if host is None and _one_node(runtime.nodes()):
        host = "127.0.0.1"  # one machine: stay on loopback
    token = new_token()  # one per job; it reaches the actors as arguments, never a log line
    addresses = runtime.get([s.serve_grpc.remote(token, host, keys.shard(i), g.chunk_bytes)
                             for i, s in enumerate(shards)])
    return GrpcEndpoints(tuple(addresses), token, keys.worker(0), g.timeout_s, g.chunk_bytes, ranges, buffer_ranges)


def serve_again(transport, shards, grpc: GrpcConfig, runtime: Runtime = RAY,
                keys: WireKeys | None = None) -> Callable[[int], None]:
    """How a restarted shard serves again where it served (with a new certificate from the same
    authority), so clients reconnect in place."""
    keys = keys or WireKeys(files=grpc.tls)

    def serve(i: int) -> None:
        if isinstance(transport, NodeLocalEndpoints):
            serve_again(transport.grpc, shards, grpc, runtime, keys)(i)
            serve_again(transport.shm, shards, grpc, runtime, keys)(i)
        elif isinstance(transport, GrpcEndpoints):
            host, port = transport.addresses[i].rsplit(":", 1)
            runtime.get(shards[i].serve_grpc.remote(transport.token, host.strip("[]"), keys.shard(i),
                                                    grpc.chunk_bytes, int(port)))
        elif isinstance(transport, ShmEndpoints):
            place = segment_places(transport.ranges, transport.tag)[i] if transport.tag else None
            runtime.get(shards[i].serve_shm.remote(transport.token, transport.directories[i], place))
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
    if isinstance(transport, NodeLocalEndpoints):  # only what crosses machines goes through the link
        link, grpc = throttled(transport.grpc, mbit, latency_ms)
        return link, dataclasses.replace(transport, grpc=grpc)
    if not isinstance(transport, GrpcEndpoints):
        raise ConfigError(f"debug.link_mbit emulates a slow network for gRPC; this job's transport is"
                          f" {transport.name}: set transport: grpc")
    link = ThrottledLink(mbit, latency_ms)
    try:
        return link, dataclasses.replace(transport, addresses=tuple(link.proxy(a) for a in transport.addresses))
    except BaseException:
        link.close()
        raise

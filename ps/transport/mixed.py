"""gRPC between machines, shared memory to the shards on the worker's own: one transport for a job across nodes.

With a shard on every worker's machine (the launcher spreads shards over the
nodes), a worker's own slice never needs the network, nor gRPC's copies and
encryption: ``NodeLocalEndpoints`` carries the job's gRPC endpoints and the
same shards' shared-memory endpoints, and each worker, as it connects, sends
the shards on its own node through shared memory (its segment, zero copies:
ps/transport/shm_client.py) and the others over gRPC (mutual TLS between
machines). The worker sees one ``Transport`` (ps/transport/contract.py); the
shards see each push once, through whichever server it came.

Every worker life carries on from one clock and one seq base over all its
shards, as a client of one transport does: ``register`` merges what both
halves' shards said. A worker with no shard on its node is a plain gRPC
client; one with every shard there, a plain shm client.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .contract import Encoded, Pending
from .grpc_client import GrpcEndpoints
from .shm_client import ShmEndpoints, _node_id


@dataclass(frozen=True)
class NodeLocalEndpoints:
    """The job's gRPC endpoints, and shared-memory endpoints of the same shards for workers on their nodes."""

    grpc: GrpcEndpoints
    shm: ShmEndpoints
    name: str = "grpc"  # what crosses machines; the summary says which shards a worker reached locally

    @property
    def ranges(self):
        return self.grpc.ranges

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.grpc.addresses

    def connect(self, worker_id: int, incarnation: int = 0):
        here = _node_id()
        local = [i for i, node in enumerate(self.shm.node_ids) if here is not None and node == here]
        if not local:
            return self.grpc.connect(worker_id, incarnation)
        if len(local) == len(self.shm.node_ids):
            return self.shm.connect(worker_id, incarnation)
        remote = [i for i in range(len(self.shm.node_ids)) if i not in local]
        total = max(r.hi for r in self.grpc.ranges)
        return NodeLocalClient(
            _subset_shm(self.shm, local).client(worker_id, incarnation, total=total),
            _subset_grpc(self.grpc, remote).connect(worker_id, incarnation), local, remote)


def _pick(items, indices):
    return None if items is None else tuple(items[i] for i in indices)


def _subset_grpc(spec: GrpcEndpoints, indices: list[int]) -> GrpcEndpoints:
    return dataclasses.replace(spec, addresses=_pick(spec.addresses, indices), ranges=_pick(spec.ranges, indices),
                               buffer_ranges=_pick(spec.buffer_ranges, indices))


def _subset_shm(spec: ShmEndpoints, indices: list[int]) -> ShmEndpoints:
    return dataclasses.replace(spec, directories=_pick(spec.directories, indices),
                               node_ids=_pick(spec.node_ids, indices), ranges=_pick(spec.ranges, indices),
                               buffer_ranges=_pick(spec.buffer_ranges, indices), published=False)


class NodeLocalClient:
    """Two clients as one: ``local`` (shm) for the shards at ``local_ids``, ``remote`` (gRPC) for the rest.

    Both are handed the caller's whole arrays: each client reads and writes only its shards' ranges, which
    are global offsets. Shard-ordered lists (compressed blobs, sparse ids and rows) are split and merged."""

    name = "grpc"

    def __init__(self, local, remote, local_ids: list[int], remote_ids: list[int]):
        self.local, self.remote = local, remote
        self.local_ids, self.remote_ids = local_ids, remote_ids
        self.fills_on_wait = local.fills_on_wait and remote.fills_on_wait
        self.base = 0

    @property
    def clients(self):
        return (self.local, self.remote)

    @property
    def fragments(self) -> int:
        """Streaming local steps: each push carries one of this many fragments (ps/transport/client_base.py)."""
        return self.local.fragments

    @fragments.setter
    def fragments(self, count: int) -> None:
        for client in self.clients:
            client.fragments = count

    def _split(self, per_shard) -> tuple[list, list]:
        return tuple([per_shard[i] for i in ids] for ids in (self.local_ids, self.remote_ids))

    def _merge(self, parts) -> list:
        out = [None] * (len(self.local_ids) + len(self.remote_ids))
        for ids, part in zip((self.local_ids, self.remote_ids), parts):
            for i, value in zip(ids, part):
                out[i] = value
        return out

    # ---- the transport contract (ps/transport/contract.py) ---------------------------------

    def register(self, params_out: np.ndarray, buffers_out: np.ndarray | None = None) -> int:
        clocks = [c.register(params_out, buffers_out) for c in self.clients]
        # every shard's (clock, last seq): each half kept its own furthest; the worker carries on from both
        clock = max(clocks)
        last_seq = max(c_clock - c.base for c_clock, c in zip(clocks, self.clients))
        self.base = clock - last_seq
        for c in self.clients:
            c.base = self.base
        return clock

    def push_pull_async(self, clock, grads, params_out, num_samples, loss, buffers=None, buffers_out=None,
                        ahead: int = 0) -> Pending:
        if isinstance(grads, Encoded):
            halves = [Encoded(tuple(part), grads.codec) for part in self._split(grads.blobs)]
        else:
            halves = [grads, grads]
        # the network half first: its bytes are on the wire while the shm half is answered
        remote = self.remote.push_pull_async(clock, halves[1], params_out, num_samples, loss, buffers, buffers_out,
                                             ahead)
        try:
            local = self.local.push_pull_async(clock, halves[0], params_out, num_samples, loss, buffers,
                                               buffers_out, ahead)
        except BaseException:
            _wait_all([remote])
            raise
        return Pending(lambda: _wait_all([local, remote]))

    def push_pull(self, clock, grads, params_out, num_samples, loss, buffers=None, buffers_out=None,
                  ahead: int = 0) -> None:
        self.push_pull_async(clock, grads, params_out, num_samples, loss, buffers, buffers_out, ahead).wait()

    def shared_buffers(self):
        return self.local.shared_buffers()

    def reconnect(self) -> None:
        for c in self.clients:
            c.reconnect()

    def finish(self) -> None:
        errors = []
        for c in self.clients:
            try:
                c.finish()
            except Exception as e:  # noqa: BLE001 - leave the other half's clock tables too, then raise
                errors.append(e)
        if errors:
            raise errors[0]

    def sparse_pull(self, table: str, ids_per_shard: list[np.ndarray], clock: int) -> list:
        return self._merge([c.sparse_pull(table, part, clock)
                            for c, part in zip(self.clients, self._split(ids_per_shard))])

    def sparse_push_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray], grads_per_shard: list,
                          num_samples: int) -> Pending:
        ids, grads = self._split(ids_per_shard), self._split(grads_per_shard)
        pending = [c.sparse_push_async(table, clock, i, g, num_samples) for c, i, g in zip(self.clients, ids, grads)]
        return Pending(lambda: _wait_all(pending))

    def sparse_push_pull_async(self, table: str, clock: int, ids_per_shard: list[np.ndarray], grads_per_shard: list,
                               num_samples: int, pull_ids_per_shard: list[np.ndarray]) -> Pending:
        parts = zip(self.clients, self._split(ids_per_shard), self._split(grads_per_shard),
                    self._split(pull_ids_per_shard))
        pending = [c.sparse_push_pull_async(table, clock, i, g, num_samples, p) for c, i, g, p in parts]
        return Pending(lambda: self._merge(_wait_all(pending)))


def shards_over_shm(client) -> int:
    """How many of its shards a connected client reaches through shared memory."""
    if isinstance(client, NodeLocalClient):
        return len(client.local_ids)
    return len(getattr(client, "ranges", ())) if getattr(client, "name", "") == "shm" else 0


def _wait_all(pending: list[Pending]) -> list:
    """Wait for every one (so no answer is left behind), then raise the first error; their results."""
    errors, results = [], []
    for p in pending:
        try:
            results.append(p.wait())
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    if errors:
        raise errors[0]
    return results

"""ServedShard: the shard actor class, a ParameterShard that also serves the other transports.

The driver makes it a Ray async actor. Ray calls reach it directly (the
object-store transport); ``serve_grpc`` and ``serve_shm`` start the gRPC and
same-node servers on the actor's own event loop, so every transport's
requests interleave on one thread and the shard needs no locks.
"""

from __future__ import annotations

from rayps.protos.codec import CHUNK_BYTES
from rayps.ps.grpc_security import TLSConfig
from rayps.ps.grpc_server import GrpcShardServer, start_grpc_server
from rayps.ps.shard import ParameterShard
from rayps.ps.shm_server import ShmShardServer, start_shm_server


class ServedShard(ParameterShard):
    _grpc: GrpcShardServer | None = None
    _shm: ShmShardServer | None = None

    async def serve_grpc(self, token: str, host: str | None = None, tls: TLSConfig | None = None,
                         chunk_bytes: int = CHUNK_BYTES) -> str:
        """Start serving gRPC (port 0); return the bound ``host:port`` for workers to dial."""
        if self._grpc is None:
            if host is None:  # a multi-node cluster: the address other nodes can reach
                import ray
                host = ray.util.get_node_ip_address()
            self._grpc = await start_grpc_server(self, token, host, 0, tls, chunk_bytes)
        return self._grpc.address

    async def serve_shm(self, token: str, worker_ids: list[int]) -> str:
        """Start the same-node server; return the directory holding its segment and socket."""
        if self._shm is None:
            self._shm = await start_shm_server(self, token, worker_ids)
        return self._shm.directory

    async def stop_serving(self) -> None:
        """Stop every server and remove the shared-memory segment (before the actor is killed)."""
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        if self._shm is not None:
            await self._shm.stop()
            self._shm = None

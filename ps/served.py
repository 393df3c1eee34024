"""ServedShard: the shard actor class, a ParameterShard that also serves the other transports.

The driver makes it a Ray async actor. Ray calls reach it directly (the
object-store transport); ``serve_grpc`` and ``serve_shm`` start the gRPC and
same-node servers on the actor's own event loop, so every transport's
requests interleave on one thread and the shard needs no locks.

Restarts: given a checkpoint directory, a shard restores the newest valid
checkpoint there by itself as it starts. Ray restarts a dead shard actor with
the same arguments, so a restarted shard comes back at the job's last
consistent cut (and a resumed job's shards start from the run it resumes).
The controller then has it serve again where it served (the same port, the
same shared-memory directory), so the workers' clients reconnect in place.
"""

from __future__ import annotations

import logging
import os
import signal

from ..protos.codec import CHUNK_BYTES
from ..protos.shm_wire import SegmentPlace
from .core.checkpoint import CheckpointStore, CorruptCheckpoint
from .core.placement_info import this_pid
from .shard import ParameterShard
from .sparse.delta import merged
from .transport.grpc_security import TLS
from .transport.grpc_server import GrpcShardServer, start_grpc_server
from .transport.shm_server import ShmShardServer, start_shm_server

log = logging.getLogger(__name__)


def part_name(shard_id: int) -> str:
    """A shard's part in a checkpoint."""
    return f"shard-{shard_id}"


def shard_state(store: CheckpointStore, step: int, shard_id: int) -> dict:
    """Shard ``shard_id``'s full state at checkpoint ``step``: where that part holds only the table rows
    changed since an earlier checkpoint (incremental), merged onto that one's, back to a full one."""
    name = part_name(shard_id)
    state = store.read(step, only=[name])[name]
    since = state.get("tables_since")
    if since is None:
        return state
    base = shard_state(store, since, shard_id)
    return {**state, "tables_since": None,
            "tables": {t: merged(base["tables"][t], rows) for t, rows in state["tables"].items()}}


def newest_shard_state(store: CheckpointStore, shard_id: int) -> tuple[int, dict] | None:
    """The newest checkpoint that reads back whole (with every one it follows), and the shard's state in it."""
    for step in reversed(store.steps()):
        try:
            return step, shard_state(store, step, shard_id)
        except CorruptCheckpoint as e:
            log.error("skipping a corrupt checkpoint: %s", e)
    return None


class ServedShard(ParameterShard):
    _grpc: GrpcShardServer | None = None
    _shm: ShmShardServer | None = None

    def __init__(self, *args, checkpoints: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.restored_step: int | None = None
        self._checkpoints = checkpoints
        if checkpoints is not None:
            found = newest_shard_state(CheckpointStore(checkpoints), self.shard_id)
            if found is not None:
                self.restored_step, state = found
                self.load_state_dict(state)
                self._tables_clean_at = self.restored_step
                log.warning("%r restored checkpoint %d from %s", self, self.restored_step, checkpoints)

    def life(self) -> dict:
        """Which life of the shard this is: a restart changes the pid."""
        return {"pid": this_pid(), "restored": self.restored_step}

    def die(self) -> None:
        """Chaos: SIGKILL this shard's own process (no cleanup runs; Ray may restart it)."""
        os.kill(os.getpid(), signal.SIGKILL)

    def hang(self) -> None:
        """Chaos: stop answering anything (this blocks the actor's event loop until it is killed)."""
        import time
        time.sleep(10**9)

    def restored(self) -> int | None:
        """The checkpoint this life of the shard started from (None: its initial parameters)."""
        return self.restored_step

    def restore(self, checkpoints: str, step: int) -> int:
        """Go back to checkpoint ``step`` (the controller rolls every shard back to one cut);
        returns how many optimizer steps that undid."""
        state = shard_state(CheckpointStore(checkpoints), step, self.shard_id)
        before = self.version
        self.load_state_dict(state)
        self._tables_clean_at = self.restored_step = step
        return before - self.version

    async def serve_grpc(self, token: str, host: str | None = None, tls: TLS | None = None,
                         chunk_bytes: int = CHUNK_BYTES, port: int = 0) -> str:
        """Start serving gRPC (port 0: any); return the bound ``host:port`` for workers to dial."""
        if self._grpc is None:
            if host is None:  # a multi-node cluster: the address other nodes can reach
                import ray
                host = ray.util.get_node_ip_address()
            self._grpc = await start_grpc_server(self, token, host, port, tls, chunk_bytes)
        return self._grpc.address

    async def serve_shm(self, token: str, directory: str | None = None, place: SegmentPlace | None = None) -> str:
        """Start the same-node server (in ``directory``, default a new one); return its directory. ``place``:
        where this shard's values lie in the workers' own segments (None: workers use the slots only)."""
        if self._shm is None:
            self._shm = await start_shm_server(self, token, directory=directory, place=place)
        return self._shm.directory

    async def stop_serving(self) -> None:
        """Stop every server and remove the shared-memory segment (before the actor is killed)."""
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        if self._shm is not None:
            await self._shm.stop()
            self._shm = None

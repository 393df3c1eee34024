"""``psctl serve``: one parameter shard as a plain gRPC server, outside Ray.

Anything that speaks protos/ps.proto (a client in any language, a test) can
train against it. Settings come from a YAML file, flags and ``--set``; the
bearer token from ``--token-file`` (or ``PSCTL_TOKEN``), else a fresh one is
written to a file whose path is printed. The token itself is never printed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..protos.codec import CHUNK_BYTES
from ..ps.core.consistency import ConsistencyConfig
from ..ps.transport.grpc_security import TLSConfig, new_token
from ..ps.transport.grpc_server import start_grpc_server
from ..ps.core.optimizers import OptimizerConfig
from ..ps.core.schedules import ScheduleConfig
from ..settings import build, number, require
from ..ps.shard import ParameterShard

INITS = ("zeros", "normal")


@dataclass(frozen=True)
class ServeConfig:
    size: int = 1000  # float32 parameters in the shard
    workers: int = 1  # worker ids 0..workers-1 may register
    shard_id: int = 0
    init: str = "zeros"  # zeros | normal (std 0.01, from seed)
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port, printed once bound
    token_file: str | None = None
    chunk_bytes: int = CHUNK_BYTES
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    consistency: ConsistencyConfig = field(default_factory=lambda: ConsistencyConfig(mode="asp"))
    tls: TLSConfig | None = None

    def __post_init__(self) -> None:
        number(self.size, "size", minimum=1, integer=True)
        number(self.workers, "workers", minimum=1, integer=True)
        number(self.shard_id, "shard_id", minimum=0, integer=True)
        number(self.seed, "seed", minimum=0, integer=True)
        number(self.port, "port", minimum=0, integer=True)
        require(self.port <= 65535, f"port ({self.port}) must be <= 65535")
        require(self.init in INITS, f"init ({self.init!r}) must be one of {', '.join(INITS)}")

    def initial_params(self) -> np.ndarray:
        if self.init == "zeros":
            return np.zeros(self.size, dtype=np.float32)
        return (np.random.default_rng(self.seed).standard_normal(self.size) * 0.01).astype(np.float32)


def load_serve_config(path: str | None, overrides: list[str]) -> ServeConfig:
    from .job.config import merge_overrides, read_yaml_mapping

    raw = read_yaml_mapping(path) if path else {}
    where = str(path) if path else "serve"
    config = build(ServeConfig, raw, where)
    if overrides:
        config = build(ServeConfig, merge_overrides(ServeConfig, raw, overrides), "--set")
    return config


def read_token(config: ServeConfig) -> tuple[str, str]:
    """The token and where it came from (never the token in any message)."""
    if config.token_file:
        path = Path(config.token_file)
        if path.is_file():
            token = path.read_text().strip()
            require(bool(token), f"token_file ({path}) is empty")
            return token, str(path)
    elif os.environ.get("PSCTL_TOKEN"):
        return os.environ["PSCTL_TOKEN"], "$PSCTL_TOKEN"
    path = Path(config.token_file or "psctl-serve.token")
    token = new_token()
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token, f"{path} (new)"


async def serve(config: ServeConfig) -> None:
    token, source = read_token(config)
    shard = ParameterShard(config.shard_id, config.initial_params(), list(range(config.workers)),
                           config.optimizer, config.schedule, config.consistency)
    server = await start_grpc_server(shard, token, config.host, config.port, config.tls, config.chunk_bytes)
    print(f"serving shard {config.shard_id}: {config.size} float32 parameters on {server.address}"
          f" ({'mTLS' if config.tls else 'plaintext'}); token from {source}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    print("stopped", flush=True)

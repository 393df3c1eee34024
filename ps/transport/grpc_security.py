"""Who may talk to a shard over gRPC: a bearer token per job, and mTLS.

The token travels as ``authorization: Bearer <token>`` metadata on every call;
it is compared in constant time and never logged (``TokenAuth.__repr__`` hides
it). Under mTLS the server presents a certificate and demands one from every
client, signed by the trusted CA: the user's files (``TLSConfig``), or, by
default wherever traffic leaves the machine, the job's own authority
(ps/transport/job_ca.py, in memory). Both offer the same two methods,
``server_credentials`` and ``channel_credentials``, and a ``server_name``.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import grpc

from ...errors import ConfigError
from ...protos.codec import CHUNK_BYTES

from ...settings import require
from .job_ca import TLSKeys

METADATA_KEY = "authorization"


def new_token() -> str:
    """A fresh random token for one job."""
    return secrets.token_urlsafe(32)


class TokenAuth:
    def __init__(self, token: str):
        if not token:
            raise ConfigError("a bearer token must not be empty")
        self._expected = f"Bearer {token}".encode()
        self.metadata = ((METADATA_KEY, f"Bearer {token}"),)

    def __repr__(self) -> str:
        return "TokenAuth(<hidden>)"

    def allows(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == METADATA_KEY:
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False


@dataclass(frozen=True)
class TLSConfig:
    """Paths of PEM files. One CA may sign both sides; ``client_ca`` defaults to ``ca``."""

    ca: str  # verifies the server's certificate (clients) and, by default, clients' (server)
    server_cert: str | None = None
    server_key: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    client_ca: str | None = None
    server_name: str | None = None  # override the name checked against the server certificate

    def __post_init__(self) -> None:
        for name in ("ca", "server_cert", "server_key", "client_cert", "client_key", "client_ca"):
            path = getattr(self, name)
            require(path is None or Path(path).is_file(), f"tls.{name} ({path!r}) is not a readable file")
        require((self.server_cert is None) == (self.server_key is None),
                "tls.server_cert and tls.server_key must be given together")
        require((self.client_cert is None) == (self.client_key is None),
                "tls.client_cert and tls.client_key must be given together")

    def server_credentials(self) -> grpc.ServerCredentials:
        require(self.server_cert is not None, "tls.server_cert and tls.server_key are needed to serve TLS")
        return grpc.ssl_server_credentials(
            [(_read(self.server_key), _read(self.server_cert))],
            root_certificates=_read(self.client_ca or self.ca),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.client_key) if self.client_key else None,
            certificate_chain=_read(self.client_cert) if self.client_cert else None,
        )


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


#: What a server or client takes for mTLS: the user's files, or keys in memory from the job's authority.
TLS = Union[TLSConfig, TLSKeys]


@dataclass(frozen=True)
class GrpcConfig:
    """The ``grpc:`` section of a job: used when ``transport: grpc``."""

    host: str | None = None  # None: 127.0.0.1 on a one-node cluster, else each node's address
    timeout_s: float = 300.0  # deadline of every call and of every step (which may wait on the bound)
    chunk_bytes: int = CHUNK_BYTES  # payload per chunk; messages stay under the 4 MiB limit
    tls: TLSConfig | None = None  # mTLS with these files; absent: the job's own CA wherever traffic leaves
    plaintext: bool = False  # no TLS even across machines: only when asked for by name (with a warning)
    # how a worker of a job across nodes reaches the shards on its own node: shared memory (no copy, no
    # encryption needed: the bytes never leave the machine), or gRPC like the others
    local: str = "shm"

    def __post_init__(self) -> None:
        from ...settings import number

        number(self.timeout_s, "timeout_s", minimum=0, exclusive=True)
        number(self.chunk_bytes, "chunk_bytes", minimum=4, integer=True)
        require(self.chunk_bytes <= 3 << 20, f"chunk_bytes ({self.chunk_bytes}) must be <= {3 << 20} (3 MiB),"
                " so a chunk and its header stay under the 4 MiB message limit")
        require(self.host is None or isinstance(self.host, str), f"host ({self.host!r}) must be a string")
        require(self.local in ("shm", "grpc"), f"local ({self.local!r}) must be shm or grpc: how a worker reaches"
                " the shards on its own node when the job spans nodes")
        require(not (self.plaintext and self.tls is not None),
                "grpc.plaintext and grpc.tls contradict each other: give one of them")

"""Ray's token authentication, as psctl uses it.

Ray (2.52+) turns token auth on with ``RAY_AUTH_MODE=token`` in the
environment of every Ray process, and reads the token from, in order:
``RAY_AUTH_TOKEN`` (the token itself), ``RAY_AUTH_TOKEN_PATH`` (a file), then
``~/.ray/auth_token`` (where ``ray.init()`` and ``ray get-auth-token
--generate`` write a new one). HTTP clients of the dashboard, such as the
Jobs API, send it as ``Authorization: Bearer <token>``.

``find_token`` looks in those same places, so ``psctl submit`` sends the
token that ``psctl up`` gave the cluster; ``ensure_token`` also writes a new
one to the default file when there is none. A token is never logged.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for messages: "$RAY_AUTH_TOKEN" or a file path
    created: bool = False  # ensure_token wrote it just now

    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}

    def __repr__(self) -> str:  # never print the secret, even in a traceback
        return f"Token(source={self.source!r}, created={self.created})"


def find_token() -> Token | None:
    """The token Ray itself would use on this machine, or None when there is none."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value:
        return Token(value, f"${TOKEN_ENV}")
    path_env = os.environ.get(TOKEN_PATH_ENV)
    if path_env:
        # Ray treats an unreadable RAY_AUTH_TOKEN_PATH as fatal rather than falling back; so do we.
        path = Path(path_env).expanduser()
        value = _read(path, f"${TOKEN_PATH_ENV} ({path})")
        if not value:
            raise ConfigError(f"${TOKEN_PATH_ENV} ({path}) is empty; it must hold the cluster's auth token")
        return Token(value, str(path))
    path = default_token_path()
    value = _read(path, str(path)) if path.exists() else ""
    return Token(value, str(path)) if value else None


def ensure_token() -> Token:
    """``find_token()``, or a new random token written to ``~/.ray/auth_token`` (mode 0600)."""
    token = find_token()
    if token is not None:
        return token
    path = default_token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)  # what Ray's own generator makes: 256 random bits
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return Token(value, str(path), created=True)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read the auth token: {e.strerror}") from None

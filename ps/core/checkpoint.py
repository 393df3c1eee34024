"""Checkpoints on disk: one directory per consistent cut, every file listed with its sha256.

Layout under the store's root::

    ckpt-000000001234/
        manifest.json           format, step, base, and for every other file its bytes and sha256
        shard-0.safetensors     the part's arrays (parameters, optimizer state, buffers, ...)
        shard-0.json            everything else in the part, with references to those arrays
        ...

Writing goes into a ``.tmp-`` directory: every file is fsynced, the manifest
is written last, then the directory is renamed into place (atomic on POSIX)
and the root is fsynced. A crash part way leaves only a ``.tmp-`` directory,
which is never read. Reading takes the newest checkpoint whose manifest
parses and whose every file has the size and sha256 the manifest says; one
that does not is skipped with a logged error and the next older one is
tried. A file with zeroed tensor bytes, which safetensors itself would load
without complaint, fails its checksum. Only the newest ``keep`` are kept.

An incremental checkpoint names in ``base`` the checkpoint it follows (its
parts hold only what changed since: ps/sparse/delta.py). It reads back only
when its chain does: every file of every checkpoint it follows must match
its manifest too, so a damaged link makes the later ones unreadable, and
the next older whole one is taken. Pruning keeps what a kept one follows.

A part is any nest of dicts, lists, numbers, strings and numpy arrays, such
as ``ParameterShard.state_dict()``. Integer dict keys (worker ids) come back
as integers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, PSError

log = logging.getLogger(__name__)

FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{12})$")
_PART = re.compile(r"^[A-Za-z0-9_-]+$")


class CorruptCheckpoint(PSError):
    """A checkpoint's manifest or files do not match: it is skipped, never loaded."""


def _encode(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(value, np.ndarray):
        arrays[path] = np.ascontiguousarray(value)
        return {"__array__": path}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__map__": {k: _encode(v, arrays, f"{path}.{k}") for k, v in value.items()}}
        return {"__pairs__": [[k if isinstance(k, str) else int(k), _encode(v, arrays, f"{path}.{k}")]
                              for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"checkpoint value at {path!r} is a {type(value).__name__}; only arrays, dicts, lists,"
                      " numbers and strings are stored")


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__map__" in value:
            return {k: _decode(v, arrays) for k, v in value["__map__"].items()}
        return {k: _decode(v, arrays) for k, v in value["__pairs__"]}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    def __init__(self, root: str | Path, keep: int = 3):
        if keep < 1:
            raise ConfigError(f"keep ({keep}) must be >= 1")
        self.root = Path(root)
        self.keep = keep
        self._verified: set[int] = set()  # checked whole by this store (its files are written once, renamed in)

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints on disk, oldest first (valid or not)."""
        if not self.root.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.root / f"ckpt-{step:012d}"

    def write(self, step: int, parts: dict[str, Any], base: int | None = None) -> Path:
        """Write ``parts`` (name -> nested state) as the checkpoint of ``step``; prune to ``keep``.
        ``base``: the checkpoint this one follows (an incremental one, whose parts hold only what changed
        since); it is kept as long as this one is."""
        from safetensors.numpy import save

        if step < 0:
            raise ConfigError(f"checkpoint step ({step}) must be >= 0")
        if base is not None and not (0 <= base < step and self.path(base).is_dir()):
            raise ConfigError(f"checkpoint {step} cannot follow checkpoint {base}: it is not an earlier one here")
        for name in parts:
            if not _PART.match(name) or name == "manifest":
                raise ConfigError(f"checkpoint part name {name!r} must be letters, digits, - or _, not 'manifest'")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            files = {}
            for name, state in parts.items():
                arrays: dict[str, np.ndarray] = {}
                tree = _encode(state, arrays, name)
                for filename, data in ((f"{name}.safetensors", save(arrays)),
                                       (f"{name}.json", json.dumps(tree).encode())):
                    _write_synced(tmp / filename, data)
                    files[filename] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            manifest = {"format": FORMAT, "step": step, "base": base, "parts": sorted(parts), "files": files,
                        "written_at": time.time()}
            _write_synced(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
            _fsync_dir(tmp)
            if final.exists():  # the same step written again (a resumed job): the new one replaces it
                shutil.rmtree(final)
            self._verified.discard(step)
            os.rename(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        return final

    def _prune(self) -> None:
        """Keep the newest ``keep`` checkpoints and every one they follow."""
        steps = self.steps()
        needed = set(steps[-self.keep:])
        for step in steps[-self.keep:]:
            while True:
                try:
                    step = json.loads((self.path(step) / "manifest.json").read_bytes()).get("base")
                except (OSError, ValueError, AttributeError):
                    break
                if step is None or step in needed:
                    break
                needed.add(step)
        for old in steps:
            if old not in needed:
                shutil.rmtree(self.path(old), ignore_errors=True)
                self._verified.discard(old)

    def _verify(self, step: int) -> dict:
        """Checkpoint ``step``'s manifest, once every file of it, and of every checkpoint it chains to,
        matches its manifest; CorruptCheckpoint otherwise."""
        where = self.path(step)
        try:
            manifest = json.loads((where / "manifest.json").read_bytes())
            files, base = manifest["files"], manifest.get("base")
            if manifest.get("format") != FORMAT or manifest.get("step") != step:
                raise ValueError(f"format {manifest.get('format')!r}, step {manifest.get('step')!r}")
            if base is not None and (not isinstance(base, int) or base >= step):
                raise ValueError(f"base {base!r}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpoint(f"{where}: manifest.json is missing or unreadable: {e}") from None
        if step in self._verified:
            return manifest
        for filename, expected in files.items():
            path = where / filename
            if not path.is_file():
                raise CorruptCheckpoint(f"{where}: {filename} is missing")
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise CorruptCheckpoint(f"{where}: {filename} has {size} bytes, the manifest says {expected['bytes']}")
            if _sha256(path) != expected["sha256"]:
                raise CorruptCheckpoint(f"{where}: {filename} does not match its sha256 in the manifest")
        if base is not None:  # an incremental checkpoint is whole only with the chain it builds on
            try:
                self._verify(base)
            except CorruptCheckpoint as e:
                raise CorruptCheckpoint(f"{where}: it follows checkpoint {base}, which cannot be read: {e}") from None
        self._verified.add(step)
        return manifest

    def base(self, step: int) -> int | None:
        """The checkpoint an incremental checkpoint ``step`` follows (None: it stands alone)."""
        return self._verify(step).get("base")

    def read(self, step: int, only: list[str] | None = None) -> dict[str, Any]:
        """The parts of checkpoint ``step`` (or just those named in ``only``); CorruptCheckpoint if
        any file of it, or of the checkpoints it follows, does not match its manifest: a cut is whole or
        not at all."""
        from safetensors.numpy import load

        where = self.path(step)
        names = self._verify(step)["parts"]
        parts = {}
        for name in names:
            if only is not None and name not in only:
                continue
            arrays = load((where / f"{name}.safetensors").read_bytes())
            parts[name] = _decode(json.loads((where / f"{name}.json").read_bytes()), arrays)
        return parts

    def latest(self, only: list[str] | None = None) -> tuple[int, dict[str, Any]] | None:
        """The newest checkpoint that reads back whole, and its step; None if there is none."""
        for step in reversed(self.steps()):
            try:
                return step, self.read(step, only)
            except CorruptCheckpoint as e:
                log.error("skipping a corrupt checkpoint: %s", e)
        return None

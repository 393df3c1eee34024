"""A job's files in shared memory, found by its tag and removed: what the shards, and a resumed driver, sweep.

Each job's same-node files lie directly under one root (/dev/shm), named
``rayps-<tag>-...`` (protos/shm_wire.py: the published parameters and each
worker's segment directory).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil


def tagged_entries(root: str, tag: str) -> list[str]:
    """Every path under ``root`` named for the job ``tag``."""
    return sorted(glob.glob(os.path.join(glob.escape(root), f"rayps-{glob.escape(tag)}-*")))


def remove_entry(path: str) -> None:
    """A directory with all it holds, or a file (a link is removed, never followed); gone already is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

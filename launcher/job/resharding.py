"""A resumed job on another number of shards: its newest checkpoint cut again before the shards start.

``psctl run --resume RUN_DIR --set servers=M`` (or ``Job(..., servers=M).run(output=RUN_DIR)``) on a
run whose newest valid checkpoint holds N shard parts: the driver reads that
checkpoint whole, reshards the N states into M (ps/reshard.py) and writes them,
with the cut's queue, data and job parts unchanged, as the next checkpoint. The
M shards then restore it by themselves as any resumed job's shards do, and the
work queue comes back to the same cut. The old checkpoint stays as it was, so
a run can be resumed again at N.

What it costs: one read of the whole checkpoint, its arrays joined and cut
once in the driver (about two copies of the model and its tables in the
driver's memory), and one more checkpoint written.
"""

from __future__ import annotations

import re
import time

from ...ps.core.checkpoint import CheckpointStore
from ...ps.reshard import reshard
from ...ps.served import part_name, shard_state

_SHARD_PART = re.compile(r"^shard-(\d+)$")


def shard_count(parts: dict) -> int:
    """How many shards a checkpoint's parts were cut from."""
    return sum(1 for name in parts if _SHARD_PART.match(name))


def reshard_newest(root: str, servers: int, keep: int) -> str | None:
    """Write the newest valid checkpoint under ``root`` again for ``servers`` shards when it was cut with
    another number; a line saying what was done (None: nothing to do)."""
    store = CheckpointStore(root, keep)
    began = time.monotonic()
    found = store.latest()
    if found is None:
        return None
    index, parts = found
    count = shard_count(parts)
    if count == servers:
        return None
    # an incremental cut's shard parts hold only the rows changed since the cut before: merged back first
    states = reshard([shard_state(store, index, i) for i in range(count)], servers)
    moved = {name: part for name, part in parts.items() if not _SHARD_PART.match(name)}
    moved.update({part_name(i): state for i, state in enumerate(states)})
    job = dict(moved["job"])
    job["config"] = {**job["config"], "servers": servers}
    job["versions"] = [s["version"] for s in states]
    job["resharded_from"] = {"checkpoint": index, "servers": count}
    moved["job"] = job
    written = max(store.steps()) + 1
    store.write(written, moved)
    line = (f"resharded checkpoint {index} from {count} to {servers} shards as checkpoint {written}"
            f" in {time.monotonic() - began:.2f} s")
    return line

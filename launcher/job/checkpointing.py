"""Checkpointing a running job: a consistent cut of every shard and the data position, and going back to one.

The cut (asp, ssp and bsp alike): every shard is frozen (pushes wait at its
gate) and says each worker's completed clock; the highest per worker is the
cut, and each shard lets through exactly the held pushes up to it. Then every
shard stands at the same clocks, so their states (parameters, optimizer,
buffers, clocks, push ledger, a bsp round part gathered) and the work queue's
leases are one consistent picture. The pushes wait only for the copies;
writing happens after the shards thaw. A worker that dies mid-cut leaves a
push some shards never get, and a shard that dies mid-cut leaves no whole
picture; either way that cut is abandoned and the next one is tried.

On disk a checkpoint holds ``shard-N`` parts, ``queue`` (the leases, settled
on restore against the shards' ledgers at the cut) and ``job`` (the config,
the cut's clocks, the versions, the history so far): see ps/core/checkpoint.py.

Its calls to the shards and the work queue are waited on through a runtime
(runtime.py): Ray's in a job, an in-process one in tests.
"""

from __future__ import annotations

import logging
import time

from ...runtime import RAY, Runtime
from .policies import CheckpointSchedule
from ...ps.core.checkpoint import CheckpointStore
from ...ps.served import part_name

log = logging.getLogger(__name__)

CALL_S = 30.0
CUT_S = 2.0  # how long a cut waits for the pushes it needs before it is abandoned (pushes wait that long)


class Checkpointer:
    def __init__(self, root: str, keep: int, schedule: CheckpointSchedule, config: dict,
                 extra: dict | None = None, runtime: Runtime = RAY, full_every: int = 1):
        """``extra``: parts every checkpoint carries as they are (the job's fitted data state).
        ``full_every``: at least every so many checkpoints, one with every table row; those between hold
        only the rows changed since the checkpoint before (1: every checkpoint is full)."""
        self.runtime = runtime
        self.root = str(root)
        self.extra = dict(extra or {})
        self.store = CheckpointStore(root, keep)
        self.schedule = schedule
        self.config = config
        self.written = 0
        self.abandoned = 0
        self.last_step: int | None = None
        self.pause_s = 0.0  # the longest time pushes waited for a cut
        self.full_every = full_every
        self.incremental_written = 0
        self._since_full = 0  # incremental checkpoints written since the last full one

    def due(self, now: float, step: int) -> bool:
        return self.schedule.due(now, step)

    def next_index(self) -> int:
        return max(self.store.steps(), default=-1) + 1

    def take(self, shards: list, coordinator, history: list[dict] = (), now: float | None = None,
             step: int | None = None) -> int | None:
        """Cut and write one checkpoint at the job's ``step`` (default: the history's last); its index,
        or None when the cut could not be made."""
        began = time.monotonic()
        if step is None:
            step = max([r.get("step", 0) for r in history] or [0])
        self.schedule.taken(began if now is None else now, step)
        try:
            seen = self._get([s.freeze.remote() for s in shards])
            cut: dict[int, int] = {}
            for clocks in seen:
                for worker, clock in clocks.items():
                    cut[int(worker)] = max(cut.get(int(worker), 0), clock)
            if not all(self._get([s.cut.remote(cut, CUT_S) for s in shards])):
                self.abandoned += 1
                log.warning("checkpoint abandoned: a push of the cut %s never reached every shard", cut)
                return None
            index = self.next_index()
            since = self.last_step if self._since_full + 1 < self.full_every else None
            states = self._get([s.state_dict.remote(since, index) for s in shards])
            queue = self._get(coordinator.state_dict.remote())
        except (self.runtime.ActorError, self.runtime.GetTimeoutError) as e:
            # A shard died (or stopped answering) mid-cut: there is no consistent picture to write. The
            # controller deals with the shard; the job must not end here.
            self.abandoned += 1
            log.warning("checkpoint abandoned: a shard failed during the cut: %s", e)
            return None
        finally:
            self._thaw(shards)
            self.pause_s = max(self.pause_s, time.monotonic() - began)
        parts = {part_name(i): state for i, state in enumerate(states)}
        parts["queue"] = queue
        parts.update(self.extra)
        parts["job"] = {"config": self.config, "clocks": cut, "versions": [s["version"] for s in states],
                        "history": list(history), "step": step, "written_at": time.time()}
        # a shard that gave its tables whole (restarted, or restored since) needs no base; the others do
        base = since if any(s["tables_since"] is not None for s in states) else None
        self.last_step = None  # until this one is on disk, the next must not follow it
        self.store.write(index, parts, base=base)
        self.written += 1
        self.incremental_written += base is not None
        self._since_full = self._since_full + 1 if base is not None else 0
        self.last_step = index
        return index

    def rewind(self, index: int, shards: list, coordinator) -> int:
        """Put the work queue back to checkpoint ``index``, settled against the restored shards'
        ledgers; the batches that must be trained again (replayed)."""
        queue = self.store.read(index, only=["queue"])["queue"]
        applied = merged_ledgers(self._get([s.ledger.remote() for s in shards]))
        return self._get(coordinator.load_state_dict.remote(queue, applied))

    def _get(self, refs):
        return self.runtime.get(refs, timeout=CALL_S)

    def _thaw(self, shards: list) -> None:
        """Let every live shard's held pushes go on; a dead one has nothing held any more."""
        for ref in [s.thaw.remote() for s in shards]:
            try:
                self.runtime.get(ref, timeout=CALL_S)
            except (self.runtime.ActorError, self.runtime.GetTimeoutError):
                pass

    def step_of(self, index: int) -> int | None:
        """The job's step checkpoint ``index`` was cut at (None: cut before steps were recorded)."""
        return self.store.read(index, only=["job"])["job"].get("step")

    def history(self, index: int) -> list[dict]:
        return list(self.store.read(index, only=["job"])["job"].get("history", []))


def merged_ledgers(ledgers: list[dict]) -> dict[int, tuple[int, int]]:
    """worker -> the newest (incarnation, seq) any of the shards' ledgers holds."""
    out: dict[int, tuple[int, int]] = {}
    for ledger in ledgers:
        for w, (inc, seq) in ledger.items():
            w = int(w)
            out[w] = max(out.get(w, (inc, seq)), (inc, seq))
    return out

"""What a checkpoint needs from a shard: a consistent cut, and the whole state out and back in.

Mixins of ``ParameterShard`` (ps/core/shard.py), kept apart because they are one idea:
``CutMixin`` holds pushes at a gate while the controller lines every shard up at
the same clocks (launcher/job/checkpointing.py); ``StateMixin`` copies everything the
shard's future depends on out (``state_dict``) and restores it (``load_state_dict``),
after which every worker must register again. They use the shard's own fields.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ...errors import ShapeError
from ...protos.layout import DTYPE
from .buffers import BufferTable
from .consistency import ClockTable
from .ledger import PushLedger
from .optimizers import make_optimizer


@dataclass
class PendingGradient:
    """A bsp gradient waiting for its clock's round to fill."""

    grad: np.ndarray
    num_samples: int
    pulled_version: int
    buffers: np.ndarray | None  # the worker's model buffers, recorded when the round steps


class CutMixin:
    async def gate(self, worker_id: int, clock: int) -> None:
        """Hold a push while a cut is being taken, unless it is one the cut still needs."""
        while self._frozen and (self._barrier is None or clock > self._barrier.get(worker_id, 0)):
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def freeze(self) -> dict[int, int]:
        """Begin a cut: hold every push from now on; return each live worker's completed clock."""
        self._frozen, self._barrier = True, None
        return self._tables_clocks(self._clocks.snapshot())

    async def cut(self, clocks: dict[int, int], timeout_s: float = 5.0) -> bool:
        """Let through the held pushes up to ``clocks`` (the highest every shard saw) and wait
        until this shard has them all, so every shard stands at the same clocks. False if a
        worker's push never came (it died mid-push) within ``timeout_s``."""
        self._barrier = {int(w): int(c) for w, c in clocks.items()}
        self._notify()
        deadline = time.monotonic() + timeout_s

        def reached() -> bool:
            return all(not self._clocks.is_live(w) or self._clocks.completed(w) >= c
                       for w, c in self._barrier.items() if self._ledger.knows(w)) \
                and self._tables_reached(self._barrier)

        while not reached():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

    def thaw(self) -> None:
        """End a cut: the held pushes go on."""
        self._frozen, self._barrier = False, None
        self._notify()


class StateMixin:
    def state_dict(self) -> dict:
        """Everything the shard's future depends on, as copies: parameters, version, optimizer
        state, model buffers and reports, clocks, the bsp round being gathered, and the counters
        the summary reports. ``load_state_dict`` on a shard built with the same config resumes
        exactly where this one stands."""
        return {
            "shard_id": self.shard_id,
            "params": self._params.copy(),
            "version": self._version,
            "optimizer": self._optimizer.state_dict(),
            "buffers": self._buffers.state_dict(),
            "clocks": self._clocks.state_dict(),
            "round_clock": self._round_clock,
            "ledger": self._ledger.state_dict(),
            "audit": [list(t) for t in self._audit] if self._audit is not None else None,
            "joined_at": dict(self._joined_at),
            "high": self._high,
            "round": {w: {"grad": p.grad.copy(), "num_samples": p.num_samples, "pulled_version": p.pulled_version,
                          "buffers": None if p.buffers is None else p.buffers.copy()}
                      for w, p in self._round.items()},
            "tables": self._tables_state(),
            "counters": {
                "staleness": dict(self._staleness), "rejected": dict(self._rejected), "applied": self._applied,
                "dropped": self._dropped, "duplicates": self._duplicates, "max_lead": self._max_lead,
                "wait_s": dict(self._wait_s), "samples": dict(self._samples), "loss": dict(self._loss),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; checked whole first, so a bad one changes nothing."""
        if state.get("shard_id") != self.shard_id:
            raise ShapeError(f"{self!r}: the state is ps-shard-{state.get('shard_id')}'s")
        params = state["params"]
        if not isinstance(params, np.ndarray) or params.dtype != DTYPE or params.shape != self._params.shape:
            shown = getattr(params, "shape", type(params).__name__)
            raise ShapeError(f"{self!r}: state parameters ({shown}) must be {DTYPE} of shape {self._params.shape}")
        for w, p in state["round"].items():
            if p["grad"].shape != self._params.shape:
                raise ShapeError(f"{self!r}: the gathered gradient of worker {w} has shape {p['grad'].shape}")
        # Each part checks itself before it changes anything: try them on copies, then commit.
        optimizer = make_optimizer(self._optimizer.config, self._params.size)
        optimizer.load_state_dict(state["optimizer"])
        buffers = BufferTable(self._buffers.values, self._buffers.integer)
        buffers.load_state_dict(state["buffers"])
        clocks = ClockTable([])
        clocks.load_state_dict(state["clocks"])
        ledger = PushLedger()
        ledger.load_state_dict(state["ledger"])
        self._tables_load(state.get("tables"))
        self._params[:] = params
        # Every worker's clock moved back under it: each registers again before it pushes.
        ledger.mark_rolled_back()
        self._ledger, self._generation = ledger, self._generation + 1
        self._joined_at = {int(w): int(c) for w, c in state["joined_at"].items()}
        self._high = int(state["high"])
        if self._audit is not None:  # what the restored state holds was applied; what came after was undone
            self._audit = [tuple(t) for t in (state.get("audit") or [])]
        self._frozen, self._barrier = False, None
        self._optimizer, self._buffers, self._clocks = optimizer, buffers, clocks
        self._version = int(state["version"])
        self._round_clock = int(state["round_clock"])
        self._round = {int(w): PendingGradient(p["grad"].copy(), int(p["num_samples"]), int(p["pulled_version"]),
                                        None if p["buffers"] is None else np.array(p["buffers"]))
                       for w, p in state["round"].items()}
        c = state["counters"]
        self._staleness, self._rejected = Counter(c["staleness"]), Counter(c["rejected"])
        self._applied, self._dropped, self._duplicates = c["applied"], c["dropped"], c["duplicates"]
        self._max_lead = c["max_lead"]
        self._wait_s, self._samples, self._loss = Counter(c["wait_s"]), Counter(c["samples"]), dict(c["loss"])
        self._notify()

"""The push ledger: which ``(worker_id, incarnation, seq)`` a shard has applied.

Pure logic, no I/O. Each push carries the worker's incarnation (0 for its
first life, one more for every replacement) and its sequence number within
that incarnation (1, 2, ...). A live shard applies each triple exactly once:

- the current incarnation, ``seq`` = last + 1: new, applied;
- the current incarnation, ``seq`` <= last: a retry (Ray's task retries are
  at-least-once; a client may resend after a timeout): a duplicate, refused
  and counted, never applied twice;
- the current incarnation, ``seq`` > last + 1: a protocol error (a buggy or
  confused client): refused, never recorded, so later pushes still count;
- an older incarnation: a zombie of a replaced worker: refused;
- a newer incarnation the shard was not told to expect: refused until the
  controller joins it (``join``), so a restart is never mistaken for a retry.

A rolled-back shard (restored from a checkpoint) marks every worker as
needing to register again before it may push: its clocks moved back under it.
"""

from __future__ import annotations

from ...errors import LeftJobError, OutOfOrderError, RolledBackError


class PushLedger:
    def __init__(self, worker_ids=()):
        self._incarnation: dict[int, int] = {int(w): 0 for w in worker_ids}
        self._last: dict[int, int] = {int(w): 0 for w in worker_ids}
        self._unregistered: set[int] = set()  # after a rollback: must register before pushing

    def knows(self, worker_id: int) -> bool:
        return worker_id in self._incarnation

    def incarnation(self, worker_id: int) -> int:
        return self._incarnation[worker_id]

    def last_seq(self, worker_id: int) -> int:
        return self._last[worker_id]

    def join(self, worker_id: int, incarnation: int) -> None:
        """Expect ``incarnation`` of ``worker_id`` from now on, starting again at seq 1."""
        current = self._incarnation.get(worker_id)
        if current is not None and incarnation < current:
            raise OutOfOrderError(f"worker {worker_id} incarnation {incarnation} is older than the current"
                                  f" incarnation {current}")
        if current != incarnation:
            self._last[worker_id] = 0
        self._incarnation[worker_id] = incarnation
        self._unregistered.discard(worker_id)

    def check_incarnation(self, worker_id: int, incarnation: int, shard: str) -> None:
        """Refuse a call from any incarnation but the current one."""
        current = self._incarnation[worker_id]
        if incarnation < current:
            raise LeftJobError(f"{shard}: worker {worker_id} incarnation {incarnation} was replaced by"
                               f" incarnation {current}; its calls are refused")
        if incarnation > current:
            raise OutOfOrderError(f"{shard}: worker {worker_id} incarnation {incarnation} has not joined"
                                  f" (the current one is {current}); a new incarnation joins through the job")

    def must_register(self, worker_id: int) -> bool:
        return worker_id in self._unregistered

    def registered(self, worker_id: int) -> None:
        self._unregistered.discard(worker_id)

    def classify(self, worker_id: int, incarnation: int, seq: int, shard: str) -> str:
        """``"new"`` or ``"duplicate"``; raises for a push out of protocol order."""
        self.check_incarnation(worker_id, incarnation, shard)
        last = self._last[worker_id]
        if seq <= last:  # even right after a restore: a retry of what the checkpoint holds is still a retry
            return "duplicate"
        if worker_id in self._unregistered:
            raise RolledBackError(f"{shard} was restored from a checkpoint; worker {worker_id} must register"
                                  " again before it pushes")
        if seq != last + 1:
            raise OutOfOrderError(f"{shard}: worker {worker_id} incarnation {incarnation} pushed seq {seq}, but"
                                  f" its next seq is {last + 1}; a push's seq may not skip ahead")
        return "new"

    def record(self, worker_id: int, seq: int) -> None:
        self._last[worker_id] = seq

    def mark_rolled_back(self) -> None:
        self._unregistered = set(self._incarnation)

    def snapshot(self) -> dict[int, tuple[int, int]]:
        """worker -> (incarnation, last applied seq)."""
        return {w: (self._incarnation[w], self._last[w]) for w in sorted(self._incarnation)}

    def state_dict(self) -> dict:
        return {"incarnation": dict(self._incarnation), "last": dict(self._last)}

    def load_state_dict(self, state: dict) -> None:
        incarnation = {int(w): int(i) for w, i in state["incarnation"].items()}
        last = {int(w): int(s) for w, s in state["last"].items()}
        if incarnation.keys() != last.keys():
            raise OutOfOrderError("push ledger state lists different workers for incarnations and seqs")
        self._incarnation, self._last = incarnation, last

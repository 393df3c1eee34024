"""``chaos.random``: SIGKILLs of random actors at random times while the job trains, and memory meanwhile.

A thread of the driver's, started with training and stopped with it. Its
gaps come from the seed (an exponential: some land inside the recovery from
the last kill, so faults overlap); at each one it takes the actors alive
then (``targets()``: the shards, and the workers still running), in a
seeded random order, and SIGKILLs the first that answers ``where()``: its
pid comes from its own process an instant before, so nothing else on the
machine is ever signalled. A shard Ray restarts (it restores the newest
checkpoint); a worker the controller replaces. An actor that does not
answer (restarting, or already dying) is passed over for the next; a kill
with nobody to take it is counted as missed.

It never touches the controller's state: what it did waits in a queue the
controller drains on its own thread (``drain()``), into the job's record.
Once a second it also samples memory (``memory()``, the controller's view:
the driver's RSS, the shards', the job's shared-memory bytes), so a soak can
say whether anything grew with the kills (``summary()``).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Callable

from ...runtime import RAY, Runtime
from .faults import RandomKills

log = logging.getLogger(__name__)

WHERE_S = 2.0  # how long a target may take to say which process it is before the next is tried
SAMPLE_S = 1.0  # memory is sampled this often


class ChaosMonkey:
    def __init__(self, plan: RandomKills, targets: Callable[[], list[tuple[str, object]]],
                 memory: Callable[[], dict[str, int]], runtime: Runtime = RAY):
        self.plan = plan
        self.targets = targets
        self.memory = memory
        self.runtime = runtime
        self.kills: list[dict] = []  # {"actor", "pid", "at_s"} for every SIGKILL sent
        self.missed = 0  # kills due when no target answered
        self.samples: list[dict] = []  # {"at_s", <what memory() says>}
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._began = 0.0

    # ---- the schedule ------------------------------------------------------------------

    def schedule(self) -> list[float]:
        """Seconds into training of every kill: the same for the same seed."""
        gaps = random.Random(self.plan.seed)
        at, times = self.plan.after_s, []
        for _ in range(self.plan.kills):
            at += gaps.expovariate(1.0 / self.plan.mean_gap_s)
            times.append(at)
        return times

    def eligible(self, targets: list[tuple[str, object]]) -> list[tuple[str, object]]:
        kinds = {"all": ("worker-", "ps-shard-"), "workers": ("worker-",), "shards": ("ps-shard-",)}
        return sorted((t for t in targets if t[0].startswith(kinds[self.plan.targets])), key=lambda t: t[0])

    # ---- the thread --------------------------------------------------------------------

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rayps-chaos", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=WHERE_S * 4)

    def since_last_kill(self) -> float:
        """Seconds since the last kill was sent (a large number when none was)."""
        return self._now() - self.kills[-1]["at_s"] if self.kills else float("inf")

    def drain(self) -> list[dict]:
        """What happened since the last call, for the job's record: ``{"actor", "pid", "at_s", "text"}`` rows
        (the record may see them a tick or a blocked call later; ``at_s`` says when the kill was sent)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def _run(self) -> None:
        draws = random.Random(self.plan.seed + 1)
        for n, at in enumerate(self.schedule(), 1):
            while not self._stop.is_set() and self._now() < at:
                self._sample()
                self._stop.wait(min(SAMPLE_S, max(0.0, at - self._now())))
            if self._stop.is_set():
                return
            self._kill_one(draws, n)
        while not self._stop.is_set():  # memory still matters after the last kill: the recovery from it
            self._sample()
            self._stop.wait(SAMPLE_S)

    def _kill_one(self, draws: random.Random, n: int) -> None:
        candidates = self.eligible(self.targets())
        draws.shuffle(candidates)
        for name, actor in candidates:
            try:
                where = self.runtime.get(actor.where.remote(), timeout=WHERE_S)
            except (self.runtime.ActorError, self.runtime.GetTimeoutError):
                continue  # restarting, dying or busy past the wait: the next one
            if self._stop.is_set():  # training ended while this one answered
                return
            try:
                self.runtime.sigkill(actor, where)
            except ProcessLookupError:  # it died between its answer and the signal
                continue
            at = round(self._now(), 3)
            self.kills.append({"actor": name, "pid": where.get("pid"), "at_s": at})
            self._events.put({"actor": name, "pid": where.get("pid"), "at_s": at,
                              "text": f"chaos: SIGKILL of {name} (pid {where.get('pid')}) {at:.1f} s into"
                                      f" training, random kill {n} of {self.plan.kills}"})
            return
        self.missed += 1
        log.warning("chaos: random kill %d of %d found no actor alive to kill", n, self.plan.kills)

    def _sample(self) -> None:
        try:
            self.samples.append({"at_s": round(self._now(), 3), **self.memory()})
        except Exception:  # noqa: BLE001 - a sample is an observation; it must never end the job
            log.debug("chaos: a memory sample failed", exc_info=True)

    def _now(self) -> float:
        return time.monotonic() - self._began

    # ---- the record --------------------------------------------------------------------

    def summary(self) -> dict:
        """The counts and memory's first, last and highest samples (MB), for summary.json's ``chaos``."""
        killed: dict[str, int] = {}
        for kill in self.kills:
            kind = kill["actor"].rsplit("-", 1)[0]
            killed[kind] = killed.get(kind, 0) + 1
        memory = {}
        for key in sorted({k for s in self.samples for k in s if k != "at_s"}):
            series = [s[key] / 2 ** 20 for s in self.samples if key in s]
            memory[key] = {"first": round(series[0], 1), "last": round(series[-1], 1), "max": round(max(series), 1)}
        return {"planned": self.plan.kills, "sent": len(self.kills), "missed": self.missed, "killed": killed,
                "kills": list(self.kills), "memory_mb": memory, "samples": len(self.samples)}

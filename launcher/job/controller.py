"""The controller: the driver's watch loop, which keeps a job alive through failures.

Twice a second it collects finished workers, checks that every shard is the
same life it was (a Ray restart changes its pid), records a history row,
looks for stalls, cuts a checkpoint when one is due, fires the chaos knobs
and follows ``psctl scale``. What to do about a failure or a stall it asks
small injected policies (launcher/job/policies.py):

- a worker died: it leaves every clock table at once, the work queue takes
  back what it held but never got applied, and a new incarnation joins at
  the clock the shards agree on;
- a shard died: Ray restarts it and it restores the newest valid checkpoint
  by itself; the controller rolls the other shards and the work queue back
  to the same cut, has the restarted shard serve where it served, and ends
  the recovery, on which every worker registers again and carries on;
- a worker stalled: the report names it, its step, its stack and its node;
  the stall policy may also replace it or fail the job.

Every wait on an actor, and every kill, goes through the runtime it is given
(runtime.py): Ray's in a job; in tests an in-process one, so the accounting
above runs against the real shards, queue and workers without a cluster.
The tick, the call timeout and the startup grace are arguments for the same
reason: a test shortens them rather than sleeping.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

from ...errors import JobError, StallError
from ...runtime import RAY, Runtime
from ...ps.core.placement_info import rss_bytes
from .chaos_monkey import ChaosMonkey
from .checkpointing import Checkpointer, merged_ledgers
from .faults import RandomKills
from .monitor import Monitor, name_failure
from .policies import RestartBudget, StallWatch

log = logging.getLogger(__name__)

TICK_S = 0.5  # how long the loop waits for a worker to finish before it looks at the shards again
CALL_S = 10.0  # how long a control call to a live actor may take
STARTUP_S = 60.0  # how long a new worker may take to push its first gradient before it counts as stalled
PLACE_S = 60.0  # how long every actor may take to come up at the job's start
SETTLE_S = 2.0  # after the last random kill, how long before the shards are taken to be alive as they answer
CUT_TRIES = 5  # checkpoints tried before a change of servers waits for the next tick


@dataclass
class WorkerSlot:
    actor: object
    incarnation: int
    ref: object | None = None  # its run() in flight; None once it returned
    start_clock: int = 0  # the clock it joined at: until it moves, the worker is still starting
    generation: int = 0  # the work queue's generation it starts in
    started: float = field(default_factory=time.monotonic)


class Controller:
    def __init__(self, shards: list, coordinator, start_worker: Callable[[int, int], object], initial: dict[int, int],
                 monitor: Monitor, budget: RestartBudget, stalls: StallWatch,
                 checkpointer: Checkpointer | None, serve_again: Callable[[int], None],
                 shard_faults: list = (), waits: bool = True,
                 runtime: Runtime = RAY, tick_s: float = TICK_S, call_s: float = CALL_S,
                 startup_s: float = STARTUP_S, random_kills: RandomKills = RandomKills(),
                 shm_dirs: tuple = ()):
        self.runtime = runtime
        self.tick_s, self.call_s, self.startup_s = tick_s, call_s, startup_s
        self.shards = shards
        self.coordinator = coordinator
        self.start_worker = start_worker
        self.monitor = monitor
        self.budget = budget
        self.stalls = stalls
        self.checkpointer = checkpointer
        self.serve_again = serve_again
        self.shard_faults = list(shard_faults)
        self.waits = waits  # whether workers wait on each other (ssp, bsp): a stalled one may only be waiting
        self.event = monitor.event  # what the controller does and sees goes on the record, and to the terminal
        self.slots: dict[int, WorkerSlot] = {}
        self.reports: dict[int, list[dict]] = {}
        self.lives = [self._get(s.life.remote()) for s in shards]
        self.versions = [0] * len(shards)
        self.last_ledger: dict[int, tuple[int, int]] = {}  # worker -> (incarnation, last seq), as last seen
        self.counts: Counter = Counter()  # steps_lost, steps_replayed, rollbacks, replaced, added, removed
        self.stall_reports: list[dict] = []
        self.restored_checkpoint: int | None = None
        self.removed: set[int] = set()
        self._silent: dict[int, float] = {}  # shard -> when it first did not answer
        self._silent_reported: set[int] = set()
        self._wanted = len(initial)
        self._initial = dict(initial)  # worker -> the incarnation it starts as (> 0: resumed, so it joins)
        self.shm_dirs = tuple(shm_dirs)  # the job's shared-memory segments: their bytes are sampled under chaos
        self._shard_rss: list[int] = []
        self._restarted: dict[int, int] = {}  # shard -> the checkpoint its new life restored, until recovered
        self._recovery: dict | None = None  # what the recovery under way counts from (ledgers, versions)
        self._dead: dict[int, WorkerSlot] = {}  # died, not yet replaced (a shard was restarting meanwhile)
        self.monkey = ChaosMonkey(random_kills, self._targets, self._memory, runtime) if random_kills.kills else None

    # ---- the loop -------------------------------------------------------------------

    def run(self, placement: dict | None = None) -> list[dict]:
        """Start the workers and keep the job going until every worker is done; their reports.
        ``placement`` is filled with the node of every shard and initial worker."""
        for w, incarnation in sorted(self._initial.items()):
            if incarnation:
                self._join(w, incarnation, run=False)
            else:
                self._launch(w, 0, run=False)
        # Every actor up before any trains, so the workers start together (as a static job would).
        where = self._placement()
        if placement is not None:
            placement.update(where)
        for slot in self.slots.values():
            slot.ref = slot.actor.run.remote(slot.generation)
            slot.started = time.monotonic()
        self.train_began = time.monotonic()  # training time starts once the workers are up
        self.monitor.start()
        if self.monkey is not None:
            self.monkey.start()
        try:
            self._watch()
            while self.monkey is not None and self._after_the_last_kill():
                self._watch()  # a kill sent as training ended brought work back: train it again
        finally:
            if self.monkey is not None:
                self.monkey.stop()
                self._note_chaos()
        stats = self._stats()  # a last row: the history ends where training did
        if stats is not None:
            self.monitor.tick(stats, self._reported())
            self.coordinator.report_progress.remote(self.monitor.progress.fields())
        self.monitor.close()
        return [r for w in sorted(self.reports) for r in self.reports[w]]

    def _watch(self) -> None:
        """Tick until every worker is done."""
        while self._working():
            self._note_chaos()
            self._collect()
            if not self._check_shards():
                continue  # a shard is restarting or silent: its stats would only wait
            if self._dead:
                self._replace_dead()
            stats = self._stats()
            if stats is None:
                continue
            self.monitor.tick(stats, self._reported())
            now, progress = self.monitor.now(), self.monitor.progress
            self.coordinator.report_progress.remote(progress.fields())  # the dashboard's figures, the same
            self._watch_stalls(stats)
            if self.checkpointer is not None and self.checkpointer.due(now, progress.step):
                self._checkpoint(now, progress.step)
            self._fire_chaos(now, progress.step)
            self._follow_scale()

    def _working(self) -> bool:
        """Whether training goes on: a worker is running, or a dead one waits for its replacement."""
        return bool(self._dead) or any(slot.ref is not None for slot in self.slots.values())

    def _checkpoint(self, now: float, step: int) -> None:
        index = self.checkpointer.take(self.shards, self.coordinator, self.monitor.history, now=now, step=step)
        if index is not None:
            self.coordinator.record.remote("checkpoint")
            self.event("checkpoint", f"checkpoint {index} cut at step {step:,}", quiet=True, checkpoint=index)

    def _placement(self) -> dict:
        named = [(f"ps-shard-{i}", s) for i, s in enumerate(self.shards)]
        named += [(f"worker-{w}", slot.actor) for w, slot in sorted(self.slots.items())]
        try:
            where = self._get([actor.where.remote() for _, actor in named], PLACE_S)
        except self.runtime.ActorError as e:  # an actor died starting up: name it
            raise self._name_failure("the job's start", e) from e
        return {name: w for (name, _), w in zip(named, where)}

    def _launch(self, worker_id: int, incarnation: int, start_clock: int = 0, run: bool = True) -> None:
        generation, _ = self._get(self.coordinator.status.remote())
        actor = self.start_worker(worker_id, incarnation)
        self.slots[worker_id] = WorkerSlot(actor, incarnation, actor.run.remote(generation) if run else None,
                                           start_clock, generation)

    def _collect(self) -> None:
        running = {slot.ref: w for w, slot in self.slots.items() if slot.ref is not None}
        if not running:  # every worker died and waits for its replacement: nothing to wait on but time
            time.sleep(self.tick_s)
            return
        done, _ = self.runtime.wait(list(running), num_returns=len(running), timeout=self.tick_s)
        for ref in done:
            worker = running[ref]
            slot = self.slots[worker]
            slot.ref = None
            try:
                self.reports.setdefault(worker, []).append(self.runtime.get(ref))
            except self.runtime.ActorError as e:  # its process is gone: a failure the policy may recover from
                self._worker_died(worker, slot, e)
            except Exception as e:  # its own error (bad data, a bug): it would only fail again
                raise self._name_failure(f"worker-{worker}", e) from e

    def _stats(self) -> dict | None:
        try:  # shard 0's brings the history rows it wrote by work since the last look
            stats = self._get([s.stats.remote(**({"rows": True, "rows_after": self.monitor.cursor} if i == 0 else {}))
                               for i, s in enumerate(self.shards)])
        except (self.runtime.ActorError, self.runtime.GetTimeoutError):
            return None  # a shard is restarting or gone: _check_shards deals with it next tick
        self.versions = [s["version"] for s in stats]
        self._shard_rss = [s.get("rss_bytes", 0) for s in stats]
        self.last_ledger = merged_ledgers([s["ledger"] for s in stats])
        return stats[0]

    def _reported(self) -> list[dict]:
        """What the training loops reported since the last tick (``report()``, worker/loop/context.py)."""
        try:
            return self._get(self.coordinator.reported.remote(self.monitor.report_cursor))
        except (self.runtime.ActorError, self.runtime.GetTimeoutError):
            return []

    def _get(self, refs, timeout: float | None = None):
        """A control call's answer: a live actor answers within ``call_s``."""
        return self.runtime.get(refs, timeout=self.call_s if timeout is None else timeout)

    def _name_failure(self, name: str, error: Exception) -> JobError:
        return name_failure(self.shards, [s.actor for s in self.slots.values()], name, error, self.runtime)

    # ---- workers ----------------------------------------------------------------------

    def _worker_died(self, worker: int, slot: WorkerSlot, error: Exception) -> None:
        cause = _cause(error)
        name = f"worker-{worker}"
        self.event("worker-died", f"{name} died (incarnation {slot.incarnation}): {cause}", worker=worker)
        decision = self.budget.on_failure(name, cause)
        self.coordinator.record.remote("restart", name)
        self.stalls.forget(worker)
        if decision.action == "give_up":
            raise self.budget.give_up(decision)
        self._dead[worker] = slot
        self._replace_dead()

    def _replace_dead(self) -> None:
        """Take each dead worker out of every clock table and the queue, and start its next incarnation.

        Every step needs every shard: while one is restarting (another failure, overlapping this one), the
        rest waits for a later tick, after the recovery. Each step may run again: leaving, and giving the
        leases back, do nothing the second time.
        """
        for worker, slot in sorted(self._dead.items()):
            try:
                # It leaves every clock table at once, so nobody waits for it, whatever comes next.
                self._get([s.finish.remote(worker, slot.incarnation) for s in self.shards])
                applied = self._applied(worker, slot.incarnation)
                back = self._get(self.coordinator.release.remote(worker, {slot.incarnation: applied}))
                self._join(worker, slot.incarnation + 1)
            except (self.runtime.ActorError, self.runtime.GetTimeoutError) as e:
                log.warning("worker-%d's replacement waits for the shards to recover: %s", worker, _cause(e))
                return
            del self._dead[worker]
            log.warning("worker-%d: %d of its batches went back to the queue (its pushes up to seq %d were"
                        " applied)", worker, back, applied)
            # what it did before it died still counts as its steps
            self.reports.setdefault(worker, []).append({"worker_id": worker, "incarnation": slot.incarnation,
                                                        "steps": applied, "samples": 0, "died": True})
            self.counts["replaced"] += 1

    def _applied(self, worker: int, incarnation: int) -> int:
        """The last seq of this incarnation any shard applied (a push that reached some shards is done)."""
        ledgers = self._get([s.ledger.remote() for s in self.shards])
        return max((lg[worker][1] for lg in ledgers if worker in lg and lg[worker][0] == incarnation), default=0)

    def _join(self, worker: int, incarnation: int, run: bool = True) -> None:
        """Start ``incarnation`` of ``worker`` at the clock every shard agrees it may start from."""
        frontier = self._join_shards(worker, incarnation)
        self._launch(worker, incarnation, frontier, run)
        if incarnation:  # a replacement (or a resumed job's worker): a new life, on the record
            self.event("worker-joined", f"worker-{worker} incarnation {incarnation} joined at clock {frontier}",
                       worker=worker, incarnation=incarnation)

    def _join_shards(self, worker: int, incarnation: int) -> int:
        """Join ``incarnation`` on every shard at the highest frontier any reports; that clock."""
        frontier = max(self._get([s.frontier.remote() for s in self.shards]))
        self._get([s.join.remote(worker, incarnation, frontier) for s in self.shards])
        return frontier

    # ---- shards -----------------------------------------------------------------------

    def _check_shards(self) -> bool:
        """Whether every shard answered as the life it was; restarts and silences are dealt with here."""
        answered = True
        probes = [s.life.remote() for s in self.shards]
        self.runtime.wait(probes, num_returns=len(probes), timeout=min(self.call_s, self.stalls.stall_s))
        for i, probe in enumerate(probes):
            try:
                life = self._get(probe, timeout=0)
            except self.runtime.ActorDiedError as e:  # Ray will not restart it (again): the budget is spent
                decision = self.budget.on_failure(f"ps-shard-{i}", _cause(e))
                if decision.action == "give_up":
                    raise self.budget.give_up(decision) from e
                raise JobError(f"ps-shard-{i} died and Ray cannot restart it: {_cause(e)}") from e
            except self.runtime.ActorUnavailableError:  # restarting: the workers wait for the recovery
                self._get(self.coordinator.begin_recovery.remote())
                answered = False
                continue
            except self.runtime.GetTimeoutError:  # alive but not answering: a hung shard stalls everyone
                self._shard_silent(i)
                answered = False
                continue
            self._silent.pop(i, None)
            if life["pid"] != self.lives[i]["pid"]:
                self._shard_restarted(i, life)
        if answered and self._restarted:
            answered = self._recover()
        return answered

    def _shard_silent(self, i: int) -> None:
        since = self._silent.setdefault(i, time.monotonic())
        stuck = time.monotonic() - since + min(self.call_s, self.stalls.stall_s)
        if stuck < self.stalls.stall_s or i in self._silent_reported:
            return
        self._silent_reported.add(i)
        text = (f"stall: ps-shard-{i} has not answered for {stuck:.0f} s (pid {self.lives[i]['pid']});"
                " every worker waits for it")
        log.error("%s", text)
        self.event("stall", text, shard=i, stuck_s=round(stuck, 1))
        self.stall_reports.append({"shard": i, "stuck_s": round(stuck, 1), "pid": self.lives[i]["pid"],
                                   "text": text})
        if self.stalls.action == "fail":
            raise StallError(text)

    def _shard_restarted(self, i: int, life: dict) -> None:
        """A new life of shard ``i``, restored from a checkpoint by itself: on the record, and to recover."""
        name = f"ps-shard-{i}"
        self._get(self.coordinator.begin_recovery.remote())
        cause = f"its process (pid {self.lives[i]['pid']}) died; Ray restarted it as pid {life['pid']}"
        self.event("shard-died", f"{name} died: {cause}", shard=i)
        decision = self.budget.on_failure(name, cause)
        self.coordinator.record.remote("restart", name)
        if decision.action == "give_up":
            raise self.budget.give_up(decision)
        self.lives[i] = life
        if life["restored"] is None or self.checkpointer is None:
            raise JobError(f"{name} restarted but found no checkpoint to restore")
        if not self._restarted:  # a new recovery: how far every worker had got before it
            self._recovery = {"before": self._ledgers_before(i), "undone": 0,
                              "versions": list(self.versions)}
        self._restarted[i] = life["restored"]

    def _ledgers_before(self, i: int) -> dict:
        """Each worker's newest applied (incarnation, seq) before a rollback: the survivors know it best."""
        try:
            survived = self._get([s.ledger.remote() for j, s in enumerate(self.shards) if j != i])
        except (self.runtime.ActorError, self.runtime.GetTimeoutError):
            survived = []  # another is down too: what the last stats saw will do
        return merged_ledgers([self.last_ledger, *survived])

    def _recover(self) -> bool:
        """Bring every shard to the checkpoint the restarted ones restored, have them serve again, and the
        queue back to the same cut; whether that is done.

        A shard may die in the middle of it (faults overlap): then the recovery is left for a later tick,
        when the new death is known too, and runs again from the top for every restarted shard at once.
        Every step may run twice: a restore, serving, rewinding the queue and rejoining the workers come
        out the same.
        """
        step = min(self._restarted.values())
        try:
            undone = self._get([s.restore.remote(self.checkpointer.root, step) for j, s in enumerate(self.shards)
                                if self._restarted.get(j) != step])
            self._recovery["undone"] = max([self._recovery["undone"], *undone])  # a second try undoes nothing
            for i in sorted(self._restarted):
                self.serve_again(i)
            restored = self._get([self.shards[i].stats.remote() for i in self._restarted])
            self.checkpointer.rewind(step, self.shards, self.coordinator)
            now = merged_ledgers(self._get([s.ledger.remote() for s in self.shards]))
            self._reconcile()
        except (self.runtime.ActorError, self.runtime.GetTimeoutError) as e:
            log.warning("the recovery from checkpoint %d waits: a shard failed during it: %s", step, _cause(e))
            return False
        recovery, dead = self._recovery, sorted(self._restarted)
        self._restarted, self._recovery = {}, None
        # The dead shards' own counts died with them: the most any shard undid, or (every shard dead) what
        # the last stats saw them reach.
        lost = recovery["undone"] if len(dead) < len(self.shards) else \
            max(max(0, recovery["versions"][i] - r["version"]) for i, r in zip(dead, restored))
        # the batches applied after the cut (as last seen), which the queue now hands out again
        replayed = sum(max(0, seq - now[w][1]) for w, (inc, seq) in recovery["before"].items()
                       if w in now and now[w][0] == inc)
        self.counts["rollbacks"] += 1
        self.counts["steps_lost"] += lost
        self.counts["steps_replayed"] += replayed
        self.restored_checkpoint = step
        self.monitor.went_back(replayed)
        cut_at = self.checkpointer.step_of(step)
        workers = self.monitor.extent.workers
        names = ", ".join(f"ps-shard-{i}" for i in dead)
        self.event("restore", f"{names}: restored checkpoint {step}" + (f" (cut at step {cut_at:,})" if cut_at
                   is not None else "") + f"; every shard rolled back to it: {replayed:,} batches"
                   f" ({round(replayed / workers):,} steps per worker) go round again",
                   shard=dead[0], shards=dead, checkpoint=step, checkpoint_step=cut_at, replayed_batches=replayed,
                   undone_updates=lost)
        self._get(self.coordinator.end_recovery.remote())
        return True

    def _reconcile(self) -> None:
        """After a rollback, make the restored clock tables match the workers that are really there."""
        ledgers = self._get([s.ledger.remote() for s in self.shards])
        restored = {w for lg in ledgers for w in lg}
        for w in restored - set(self.slots):  # not running any more (removed): nobody may wait for it
            self._get([s.finish.remote(w) for s in self.shards])
        for w, slot in self.slots.items():
            if w in self._dead:  # died: replaced once every shard answers (_replace_dead)
                continue
            if slot.ref is None and w not in self.removed:  # it had finished: its data after the cut comes back
                self._get([s.finish.remote(w) for s in self.shards])
                self._join(w, slot.incarnation + 1)
            elif slot.ref is not None and any(lg.get(w, (None,))[0] != slot.incarnation for lg in ledgers):
                self._join_shards(w, slot.incarnation)
            elif slot.ref is None:
                self._get([s.finish.remote(w) for s in self.shards])

    # ---- stalls, chaos, scaling ---------------------------------------------------------

    def _watch_stalls(self, stats: dict) -> None:
        now = time.monotonic()
        running = {int(w): c for w, c in stats["clocks"].items()
                   if int(w) in self.slots and self.slots[int(w)].ref is not None}
        clocks = {w: c for w, c in running.items() if self._watched(w, c, now)}
        stalled = self.stalls.observe(now, clocks)
        if not stalled:
            return
        if self.waits:
            # Under ssp and bsp the others stop too, held by the bound: only the worker furthest back blocks
            # them (and if that is one still starting, the rest are only waiting for it).
            lowest = min(running.values())
            blockers = [w for w in stalled if clocks[w] == lowest]
        else:
            blockers = list(stalled)
        for worker in blockers:
            report = self._stall_report(worker, stalled[worker], clocks)
            self.stall_reports.append(report)
            self.coordinator.record.remote("stall", f"worker-{worker}", report["stuck_s"])
            self.event("stall", report["text"], **{k: report[k] for k in ("worker", "stuck_s", "waiting")},
                       at_clock=report["step"])
            if self.stalls.action == "fail":
                raise StallError(report["text"])
            if self.stalls.action == "replace":
                self.runtime.kill(self.slots[worker].actor)  # collected as a death next tick, within the budget

    def _watched(self, worker: int, clock: int, now: float) -> bool:
        """Running, and past its start: building a model and connecting may take longer than stall_s."""
        slot = self.slots.get(worker)
        if slot is None or slot.ref is None:
            return False
        return clock > slot.start_clock or now - slot.started > self.startup_s + self.stalls.stall_s

    def _stall_report(self, worker: int, stuck: float, clocks: dict[int, int]) -> dict:
        slot = self.slots[worker]
        try:
            doing = self._get(slot.actor.stack.remote(), timeout=2.0)
        except Exception as e:  # noqa: BLE001 - a hung process may not even answer this
            doing = {"stack": f"(no answer: {type(e).__name__})", "clock": clocks.get(worker)}
        waiting = sorted(w for w, c in clocks.items() if w != worker and c > clocks[worker])
        text = (f"stall: worker-{worker} has not pushed for {stuck:.0f} s, at step {clocks[worker]}"
                f" (pid {doing.get('pid')}, node {doing.get('node_ip')})"
                + (f"; workers {waiting} are ahead of it" if waiting else "")
                + f". It is in:\n{doing.get('stack', '').rstrip()}")
        log.error("%s", text)
        return {"worker": worker, "step": clocks[worker], "stuck_s": round(stuck, 1), "waiting": waiting,
                "pid": doing.get("pid"), "node": doing.get("node_ip"), "stack": doing.get("stack"), "text": text}

    def _fire_chaos(self, now: float, step: int) -> None:
        for kind, fault in list(self.shard_faults):
            if (fault.seconds and now >= fault.at) or (not fault.seconds and step >= fault.at):
                self.shard_faults.remove((kind, fault))
                self.event("chaos", f"chaos: {'SIGKILL of' if kind == 'kill' else 'hang of'} {fault.actor}",
                           actor=fault.actor, fault=kind)
                shard = self.shards[fault.index]
                (shard.die if kind == "kill" else shard.hang).remote()

    def _note_chaos(self) -> None:
        """The random kills sent since the last tick, on the record (chaos.random)."""
        if self.monkey is not None:
            for kill in self.monkey.drain():
                self.event("chaos", kill["text"], actor=kill["actor"], fault="kill", pid=kill["pid"],
                           killed_at_s=kill["at_s"])

    def _after_the_last_kill(self) -> bool:
        """Stop the random kills once training is done, and settle any the last moments sent: a shard that
        died then is recovered like any other (its rollback hands finished workers' batches out again).
        Whether that brought work back."""
        self.monkey.stop()
        self._note_chaos()
        time.sleep(max(0.0, SETTLE_S - self.monkey.since_last_kill()))  # long enough for Ray to see a death
        while not self._check_shards():
            time.sleep(self.tick_s)
        return self._working()

    def _targets(self) -> list[tuple[str, object]]:
        """The actors a random kill may take now: every shard, and every worker still running."""
        shards = [(f"ps-shard-{i}", s) for i, s in enumerate(self.shards)]
        return shards + [(f"worker-{w}", slot.actor) for w, slot in list(self.slots.items()) if slot.ref is not None]

    def _memory(self) -> dict[str, int]:
        """Bytes now: the driver's RSS, the shards' (as their last stats said), the job's shared memory."""
        out = {"driver": rss_bytes()}
        if self._shard_rss:
            out["shards"] = sum(self._shard_rss)
        if self.shm_dirs:
            out["shm"] = sum(f.stat().st_blocks * 512 for d in self.shm_dirs if Path(d).is_dir()
                             for f in Path(d).iterdir() if f.is_file())
        return out

    def _follow_scale(self) -> None:
        """Act on a new ``psctl scale`` request (only a change: workers that finish are not replaced)."""
        wanted, servers = self._get(self.coordinator.asks.remote())
        if servers is not None and servers != len(self.shards):
            self._change_servers(servers)
        if wanted == self._wanted:
            return
        self._wanted = wanted
        running = sorted(w for w, s in self.slots.items() if s.ref is not None and w not in self.removed)
        if wanted > len(running):
            for _ in range(wanted - len(running)):
                worker = max(self.slots) + 1
                self._join(worker, 0)
                self.counts["added"] += 1
                self.event("worker-added", f"scale: worker-{worker} joined ({wanted} wanted)", worker=worker)
        elif 0 < wanted < len(running):
            for worker in running[wanted:]:
                self.removed.add(worker)
                self._get(self.coordinator.remove.remote(worker))
                self.counts["removed"] += 1
                self.event("worker-removed", f"scale: worker-{worker} leaves after its current unit"
                           f" ({wanted} wanted)", worker=worker)


    def _change_servers(self, servers: int) -> None:
        """``psctl scale --servers``: cut a checkpoint and end this run of the job, for the driver to start it
        again from that cut on ``servers`` shards (ServersChanged). Stop-the-world: the workers' progress
        past the cut is trained again."""
        asked = time.monotonic()
        if self.checkpointer is None:
            self.coordinator.set_wanted_servers.remote(len(self.shards))
            self.event("scale-refused", f"scale: cannot change the job's servers to {servers} without"
                       " checkpoints (checkpoint.enabled is false)")
            return
        index = None
        for _ in range(CUT_TRIES):  # a cut is abandoned when a push of it never lands (a worker died mid-push)
            index = self.checkpointer.take(self.shards, self.coordinator, self.monitor.history,
                                           now=self.monitor.now(), step=self.monitor.progress.step)
            if index is not None:
                break
        if index is None:
            self.event("scale-deferred", f"scale: no checkpoint could be cut to change the servers to {servers};"
                       " trying again")
            return
        self.event("servers-changing", f"scale: {len(self.shards)} -> {servers} shards from checkpoint {index}"
                   f" (cut at step {self.monitor.progress.step:,}); every actor stops", checkpoint=index)
        self.monitor.close()  # the next run of the job has a monitor of its own
        raise ServersChanged(servers, index, asked)


class ServersChanged(Exception):
    """The job is to go on from checkpoint ``index`` on ``servers`` shards (the driver starts it again)."""

    def __init__(self, servers: int, index: int, asked: float):
        super().__init__(f"servers changing to {servers} from checkpoint {index}")
        self.servers, self.index, self.asked = servers, index, asked


def _cause(error: Exception) -> str:
    """One line on what killed an actor: Ray's own messages run to a paragraph."""
    cause = getattr(error, "cause", None) or error
    text = " ".join(str(cause).split())
    for marker in ("Worker exit detail:", "The actor is dead because"):
        if marker in text:  # the part that says how it died, up to its first full stop
            text = text[text.index(marker):]
            break
    return f"{type(cause).__name__}: {text.split('. ')[0][:200]}"

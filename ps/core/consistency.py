"""Consistency: when a worker may begin an iteration, and what a push does. Every rule of it is here.

A *mode* is one object (``Mode``) a table asks: may this worker begin
iteration t (``admits``), what does its push do (``on_push``: apply it now,
gather it into a round, or drop it as late), and how many gathered pushes
step a round (``quorum``). The launcher asks the same object what the mode
means for a job: its bound, its label, whether workers may compute ahead,
how many updates a clock makes. ``Consistency`` is the state a table keeps
to answer with (the clock table, the round being gathered, who joined when)
and the staleness-aware learning rate. The dense range (ps/core/dense.py)
and every sparse table (ps/sparse/table.py) hold one each and use it alike.

The built-in modes:

- ``asp``: always admitted; each push applied as it arrives.
- ``ssp(s)``: a worker may begin iteration t only when every live worker has
  completed t - s - 1: its lead over the slowest live worker is at most s.
- ``bsp``: the pushes of clock c are gathered from every live worker (or the
  first ``quorum`` of them: backup workers) and stepped once, in worker
  order; a worker may begin t once round t - 1 stepped. A push for a round
  that already stepped is dropped and counted, never applied.

A new mode is a ``Mode`` subclass passed to ``register_mode``: nothing else
names modes. Workers that finish or die leave the clock table (ps/core/clocks.py),
so nobody waits for them. Pure logic, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ...errors import ConfigError, OutOfOrderError
from ...settings import number, require
from .clocks import ClockTable


class Mode:
    """The rules of one consistency mode. Subclass it, set ``name``, override what differs, register it."""

    name = ""
    #: pushes of one clock wait in a round and step together
    gathers = False
    #: a worker can be held back by another's progress, so a stalled worker may only be waiting
    waits = True
    #: an idle worker may take units queued for another (a round needs every worker's own clock)
    steals = True

    def check(self, config: "ConsistencyConfig") -> None:
        """Refuse settings this mode cannot keep (raise ConfigError, naming the setting)."""
        require(config.quorum is None, f"quorum ({config.quorum}) applies to mode 'bsp' only, not {self.name!r}")

    def bound(self, config: "ConsistencyConfig") -> int | None:
        """The staleness bound the mode guarantees; None when it has none."""
        return None

    def label(self, config: "ConsistencyConfig", workers: int) -> str:
        """How the progress line and the summary name the mode."""
        return self.name

    def computes_ahead(self, config: "ConsistencyConfig") -> bool:
        """May a worker compute its next step before its pull lands (``overlap``) without breaking the bound?"""
        return True

    def overlaps_by_default(self, config: "ConsistencyConfig") -> bool:
        """Whether ``overlap: auto`` turns computing ahead on. Off in every bundled mode: it adds a step of
        staleness to every gradient and bought no speed for the MLP on 2 cores (docs/consistency.md)."""
        return False

    def decays_by_default(self, config: "ConsistencyConfig") -> bool:
        """Whether ``schedule: auto`` decays the lr over the job's last fifth (else keeps it constant). Stale
        updates leave the last steps noisy: a transformer under ssp and asp ended up to 7 points short of one
        process at a constant lr, and within 0.4 points with the decay (docs/consistency.md)."""
        return True

    def updates_per_clock(self, workers: int) -> int:
        """Optimizer steps one clock of every worker makes: the learning-rate schedule's horizon."""
        return workers

    def admits(self, state: "Consistency", clock: int) -> bool:
        """May a worker begin iteration ``clock`` (>= 1)?"""
        return True

    def on_push(self, state: "Consistency", worker_id: int, clock: int) -> str:
        """What a new push of ``clock`` does: ``"apply"`` now, ``"gather"`` into the round, or ``"late"``."""
        return "apply"

    def quorum(self, state: "Consistency", expected: int) -> int:
        """How many of the ``expected`` workers' pushes step a round (gathering modes)."""
        return expected

    def frontier(self, state: "Consistency") -> int:
        """The completed clock a joining worker starts from, so it neither blocks nor leads anyone."""
        slowest = state.clocks.min_completed()
        return state.high if slowest is None else slowest


class Asp(Mode):
    name = "asp"
    waits = False


class Ssp(Mode):
    name = "ssp"

    def bound(self, config):
        return config.staleness

    def label(self, config, workers):
        return f"ssp s={config.staleness}"

    def computes_ahead(self, config):
        return config.staleness >= 1  # one iteration ahead is one more of staleness

    def admits(self, state, clock):
        return state.clocks.lead(clock) <= state.config.staleness


class Bsp(Mode):
    name = "bsp"
    gathers = True
    steals = False

    def check(self, config):
        pass  # quorum is bsp's own setting

    def bound(self, config):
        return 0

    def label(self, config, workers):
        return "bsp" if config.quorum is None else f"bsp {config.quorum}/{workers}"

    def computes_ahead(self, config):
        return False  # a round needs this worker's own next push

    def decays_by_default(self, config):
        return False  # its updates are one process's, large-batch: a constant lr keeps them comparable

    def updates_per_clock(self, workers):
        return 1

    def admits(self, state, clock):
        return state.round_clock >= clock

    def on_push(self, state, worker_id, clock):
        if clock < state.round_clock:  # its round stepped without it (backup workers)
            return "late"
        if clock > state.round_clock:
            raise OutOfOrderError(f"{state.where}: worker {worker_id} pushed clock {clock} while clock"
                                  f" {state.round_clock} is still being gathered; bsp workers must wait for each step")
        return "gather"

    def quorum(self, state, expected):
        k = state.config.quorum
        return expected if k is None else min(k, expected)

    def frontier(self, state):
        return state.round_clock - 1


_MODES: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Make ``mode`` known by its name to every config, shard and job of this process (and, through the
    config that carries it, to the actors the job starts)."""
    require(isinstance(mode, Mode) and isinstance(mode.name, str) and mode.name != "",
            f"a consistency mode must be a named Mode instance, got {mode!r}")
    known = _MODES.get(mode.name)
    if known is not None and type(known) is not type(mode):
        raise ConfigError(f"a consistency mode named {mode.name!r} is already registered ({type(known).__name__})")
    _MODES[mode.name] = mode
    return mode


def registered_modes() -> tuple[str, ...]:
    return tuple(_MODES)


for _mode in (Asp(), Ssp(), Bsp()):
    register_mode(_mode)


@dataclass(frozen=True)
class ConsistencyConfig:
    """How workers are kept in step. See the module docstring for the rules."""

    mode: str = "ssp"
    staleness: int = 2  # ssp only: the bound s
    quorum: int | None = None  # bsp only: step after the first k gradients (backup workers)
    staleness_aware_lr: bool = False  # scale each update's step by 1 / max(1, staleness)

    def __post_init__(self) -> None:
        require(self.mode in _MODES, f"mode ({self.mode!r}) must be one of {', '.join(_MODES)}")
        number(self.staleness, "staleness", minimum=0, integer=True)
        if self.quorum is not None:
            number(self.quorum, "quorum", minimum=1, integer=True)
        require(isinstance(self.staleness_aware_lr, bool),
                f"staleness_aware_lr ({self.staleness_aware_lr!r}) must be true or false")
        rules = _MODES[self.mode]
        rules.check(self)
        # The mode object travels with the config (pickled by reference to its class), so the actors of a
        # job know a mode registered only where the job was built.
        object.__setattr__(self, "_rules", rules)

    @property
    def rules(self) -> Mode:
        return self._rules  # type: ignore[attr-defined]

    @property
    def bound(self) -> int | None:
        """The staleness bound the mode guarantees: s for ssp, 0 for bsp, None for asp."""
        return self.rules.bound(self)


#: What a table records of a gathered push until its round steps: arrays, numbers, None.
Record = dict[str, Any]


class Consistency:
    """One table's consistency state: its clocks, the round being gathered, who joined when.

    The table calls ``accept`` for each new push, applies what it says to apply,
    records what it says to gather, and after every change takes the round if it
    is complete (``take_round``). ``where`` names the table in error messages.
    """

    def __init__(self, config: ConsistencyConfig, worker_ids: Iterable[int], where: str = ""):
        self.config = config
        self.mode = config.rules
        self.where = where
        self.clocks = ClockTable(worker_ids)
        self.joined_at = {int(w): 0 for w in worker_ids}  # the completed clock each worker (re)joined at
        self.high = 0  # the highest clock any worker completed: where a worker joins when none is live
        self.round_clock = 1  # gathering modes: the clock whose pushes are being gathered ...
        self.round: dict[int, Record] = {}  # ... and what each worker pushed for it

    # ---- the questions a table asks --------------------------------------------------

    def admits(self, clock: int) -> bool:
        """May a worker begin iteration ``clock``? (0 or less: a read with no clock, always.)"""
        return clock <= 0 or self.mode.admits(self, clock)

    def lead(self, clock: int) -> int:
        return self.clocks.lead(clock)

    def frontier(self) -> int:
        return self.mode.frontier(self)

    def may_compute_ahead(self, ahead: int) -> bool:
        return ahead == 0 or (ahead > 0 and self.mode.computes_ahead(self.config))

    def may_advance(self, clock: int) -> bool:
        """May a worker's clock move to ``clock`` without a push? Not past a gathering mode's round being
        gathered: the round would wait forever for a push the worker can no longer make."""
        return not self.mode.gathers or clock < self.round_clock

    def accept(self, worker_id: int, clock: int, record: Callable[[], Record]) -> str:
        """A new push of ``clock`` (checked, not a duplicate): ``"apply"`` it now, or it was ``"gathered"``
        (``record()`` is kept for its round), or it is ``"late"`` (its round stepped without it). The
        worker's clock advances either way."""
        action = self.mode.on_push(self, worker_id, clock)
        if action == "gather":
            self.round[worker_id] = record()
            action = "gathered"
        self.clocks.advance(worker_id, clock)
        self.high = max(self.high, clock)
        return action

    def take_round(self) -> list[tuple[int, Record]] | None:
        """The round's pushes in worker order (never arrival order: a run is reproducible bit for bit) once
        its quorum is in, and the next round begins; None while it waits."""
        if not self.mode.gathers:
            return None
        if not self.round:
            # A round no live worker owes (each joined past it) would wait forever for pushes nobody will
            # send: it steps nothing, and the rounds go on from the slowest worker's next clock. (Shards may
            # stand one round apart when a worker dies between its pushes to them, and a replacement joins at
            # the furthest shard's frontier.)
            slowest = self.clocks.min_completed()
            if slowest is not None and slowest >= self.round_clock:
                self.round_clock = slowest + 1
            return None
        # Only live workers' pushes count toward the quorum: one that pushed and left must not let the
        # round step without a live worker's push. One that joined after it began owes it nothing.
        expected = {w for w in self.clocks.live if self.joined_at.get(w, 0) < self.round_clock}
        if sum(w in expected for w in self.round) < self.mode.quorum(self, len(expected)):
            return None
        taken = [(w, self.round[w]) for w in sorted(self.round)]
        self.round = {}
        self.round_clock += 1
        return taken

    def lr(self, lr: float, staleness: list[int]) -> float:
        """The step size of one update made of pushes of the given staleness."""
        return lr / max(1, max(staleness)) if self.config.staleness_aware_lr else lr

    # ---- workers coming and going ---------------------------------------------------

    def join(self, worker_id: int, clock: int) -> None:
        """``worker_id`` (a replacement, or a worker added mid-job) joins with ``clock`` completed."""
        self.clocks.join(worker_id, clock)
        self.joined_at[worker_id] = clock

    def leave(self, worker_id: int) -> None:
        if self.clocks.is_live(worker_id):
            self.clocks.leave(worker_id)

    # ---- checkpoints ----------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"clocks": self.clocks.state_dict(), "joined_at": dict(self.joined_at), "high": self.high,
                "round_clock": self.round_clock, "round": {w: _copied(r) for w, r in self.round.items()}}

    def load_state_dict(self, state: dict) -> None:
        clocks = ClockTable([])
        clocks.load_state_dict(state["clocks"])
        self.clocks = clocks
        self.joined_at = {int(w): int(c) for w, c in state["joined_at"].items()}
        self.high = int(state.get("high", 0))
        self.round_clock = int(state["round_clock"])
        self.round = {int(w): _copied(r) for w, r in state["round"].items()}


def _copied(record: Record) -> Record:
    return {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in record.items()}

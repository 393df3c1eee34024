"""The job's failure settings: checkpoints, the restart budget and stall handling, chaos knobs.

``checkpoint:`` when to cut a consistent checkpoint and how many to keep;
``fault:`` what the controller may do about failures; ``chaos:`` faults to
inject (a real SIGKILL, or a hang: a worker's loop stops, or a shard stops
answering), each written ``ACTOR@WHEN``: the actor is
``worker-N`` or ``ps-shard-N``; WHEN is a step (``worker-0@40``: just before
that worker's 40th step; ``ps-shard-1@40``: once the job's step, per worker as
the progress line counts it, reaches 40)
or seconds into training (``ps-shard-0@5s``). ``chaos.random`` SIGKILLs
actors at random instead (``RandomKills``; launcher/job/chaos_monkey.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...errors import ConfigError
from ...settings import every_steps, number, require

STALL_ACTIONS = ("report", "replace", "fail")
_FAULT = re.compile(r"^(worker|ps-shard)-(\d+)@(\d+(?:\.\d+)?)(s?)$")


@dataclass(frozen=True)
class CheckpointConfig:
    """Consistent checkpoints of every shard and the data position."""

    every_s: float | None = 10.0  # cut one this often (None: not by time)
    # ... and whenever the job's step (per worker) passes a multiple of this (auto: a tenth of the job, at
    # least 1 s after the last cut; None: not by steps)
    every_steps: int | str | None = "auto"
    keep: int = 3  # the newest K are kept (and the checkpoints they follow)
    # sparse tables: every so many checkpoints one holds every row; those between only the rows changed since
    # the checkpoint before (1: every one holds every row)
    full_every: int = 10
    dir: str | None = None  # default: <run dir>/checkpoints
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.every_s is not None:
            number(self.every_s, "checkpoint.every_s", minimum=0.1)
        if self.every_steps is not None:
            every_steps(self.every_steps, "checkpoint.every_steps", minimum=1)
        number(self.keep, "checkpoint.keep", minimum=1, integer=True)
        number(self.full_every, "checkpoint.full_every", minimum=1, integer=True)
        require(isinstance(self.enabled, bool), f"checkpoint.enabled ({self.enabled!r}) must be true or false")
        require(self.dir is None or isinstance(self.dir, str), f"checkpoint.dir ({self.dir!r}) must be a path")


@dataclass(frozen=True)
class FaultConfig:
    """What the controller does about failures and stalls."""

    max_restarts: int = 3  # the job's budget: shard restarts plus worker replacements, all together
    stall_s: float = 60.0  # a live worker whose clock has not moved this long is stalled
    on_stall: str = "report"  # report (and keep waiting) | replace (kill it, start a new incarnation) | fail
    resync_timeout_s: float = 60.0  # how long a worker waits for a recovery to finish

    def __post_init__(self) -> None:
        number(self.max_restarts, "fault.max_restarts", minimum=0, integer=True)
        number(self.stall_s, "fault.stall_s", minimum=0.1)
        number(self.resync_timeout_s, "fault.resync_timeout_s", minimum=1)
        require(self.on_stall in STALL_ACTIONS,
                f"fault.on_stall ({self.on_stall!r}) must be one of {', '.join(STALL_ACTIONS)}")


@dataclass(frozen=True)
class Fault:
    kind: str  # "worker" | "ps-shard"
    index: int
    at: float
    seconds: bool  # at is seconds into training, else a step

    @property
    def actor(self) -> str:
        return f"{self.kind}-{self.index}"


def parse_fault(text: str, what: str) -> Fault:
    match = _FAULT.match(str(text).strip())
    if not match:
        raise ConfigError(f"{what} ({text!r}) must be ACTOR@STEP or ACTOR@SECONDSs, e.g. worker-0@40 or ps-shard-1@5s")
    kind, index, at, unit = match.groups()
    if not unit and "." in at:
        raise ConfigError(f"{what} ({text!r}): a step is a whole number; add 's' for seconds")
    return Fault(kind, int(index), float(at), bool(unit))


RANDOM_TARGETS = ("all", "workers", "shards")


@dataclass(frozen=True)
class RandomKills:
    """``kills`` SIGKILLs at random times, each of an actor drawn at random among the ``targets`` alive then.

    The gaps between kills are drawn from an exponential of mean ``mean_gap_s``: a short one lands inside
    the recovery from the last, so faults overlap. ``seed`` fixes the gaps and the draws (not what the
    processes happen to be doing when a kill lands). Each kill counts against ``fault.max_restarts``.
    """

    kills: int = 0  # 0: none
    mean_gap_s: float = 2.0
    after_s: float = 1.0  # the first gap starts this long into training
    targets: str = "all"  # all | workers | shards
    seed: int = 0

    def __post_init__(self) -> None:
        number(self.kills, "chaos.random.kills", minimum=0, integer=True)
        number(self.mean_gap_s, "chaos.random.mean_gap_s", minimum=0.01)
        number(self.after_s, "chaos.random.after_s", minimum=0)
        number(self.seed, "chaos.random.seed", minimum=0, integer=True)
        require(self.targets in RANDOM_TARGETS,
                f"chaos.random.targets ({self.targets!r}) must be one of {', '.join(RANDOM_TARGETS)}")


@dataclass(frozen=True)
class ChaosConfig:
    """Faults to inject; see the module docstring."""

    kill: tuple = ()  # SIGKILL of the actor's process
    hang: tuple = ()  # the worker stops making progress; a shard stops answering
    random: RandomKills = field(default_factory=RandomKills)  # SIGKILLs at random times, of random actors

    def __post_init__(self) -> None:
        for key in ("kill", "hang"):
            value = getattr(self, key)
            if isinstance(value, str):  # `--set chaos.kill=worker-0@40`: one fault
                object.__setattr__(self, key, (value,))
            require(isinstance(getattr(self, key), (list, tuple)), f"chaos.{key} ({value!r}) must be a list")
            object.__setattr__(self, key, tuple(getattr(self, key)))
            for text in getattr(self, key):
                parse_fault(text, f"chaos.{key}")
        for text in self.hang:
            fault = parse_fault(text, "chaos.hang")
            require(fault.kind == "ps-shard" or not fault.seconds,
                    f"chaos.hang ({text!r}): a worker hangs at a step (worker-N@STEP), not after seconds")

    def faults(self, key: str) -> list[Fault]:
        return [parse_fault(t, f"chaos.{key}") for t in getattr(self, key)]

    def check_actors(self, workers: int, servers: int) -> None:
        for key in ("kill", "hang"):
            for fault in self.faults(key):
                limit = workers if fault.kind == "worker" else servers
                require(fault.index < limit, f"chaos.{key} names {fault.actor}, but the job has"
                                             f" {fault.kind}-0..{fault.kind}-{limit - 1}")

    def check_random(self, max_restarts: int, checkpoints: bool) -> None:
        kills = self.random.kills
        require(kills <= max_restarts, f"chaos.random.kills ({kills}) exceeds fault.max_restarts ({max_restarts}):"
                                       f" the job would give up at kill {max_restarts + 1}; raise fault.max_restarts")
        require(not kills or checkpoints or self.random.targets == "workers",
                "chaos.random kills shards, which come back only from a checkpoint: set checkpoint.enabled: true"
                " or chaos.random.targets: workers")

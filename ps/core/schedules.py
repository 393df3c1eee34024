"""Learning-rate schedules keyed to the global step.

``make_schedule(config, base_lr)`` returns an ``LRSchedule``: a pure function
of the number of updates already applied, so every shard computes the same lr
for the same step without sharing state, and a resumed job needs only the step
count. ``schedule(step)`` is the lr for the update applied when ``step``
updates (0-based) have been applied.

The values equal torch's schedulers stepped once per update:

* an optional linear warm-up over ``warmup_steps`` is
  ``LinearLR(start_factor, end_factor=1.0, total_iters=warmup_steps)``
  chained to the main schedule by ``SequentialLR(milestones=[warmup_steps])``;
  the main schedule counts its own steps from 0 after the warm-up;
* ``auto`` is the job's to resolve by its consistency mode (launcher/job/config.py:
  ``cosine`` over the last fifth of the job where updates are stale,
  ``constant`` under bsp); a shard built
  without a job (tests, the bench's transport rows) takes it as ``constant``;
* ``constant`` keeps ``base_lr``;
* ``piecewise`` multiplies ``base_lr`` by ``factors[i]``, where ``i`` is the
  number of ``boundaries`` at or below the step (``MultiStepLR`` when
  ``factors[i] == gamma ** i``);
* ``cosine`` is ``CosineAnnealingLR(T_max=total_steps - warmup_steps,
  eta_min=min_lr)`` in closed form, reaching ``min_lr`` at ``total_steps``;
  with ``decay_fraction`` f < 1 it holds ``base_lr`` and decays over the last
  f of the steps after the warm-up only (warm-up, stable, decay).

Past its end a schedule stays at its last value (torch's cosine would rise
again).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from ...errors import ConfigError
from ...settings import number, require

_NAMES = ("auto", "constant", "cosine", "piecewise")


@dataclass(frozen=True)
class ScheduleConfig:
    """Shape of the learning-rate curve; the base lr comes from the optimizer config.

    ``boundaries``/``factors`` apply only to piecewise and ``total_steps``/
    ``min_lr`` only to cosine; setting them for another schedule is an error.
    ``total_steps`` (cosine) counts the warm-up; None leaves it to the caller
    (``make_schedule``'s ``default_total_steps``, e.g. the job's length).
    ``warmup_start_factor`` None means ``1 / warmup_steps``.
    """

    name: str = "auto"
    boundaries: tuple[int, ...] = ()
    factors: tuple[float, ...] = ()
    total_steps: int | None = None
    min_lr: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float | None = None
    decay_fraction: float = 1.0  # cosine only: hold base_lr, then decay over this last part of the steps

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and self.name in _NAMES,
                f"schedule.name ({self.name!r}) must be one of {', '.join(_NAMES)}")
        self._check_piecewise()
        if self.total_steps is not None:
            number(self.total_steps, "schedule.total_steps", minimum=0, integer=True, exclusive=True)
        number(self.min_lr, "schedule.min_lr", minimum=0)
        self._check_applies("total_steps", self.total_steps is not None, "cosine")
        self._check_applies("min_lr", self.min_lr != 0, "cosine")
        number(self.decay_fraction, "schedule.decay_fraction", minimum=0, exclusive=True)
        require(self.decay_fraction <= 1, f"schedule.decay_fraction ({self.decay_fraction!r}) must be <= 1")
        self._check_applies("decay_fraction", self.decay_fraction != 1.0, "cosine")
        number(self.warmup_steps, "schedule.warmup_steps", minimum=0, integer=True)
        if self.total_steps is not None:
            require(self.total_steps > self.warmup_steps,
                    f"schedule.total_steps ({self.total_steps}) must be greater than"
                    f" schedule.warmup_steps ({self.warmup_steps})")
        if self.warmup_start_factor is not None:
            require(self.warmup_steps > 0,
                    f"schedule.warmup_start_factor ({self.warmup_start_factor!r}) needs"
                    " schedule.warmup_steps > 0")
            number(self.warmup_start_factor, "schedule.warmup_start_factor", minimum=0,
                   exclusive=True)
            # LinearLR's range: a factor above 1 would make the warm-up a cool-down.
            require(self.warmup_start_factor <= 1,
                    f"schedule.warmup_start_factor ({self.warmup_start_factor!r}) must be <= 1")

    def _check_piecewise(self) -> None:
        for key in ("boundaries", "factors"):
            value = getattr(self, key)
            require(isinstance(value, (tuple, list)),
                    f"schedule.{key} ({value!r}) must be a list")
            # YAML gives lists; tuples keep the config hashable and comparable.
            object.__setattr__(self, key, tuple(value))
        for i, boundary in enumerate(self.boundaries):
            number(boundary, f"schedule.boundaries[{i}]", minimum=0, integer=True, exclusive=True)
            require(i == 0 or boundary > self.boundaries[i - 1],
                    f"schedule.boundaries ({list(self.boundaries)}) must be strictly increasing")
        for i, factor in enumerate(self.factors):
            number(factor, f"schedule.factors[{i}]", minimum=0)
        self._check_applies("boundaries", bool(self.boundaries), "piecewise")
        self._check_applies("factors", bool(self.factors), "piecewise")
        if self.name == "piecewise":
            need = len(self.boundaries) + 1
            require(len(self.factors) == need,
                    f"schedule.factors has {len(self.factors)} values; piecewise needs"
                    f" len(boundaries) + 1 = {need}")

    def _check_applies(self, key: str, is_set: bool, name: str) -> None:
        require(not is_set or self.name == name,
                f"schedule.{key} ({getattr(self, key)!r}) applies only to {name}, not {self.name}")


class LRSchedule:
    """The lr for each global step: linear warm-up, then ``_main`` from 0."""

    def __init__(self, base_lr: float, warmup_steps: int = 0,
                 warmup_start_factor: float | None = None) -> None:
        self.base_lr = float(base_lr)
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = (
            float(warmup_start_factor) if warmup_start_factor is not None
            else 1.0 / warmup_steps if warmup_steps else 1.0
        )

    def __call__(self, step: int) -> float:
        """The lr for the update applied after ``step`` updates (step >= 0)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"step ({step!r}) must be an integer >= 0")
        if step < self.warmup_steps:
            start = self.warmup_start_factor
            return self.base_lr * (start + (1.0 - start) * step / self.warmup_steps)
        return self._main(step - self.warmup_steps)

    def _main(self, t: int) -> float:
        """The lr ``t`` steps after the warm-up."""
        return self.base_lr


class PiecewiseSchedule(LRSchedule):
    """``base_lr * factors[i]``, ``i`` = how many boundaries are <= the step."""

    def __init__(self, base_lr: float, boundaries: tuple[int, ...], factors: tuple[float, ...],
                 **warmup) -> None:
        super().__init__(base_lr, **warmup)
        self.boundaries = boundaries
        self.factors = factors

    def _main(self, t: int) -> float:
        return self.base_lr * self.factors[bisect.bisect_right(self.boundaries, t)]


class CosineSchedule(LRSchedule):
    """Half a cosine from ``base_lr`` down to ``min_lr`` over ``decay_steps``, then flat."""

    def __init__(self, base_lr: float, decay_steps: int, min_lr: float, hold: int = 0, **warmup) -> None:
        super().__init__(base_lr, **warmup)
        self.decay_steps = decay_steps
        self.min_lr = float(min_lr)
        self.hold = hold  # steps at base_lr before the decay begins (decay_fraction < 1)

    def _main(self, t: int) -> float:
        if t < self.hold:
            return self.base_lr
        t -= self.hold
        if t >= self.decay_steps:
            return self.min_lr
        cosine = (1 + math.cos(math.pi * t / self.decay_steps)) / 2
        return self.min_lr + (self.base_lr - self.min_lr) * cosine


def make_schedule(config: ScheduleConfig, base_lr: float,
                  default_total_steps: int | None = None) -> LRSchedule:
    """The schedule ``config`` describes around ``base_lr`` (the optimizer's lr).

    ``default_total_steps`` stands in for a cosine ``total_steps`` left None.
    Raises ConfigError when a cosine schedule has no length, or a length not
    past its warm-up, or a ``min_lr`` above ``base_lr``.
    """
    number(base_lr, "optimizer.lr", minimum=0, exclusive=True)
    warmup = {"warmup_steps": config.warmup_steps,
              "warmup_start_factor": config.warmup_start_factor}
    if config.name in ("constant", "auto"):
        return LRSchedule(base_lr, **warmup)
    if config.name == "piecewise":
        return PiecewiseSchedule(base_lr, config.boundaries, config.factors, **warmup)
    total = config.total_steps if config.total_steps is not None else default_total_steps
    if total is None:
        raise ConfigError("schedule.total_steps is not set and the job gives no default;"
                          " cosine needs a length")
    number(total, "schedule.total_steps", minimum=0, integer=True, exclusive=True)
    require(total > config.warmup_steps,
            f"schedule.total_steps ({total}) must be greater than"
            f" schedule.warmup_steps ({config.warmup_steps})")
    require(config.min_lr <= base_lr,
            f"schedule.min_lr ({config.min_lr!r}) must be <= optimizer.lr ({base_lr!r})")
    main = total - config.warmup_steps
    hold = main - max(1, round(main * config.decay_fraction))
    return CosineSchedule(base_lr, main - hold, config.min_lr, hold=hold, **warmup)

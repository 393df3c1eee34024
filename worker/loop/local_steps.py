"""Local steps: H inner steps on the worker's own copy, then one push of the change they made.

With ``local_steps.inner_steps: H`` a worker trains H batches with an inner
optimizer of its own (AdamW by default) and pushes its *pseudo-gradient*,
the parameters it started from minus the parameters it reached. The shards
apply the outer optimizer to it (Nesterov momentum SGD at DiLoCo's lr 0.7,
momentum 0.5 by default) and the worker pulls the result and starts again
from it. Every consistency mode applies to outer steps as it does to plain steps:
bsp averages the workers' pseudo-gradients (sample-weighted, with a quorum
for backup workers), asp and ssp apply each as it arrives (ssp's bound
counts outer steps) and, left to ``auto``, use delayed Nesterov momentum.

One push is one outer step: the work queue's batch becomes H of the worker's
batches (worker/queue/outer.py), so exactly-once, checkpoints and replaced
workers keep their meaning per outer step. A worker that dies between two
pushes loses the inner steps it took since the last one; its outer step goes
back to the queue and is trained again from the start.

The inner optimizer updates the flat parameter buffer (worker/loop/flat.py)
as one tensor: every bundled rule is elementwise, so that is the same update
as per parameter, and low-precision parameters keep their float32 masters.
Its state stays on the worker for the worker's life, across pulls and
resyncs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ...errors import ConfigError
from ...ps.core.optimizers import OptimizerConfig
from ...settings import number, require


@dataclass(frozen=True)
class InnerOptimizerConfig(OptimizerConfig):
    """The worker's own optimizer between pushes: AdamW at 1e-3 unless set."""

    name: str = "adamw"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.name != "delayed_nesterov", "local_steps.inner_optimizer.name (delayed_nesterov) is an outer"
                " optimizer; the inner one is adagrad, adam, adamw or sgd")


@dataclass(frozen=True)
class OuterOptimizerConfig(OptimizerConfig):
    """What the shards apply to pseudo-gradients. ``auto``: Nesterov momentum SGD at lr 0.7, momentum 0.5 under
    bsp (DiLoCo's lr; its momentum, 0.9, left the small transformer 4 to 14 points short at H 8 and 32), and
    delayed Nesterov at lr 0.35, momentum 0.9 under asp and ssp (docs/local-steps.md has the measurements). A
    named optimizer takes lr 0.7 and its own defaults (momentum 0) unless set."""

    name: str = "auto"
    lr: float | None = None  # None: 0.7, or 0.35 for auto's asynchronous form
    momentum: float | None = None  # None: auto's (0.5 sync, 0.9 async), the named optimizer's own (0) otherwise

    def __post_init__(self) -> None:
        if self.momentum is None and self.name != "auto":
            object.__setattr__(self, "momentum", 0.0)
        if self.name == "auto":
            if self.lr is not None:
                number(self.lr, "local_steps.outer_optimizer.lr", minimum=0, exclusive=True)
            if self.momentum is not None:
                number(self.momentum, "local_steps.outer_optimizer.momentum", minimum=0)
            require(self.nesterov is False and self.period is None and self.weight_decay is None and
                    self.eps is None and self.initial_accumulator_value == 0,
                    "local_steps.outer_optimizer: name auto takes lr and momentum only; name the optimizer to set more")
            return
        if self.lr is None:
            object.__setattr__(self, "lr", 0.7)
        super().__post_init__()

    def resolved(self, gathers: bool, workers: int) -> OptimizerConfig:
        """The shards' optimizer config: ``auto`` made concrete for the mode, a delayed Nesterov period filled in."""
        if self.name == "auto":
            if gathers:
                lr = 0.7 if self.lr is None else self.lr
                momentum = 0.5 if self.momentum is None else self.momentum
                return OptimizerConfig(name="sgd", lr=lr, momentum=momentum, nesterov=momentum > 0)
            lr = 0.35 if self.lr is None else self.lr
            momentum = 0.9 if self.momentum is None else self.momentum
            return OptimizerConfig(name="delayed_nesterov", lr=lr, momentum=momentum, period=workers)
        plain = OptimizerConfig(**{f: getattr(self, f) for f in OptimizerConfig.__dataclass_fields__})
        if plain.name == "delayed_nesterov" and plain.period is None:
            plain = replace(plain, period=workers)
        return plain


@dataclass(frozen=True)
class LocalStepsConfig:
    """``local_steps``: off unless ``inner_steps`` is set."""

    inner_steps: int | None = None  # H: batches a worker trains between two syncs of each parameter
    inner_optimizer: InnerOptimizerConfig = field(default_factory=InnerOptimizerConfig)
    outer_optimizer: OuterOptimizerConfig = field(default_factory=OuterOptimizerConfig)
    # streaming: the model synced in this many fragments in turn, one push every H / fragments batches
    fragments: int = 1

    def __post_init__(self) -> None:
        if self.inner_steps is not None:
            number(self.inner_steps, "local_steps.inner_steps", minimum=1, integer=True)
        number(self.fragments, "local_steps.fragments", minimum=1, integer=True)
        if self.inner_steps is not None:
            require(self.fragments <= self.inner_steps, f"local_steps.fragments ({self.fragments}) must not exceed"
                    f" inner_steps ({self.inner_steps}): each fragment's push comes after at least one batch")

    @property
    def batches_per_push(self) -> int | None:
        """Batches between two pushes: H, or with fragments H / fragments (rounded up)."""
        return None if self.inner_steps is None else -(-self.inner_steps // self.fragments)

    @property
    def enabled(self) -> bool:
        return self.inner_steps is not None


_TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
          "adagrad": torch.optim.Adagrad}


def torch_optimizer(config: OptimizerConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """torch's optimizer for ``config`` (one of the shards' rules, the same hyper-parameters) over ``params``."""
    kwargs: dict = {"lr": config.lr, "weight_decay": config.resolved_weight_decay}
    if config.name == "sgd":
        kwargs.update(momentum=config.momentum, nesterov=config.nesterov)
    elif config.name in ("adam", "adamw"):
        kwargs.update(betas=config.betas, eps=config.resolved_eps)
    elif config.name == "adagrad":
        kwargs.update(eps=config.resolved_eps, initial_accumulator_value=config.initial_accumulator_value)
    else:
        raise ConfigError(f"{config.name} cannot run on a worker")
    return _TORCH[config.name](params, foreach=False, **kwargs)


class InnerSteps:
    """A worker's inner optimizer over its flat parameters, and where each parameter's outer step began.

    ``begin`` marks every parameter's start (a registration: what was pulled); ``step`` takes one inner step
    with the gradient in the flat buffer; ``pseudo_gradient`` writes start minus now into the gradient buffer,
    which the push sends (all of it, or with fragments the fragment the push carries); ``synced`` marks the
    new start of what the push's answer brought back.
    """

    def __init__(self, flat, config: OptimizerConfig):
        self.flat = flat
        self.config = config
        self._tensor = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._start: torch.Tensor | None = None  # made beside the buffer the optimizer binds to (``_bind``)
        self.steps = 0  # inner steps taken in this life
        self.outer_steps = 0  # pushes of a pseudo-gradient
        self.drift_sq = 0.0  # the pseudo-gradients' squared norms, summed: how far the worker went alone

    def _bind(self) -> torch.optim.Optimizer:
        """The optimizer over the flat buffer now in use (a transport's segment may replace it: ``adopt``),
        keeping its state when the buffer changes."""
        flat = self.flat
        if self._tensor is None or self._tensor.data_ptr() != flat.params.data_ptr():
            tensor = flat.params.view(-1)
            state = self._optimizer.state_dict() if self._optimizer is not None else None
            self._optimizer = torch_optimizer(self.config, [tensor])
            if state is not None:
                self._optimizer.load_state_dict(state)
            self._tensor = tensor
            self._start = torch.empty_like(flat.params)
        self._tensor.grad = flat.grads
        return self._optimizer

    def begin(self) -> None:
        """Every parameter in the flat buffer is where its outer step starts (just pulled at registration)."""
        self._bind()
        self._start.copy_(self.flat.params)

    def synced(self, ranges) -> None:
        """The push's answer landed in ``ranges`` (ShardRanges of flat positions): they start afresh there."""
        params = self.flat.params
        for r in ranges:
            self._start[r.lo:r.hi].copy_(params[r.lo:r.hi])

    def step(self) -> None:
        """One inner step with the flat buffer's gradient (already unscaled and clipped)."""
        optimizer = self._bind()
        self.flat.host_grads()  # low-precision parameters' gradients cast up into the flat buffer
        with torch.no_grad():
            optimizer.step()
        self.flat.params_received(counters=False)  # low-precision copies follow their float32 masters
        self.steps += 1

    def pseudo_gradient(self, ranges) -> np.ndarray:
        """start - now, in the flat gradient buffer, as the host array a push sends of it ``ranges``."""
        flat = self.flat
        torch.sub(self._start, flat.params, out=flat.grads)
        self.drift_sq += sum(float(torch.dot(flat.grads[r.lo:r.hi], flat.grads[r.lo:r.hi])) for r in ranges)
        self.outer_steps += 1
        return flat.host_grads()

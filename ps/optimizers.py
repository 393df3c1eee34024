"""Server-side optimizers that update one flat float32 parameter buffer in place.

A parameter shard keeps its parameters as a single 1-D float32 numpy array and
owns one ``ServerOptimizer`` sized to it (``make_optimizer(config, size)``).
Each pushed gradient is applied with ``step(params, grad, lr)``, where ``lr``
is the learning rate for this update (usually ``LRSchedule(step_count)``); the
config's ``lr`` is only the base the schedule starts from.

The update math is the single-tensor path (``foreach=False``) of
``torch.optim.SGD``, ``Adagrad``, ``Adam`` and ``AdamW``, run through in-place
torch ops on ``torch.from_numpy`` views, so results match torch on the same
gradients and learning rates. All state, including scratch space, is allocated
once at construction: an optimizer holds up to four extra buffers of ``size``
float32 values. ``grad`` is read in place (it may be read-only, such as a
zero-copy array from Ray's object store) and is never modified: only a rule
that writes to its gradient (L2 weight decay, nesterov) first copies it into
scratch space.

``state_dict()`` returns copies of the state plus the step count;
``load_state_dict`` restores them, and the next ``step`` continues exactly as
the saved optimizer would have.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rayps.errors import ConfigError, ShapeError
from rayps.ps.settings import number, require

_NAMES = ("adagrad", "adam", "adamw", "sgd")
_DEFAULT_BETAS = (0.9, 0.999)
# torch's defaults, which a config left at None inherits.
_DEFAULT_EPS = {"adagrad": 1e-10, "adam": 1e-8, "adamw": 1e-8, "sgd": 0.0}
_DEFAULT_WEIGHT_DECAY = {"adamw": 0.01}


@dataclass(frozen=True)
class OptimizerConfig:
    """Which update rule a server applies and its hyper-parameters.

    Settings that belong to another algorithm (``momentum`` for adam, say) must
    stay at their defaults: a setting that would be silently ignored is a
    mistake in the job file. ``weight_decay`` and ``eps`` left at None take
    torch's default for the algorithm; read them resolved from
    ``resolved_weight_decay`` and ``resolved_eps``.
    """

    # Adam at 1e-3 is the default that trains most models without tuning, and
    # it keeps a partial override (--set optimizer.lr=0.003) on the same rule.
    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    betas: tuple[float, float] = _DEFAULT_BETAS
    eps: float | None = None
    initial_accumulator_value: float = 0.0

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and self.name in _NAMES,
                f"optimizer.name ({self.name!r}) must be one of {', '.join(_NAMES)}")
        number(self.lr, "optimizer.lr", minimum=0, exclusive=True)
        number(self.momentum, "optimizer.momentum", minimum=0)
        require(isinstance(self.nesterov, bool),
                f"optimizer.nesterov ({self.nesterov!r}) must be true or false")
        if self.weight_decay is not None:
            number(self.weight_decay, "optimizer.weight_decay", minimum=0)
        if self.eps is not None:
            number(self.eps, "optimizer.eps", minimum=0, exclusive=True)
        number(self.initial_accumulator_value, "optimizer.initial_accumulator_value", minimum=0)
        self._check_betas()
        self._check_applies("momentum", self.momentum != 0, ("sgd",))
        self._check_applies("nesterov", self.nesterov, ("sgd",))
        self._check_applies("betas", self.betas != _DEFAULT_BETAS, ("adam", "adamw"))
        self._check_applies("initial_accumulator_value", self.initial_accumulator_value != 0,
                            ("adagrad",))
        self._check_applies("eps", self.eps is not None, ("adagrad", "adam", "adamw"))
        # torch rejects nesterov without momentum: the update would be plain SGD.
        require(not self.nesterov or self.momentum > 0,
                f"optimizer.nesterov needs optimizer.momentum > 0 (got {self.momentum!r})")

    def _check_betas(self) -> None:
        betas = self.betas
        require(isinstance(betas, (tuple, list)) and len(betas) == 2,
                f"optimizer.betas ({betas!r}) must be a pair [beta1, beta2]")
        for i, beta in enumerate(betas):
            number(beta, f"optimizer.betas[{i}]", minimum=0)
            require(beta < 1, f"optimizer.betas[{i}] ({beta!r}) must be < 1")
        # YAML gives a list; a tuple keeps the config hashable and comparable.
        object.__setattr__(self, "betas", tuple(betas))

    def _check_applies(self, key: str, is_set: bool, names: tuple[str, ...]) -> None:
        require(not is_set or self.name in names,
                f"optimizer.{key} ({getattr(self, key)!r}) applies only to"
                f" {', '.join(names)}, not {self.name}")

    @property
    def resolved_weight_decay(self) -> float:
        """``weight_decay``, or torch's default for the algorithm when None."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return _DEFAULT_WEIGHT_DECAY.get(self.name, 0.0)

    @property
    def resolved_eps(self) -> float:
        """``eps``, or torch's default for the algorithm when None (unused by sgd)."""
        return float(self.eps) if self.eps is not None else _DEFAULT_EPS[self.name]


class ServerOptimizer:
    """One update rule over a flat float32 buffer of ``size`` values.

    Subclasses name their state buffers in ``_buffers`` (saved by
    ``state_dict``) and implement ``_update``; scratch space lives elsewhere and
    is never saved.
    """

    name = ""

    def __init__(self, config: OptimizerConfig, size: int) -> None:
        # 0 is a shard with no dense values: a model whose weights are all in sparse tables
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ShapeError(f"optimizer size ({size!r}) must be a non-negative integer")
        if config.name != self.name:
            raise ConfigError(f"optimizer.name ({config.name!r}) does not match {type(self).__name__}")
        self.config = config
        self.size = size
        self.steps = 0  # updates applied so far
        self._buffers: dict[str, np.ndarray] = {}
        self._grad = np.empty(size, dtype=np.float32)
        self._grad_t = torch.from_numpy(self._grad)

    def _buffer(self, key: str, fill: float = 0.0) -> torch.Tensor:
        """Allocate a saved state buffer and return a torch view of it."""
        array = np.full(self.size, fill, dtype=np.float32)
        self._buffers[key] = array
        return torch.from_numpy(array)

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        """Apply one update in place to ``params`` from ``grad`` at learning rate ``lr``.

        ``params``: 1-D writable float32 array of ``size`` values. ``grad``: 1-D
        float32 array of ``size`` values, read only. Raises ShapeError on any
        other shape or dtype and ValueError on a negative or NaN ``lr``.
        """
        self._check_array(params, "params")
        self._check_array(grad, "grad")
        if not params.flags.writeable:
            raise ShapeError("params must be a writable array; the update is applied in place")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
            raise ConfigError(f"lr ({lr!r}) must be a number >= 0")
        if self._writes_grad():  # the rule changes its gradient in place: work on our own copy
            np.copyto(self._grad, grad)
            grad_t = self._grad_t
        else:  # read it where it lies, saving a pass over every push
            grad_t = _read_only_view(grad)
        self.steps += 1
        self._update(torch.from_numpy(params), grad_t, float(lr))

    def _writes_grad(self) -> bool:
        """Whether ``_update`` modifies its ``grad`` argument (then it gets a scratch copy)."""
        return True

    def _check_array(self, array: np.ndarray, what: str) -> None:
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 1:
            shown = f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray) \
                else type(array).__name__
            raise ShapeError(f"{what} must be a 1-D float32 array, got {shown}")
        if array.shape[0] != self.size:
            raise ShapeError(f"{what} has {array.shape[0]} values; this optimizer holds {self.size}")

    def _update(self, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """Update ``param`` in place; ``grad`` is scratch space it may overwrite."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's name, step count and copies of its state buffers."""
        state: dict[str, Any] = {"name": self.name, "step": self.steps}
        state.update({key: array.copy() for key, array in self._buffers.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from an optimizer of the same kind and size."""
        if state.get("name") != self.name:
            raise ConfigError(f"optimizer state is for {state.get('name')!r}; this optimizer is {self.name!r}")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ShapeError(f"optimizer state step ({step!r}) must be an integer >= 0")
        for key, array in self._buffers.items():
            saved = state.get(key)
            if not isinstance(saved, np.ndarray) or saved.shape != array.shape:
                shown = getattr(saved, "shape", saved)
                raise ShapeError(f"optimizer state {key!r} ({shown!r}) must be an array of shape {array.shape}")
        for key, array in self._buffers.items():
            np.copyto(array, state[key], casting="same_kind")
        self.steps = int(step)


class SGD(ServerOptimizer):
    """``torch.optim.SGD`` with dampening 0: momentum, nesterov, L2 weight decay."""

    name = "sgd"

    def __init__(self, config: OptimizerConfig, size: int) -> None:
        super().__init__(config, size)
        self._momentum = float(config.momentum)
        self._decay = config.resolved_weight_decay
        self._buf = self._buffer("momentum_buffer") if self._momentum else None

    def _writes_grad(self) -> bool:
        return self._decay != 0 or (self._buf is not None and self.config.nesterov)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        if self._decay != 0:
            grad.add_(param, alpha=self._decay)
        if self._buf is not None:
            # torch seeds the buffer with the first gradient rather than decaying zeros.
            if self.steps == 1:
                self._buf.copy_(grad)
            else:
                self._buf.mul_(self._momentum).add_(grad)
            if self.config.nesterov:
                grad.add_(self._buf, alpha=self._momentum)
            else:
                grad = self._buf
        param.add_(grad, alpha=-lr)


def _read_only_view(array: np.ndarray) -> torch.Tensor:
    """A torch view of an array that may be read-only, for an update that only reads it.

    torch warns that writing through such a view would be undefined; no rule
    that receives one writes to it (``_writes_grad`` decides), so the warning
    is silenced here and nowhere else.
    """
    if array.flags.writeable:  # shared memory, a gRPC receive buffer: nothing to silence, and that is costly
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class Adagrad(ServerOptimizer):
    """``torch.optim.Adagrad`` with lr_decay 0: weight decay, eps, initial accumulator."""

    name = "adagrad"

    def __init__(self, config: OptimizerConfig, size: int) -> None:
        super().__init__(config, size)
        self._decay = config.resolved_weight_decay
        self._eps = config.resolved_eps
        self._sum = self._buffer("sum", float(config.initial_accumulator_value))
        self._std = torch.from_numpy(np.empty(size, dtype=np.float32))

    def _writes_grad(self) -> bool:
        return self._decay != 0

    def _update(self, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        if self._decay != 0:
            grad.add_(param, alpha=self._decay)
        self._sum.addcmul_(grad, grad, value=1)
        torch.sqrt(self._sum, out=self._std).add_(self._eps)
        param.addcdiv_(grad, self._std, value=-lr)


class Adam(ServerOptimizer):
    """``torch.optim.Adam`` without amsgrad; weight decay is L2 (added to the gradient)."""

    name = "adam"
    decoupled = False

    def __init__(self, config: OptimizerConfig, size: int) -> None:
        super().__init__(config, size)
        self._beta1, self._beta2 = (float(b) for b in config.betas)
        self._decay = config.resolved_weight_decay
        self._eps = config.resolved_eps
        self._exp_avg = self._buffer("exp_avg")
        self._exp_avg_sq = self._buffer("exp_avg_sq")
        self._denom = torch.from_numpy(np.empty(size, dtype=np.float32))

    def _writes_grad(self) -> bool:
        return self._decay != 0 and not self.decoupled  # L2 adds the decay to the gradient

    def _update(self, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        if self._decay != 0:
            if self.decoupled:
                param.mul_(1 - lr * self._decay)
            else:
                grad.add_(param, alpha=self._decay)
        beta1, beta2 = self._beta1, self._beta2
        self._exp_avg.lerp_(grad, 1 - beta1)
        self._exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # torch keeps the step as a float tensor and reads it back as a float.
        step = float(self.steps)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        torch.sqrt(self._exp_avg_sq, out=self._denom).div_(bias_correction2_sqrt).add_(self._eps)
        param.addcdiv_(self._exp_avg, self._denom, value=-(lr / bias_correction1))


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay (default 0.01)."""

    name = "adamw"
    decoupled = True


_CLASSES: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (SGD, Adagrad, Adam, AdamW)
}


def make_optimizer(config: OptimizerConfig, size: int) -> ServerOptimizer:
    """The optimizer ``config.name`` names, with state for ``size`` parameters."""
    return _CLASSES[config.name](config, size)


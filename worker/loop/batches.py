"""Batches of any structure: moved to the worker's device as a whole, and the one rule for calling the model.

Inputs and targets may be tensors, tuples, lists, dicts and nests of them
(what torch's ``default_collate`` makes of a Dataset's items). The rule that
calls the model with a batch's inputs:

- a tuple or a list is spread as positional arguments: ``model(*inputs)``
  (items ``((dense, ids), y)`` call ``forward(dense, ids)``);
- a dict (any mapping) as keyword arguments: ``model(**inputs)``
  (items ``({"dense": ..., "ids": ...}, y)`` call ``forward(dense=..., ids=...)``);
- anything else (a tensor) is passed as it is: ``model(inputs)``.

Two hooks override it (``JobConfig.forward`` and ``JobConfig.compute_loss``):
``forward(model, inputs) -> output`` replaces the rule, and the job's loss is
applied to its output; ``compute_loss(model, inputs, targets) -> loss`` (or
``(loss, output)``) replaces the call and the loss, for a model that computes
its own loss, or two heads with two losses.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ...errors import ConfigError
from ..data.structure import map_tensors

RULE = ("the rule: a tuple or list of inputs is spread as positional arguments, model(*inputs); a dict as keyword"
        " arguments, model(**inputs); anything else is passed as it is, model(inputs)")


def to_device(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it on ``device`` (pinned and non-blocking to CUDA); its structure kept."""
    device = torch.device(device)

    def move(t: torch.Tensor) -> torch.Tensor:
        if t.device == device:
            return t
        if device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)
    return map_tensors(move, obj)


def structure(obj: Any) -> str:
    """A short picture of a batch's structure: ``tuple(Tensor[32, 13] float32, Tensor[32, 4] int64)``."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor{list(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    if isinstance(obj, Mapping):
        return "dict(" + ", ".join(f"{k}: {structure(v)}" for k, v in obj.items()) + ")"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}(" + ", ".join(structure(v) for v in obj) + ")"
    return type(obj).__name__


def leading_size(obj: Any) -> int | None:
    """The batch dimension: the length of the first tensor in ``obj`` (None: it holds none)."""
    if isinstance(obj, torch.Tensor):
        return len(obj) if obj.dim() else None
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in values:
        n = leading_size(v)
        if n is not None:
            return n
    return None


def spread(inputs: Any) -> tuple[tuple, dict]:
    """The positional and keyword arguments the rule calls the model with."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


@dataclass(frozen=True)
class ModelCall:
    """How a worker (and the driver's scoring) calls the model and gets a loss: the rule, or the hooks."""

    forward: Callable[[nn.Module, Any], Any] | None = None
    compute_loss: Callable[[nn.Module, Any, Any], Any] | None = None

    def output(self, model: nn.Module, inputs: Any) -> Any:
        if self.forward is not None:
            return self.forward(model, inputs)
        args, kwargs = spread(inputs)
        return model(*args, **kwargs)

    def loss_and_output(self, model: nn.Module, inputs: Any, targets: Any, loss_fn,
                        weight: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """The loss to backpropagate, and the model's output (None where compute_loss gives none)."""
        if self.compute_loss is not None:
            got = self.compute_loss(model, inputs, targets)
            loss, output = got if isinstance(got, tuple) else (got, None)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise TypeError(f"compute_loss must return a scalar tensor loss (or (loss, output)), got "
                                f"{structure(loss)}")
            return loss, output
        output = self.output(model, inputs)
        return (loss_fn(output, targets, weight=weight) if weight is not None else loss_fn(output, targets)), output


def check_call(model: nn.Module, call: ModelCall, inputs: Any, targets: Any, where: str) -> None:
    """Say before any actor starts when the rule cannot call ``model`` with ``inputs``: the item, its
    structure and the rule. (A hook is the user's own call: it is not second-guessed.)"""
    if call.forward is not None or call.compute_loss is not None:
        return
    args, kwargs = spread(inputs)
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or C forward: nothing to check against
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        how = "model(**inputs)" if kwargs else "model(*inputs)" if isinstance(inputs, (tuple, list)) \
            else "model(inputs)"
        raise ConfigError(
            f"{where}: its inputs are {structure(inputs)} (targets {structure(targets)}); {RULE}. So the job calls"
            f" {how}, which {type(model).__name__}.forward{signature} cannot take: {e}. Shape the items for"
            " the rule, or give forward=(model, inputs) -> output or compute_loss=(model, inputs, targets) -> loss"
        ) from None


def take(obj: Any, part: slice, size: int) -> Any:
    """The examples ``part`` of a batch of ``size``: every tensor whose first dimension is ``size`` is cut."""
    return map_tensors(lambda t: t[part] if t.dim() and len(t) == size else t, obj)

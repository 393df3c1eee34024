"""Losses a job names by string, computed on the worker.

- ``cross_entropy``: integer class targets, logits in.
- ``mse``: float targets of the output's shape.
- ``bce``: binary targets (0/1 floats), one logit per example in (click models).
- ``kl``: soft targets (a probability distribution per row), logits in; the
  KL divergence KL(target || softmax(logits)), averaged over the batch, as
  used for distillation.

A ``"module:callable"`` string names any other ``loss(output, target)``.

Per-example weights: a batch may carry a third tensor, each example's weight
(importance sampling re-weights the loss with it, so the gradient estimates
the whole data set's, unbiased). The built-in losses take it as ``weight=``
and return the batch mean of ``weight * loss``; a loss of your own must
accept ``weight`` too to be used with such data (``takes_weight`` checks).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..imports import import_object

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _weighted(per_example: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (per_example * weight.reshape(-1).to(per_example.dtype)).mean()


def cross_entropy(output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    if weight is None:
        return F.cross_entropy(output, target)
    return _weighted(F.cross_entropy(output, target, reduction="none"), weight)


def mse(output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    if weight is None:
        return F.mse_loss(output, target.reshape(output.shape))
    per_element = F.mse_loss(output, target.reshape(output.shape), reduction="none")
    return _weighted(per_element.reshape(len(output), -1).mean(dim=1), weight)


def bce(output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    if weight is None:
        return F.binary_cross_entropy_with_logits(output.reshape(-1), target.reshape(-1).float())
    per_example = F.binary_cross_entropy_with_logits(output.reshape(-1), target.reshape(-1).float(), reduction="none")
    return _weighted(per_example, weight)


def kl(output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    if weight is None:
        return F.kl_div(F.log_softmax(output, dim=-1), target, reduction="batchmean")
    return _weighted(F.kl_div(F.log_softmax(output, dim=-1), target, reduction="none").sum(dim=-1), weight)


def takes_weight(loss: LossFn) -> bool:
    """Whether ``loss`` accepts per-example weights as ``weight=``."""
    import inspect

    try:
        params = inspect.signature(loss).parameters
    except (TypeError, ValueError):  # a builtin without a signature: it cannot be told
        return False
    return "weight" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse, "bce": bce, "kl": kl}


def resolve_loss(spec: str | LossFn) -> LossFn:
    """A loss function from a name in LOSSES, a ``module:callable`` string, or a callable."""
    if callable(spec):
        return spec
    if spec in LOSSES:
        return LOSSES[spec]
    if isinstance(spec, str) and ":" in spec:
        return import_object(spec, "loss")
    from ...errors import ConfigError
    raise ConfigError(f"loss ({spec!r}) must be one of {', '.join(LOSSES)} or a 'module:callable'")

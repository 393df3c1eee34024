"""Losses a job names by string, computed on the worker.

- ``cross_entropy``: integer class targets, logits in.
- ``mse``: float targets of the output's shape.
- ``bce``: binary targets (0/1 floats), one logit per example in (click models).
- ``kl``: soft targets (a probability distribution per row), logits in; the
  KL divergence KL(target || softmax(logits)), averaged over the batch, as
  used for distillation.

A ``"module:callable"`` string names any other ``loss(output, target)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rayps.worker.imports import import_object

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target.reshape(output.shape))


def bce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output.reshape(-1), target.reshape(-1).float())


def kl(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(output, dim=-1), target, reduction="batchmean")


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse, "bce": bce, "kl": kl}


def resolve_loss(spec: str | LossFn) -> LossFn:
    """A loss function from a name in LOSSES, a ``module:callable`` string, or a callable."""
    if callable(spec):
        return spec
    if spec in LOSSES:
        return LOSSES[spec]
    if isinstance(spec, str) and ":" in spec:
        return import_object(spec, "loss")
    from rayps.errors import ConfigError
    raise ConfigError(f"loss ({spec!r}) must be one of {', '.join(LOSSES)} or a 'module:callable'")

"""A model variant as data: how to build it again, anywhere, from its import path and what was done to it.

A ``ModelSpec`` names the model's factory (``module:callable``) and its
arguments, the filter-pruning plan that reshaped it (worker/compress/pruning.py), its
weights (numpy arrays by state-dict key) and the masks that fine-tuning must
hold fixed. ``build_model(spec)`` is what a worker calls to make the model a
fine-tuning job trains (it is picklable as ``functools.partial``), and what
the exported-model reader calls before it loads the files' weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..imports import import_object
from .pruning import hold_masks, shrink


@dataclass(frozen=True)
class ModelSpec:
    model: str  # 'module:callable'
    model_args: Mapping[str, Any] = field(default_factory=dict)
    plan: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # filter pruning's new shapes
    weights: Mapping[str, np.ndarray] | None = None  # None: the factory's own initialization
    masks: Mapping[str, np.ndarray] | None = None  # module name -> keep-mask of its weight, held while training


def build_model(spec: ModelSpec) -> nn.Module:
    model = import_object(spec.model, "model")(**dict(spec.model_args))
    if spec.plan:
        shrink(model, dict(spec.plan))
    if spec.weights is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in spec.weights.items()})
    if spec.masks:
        hold_masks(model, {k: torch.from_numpy(np.array(v)) for k, v in spec.masks.items()})
    return model


def state_of(model: nn.Module) -> dict[str, np.ndarray]:
    """A model's state dict as numpy arrays (what a ModelSpec carries to the workers)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def build_distiller(student: ModelSpec, teacher: ModelSpec) -> nn.Module:
    from .distill import Distiller

    return Distiller(build_model(student), build_model(teacher))


def import_path(model: Any) -> str | None:
    """``module:callable`` for a job's model (a string already, or a callable importable by that name)."""
    if isinstance(model, str):
        return model
    name = f"{getattr(model, '__module__', '')}:{getattr(model, '__qualname__', '')}"
    try:
        return name if import_object(name, "model") is model else None
    except Exception:  # noqa: BLE001 - a lambda, a local function, a partial: no name to import it by
        return None

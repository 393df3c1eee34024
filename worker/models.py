"""Models the bundled jobs name in YAML (``rayps.worker.models:mlp``)."""

from __future__ import annotations

from typing import Sequence

from torch import nn


def mlp(in_features: int = 64, hidden: Sequence[int] = (256,), num_classes: int = 10) -> nn.Module:
    """A ReLU multilayer perceptron; the defaults fit the 8x8 digits data set."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)

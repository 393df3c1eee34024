"""Models the bundled jobs name in YAML (``rayps.worker.models:mlp``, ``rayps.worker.models:cnn``)."""

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


class _Image(nn.Module):
    """Flat rows of pixels to ``(N, channels, side, side)`` images."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        self.shape = (channels, side, side)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


def cnn(side: int = 8, channels: int = 1, width: int = 16, num_classes: int = 10,
        batch_norm: bool = True, dropout: float = 0.0) -> nn.Module:
    """A small ResNet-style convolutional net (conv, BatchNorm, ReLU) for flat square images.

    The defaults fit the 8x8 digits: two conv blocks, a pooling step, and a
    linear head, with ``dropout`` before the head.
    """
    def block(cin: int, cout: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        return layers + [nn.ReLU()]

    return nn.Sequential(
        _Image(channels, side),
        *block(channels, width), nn.MaxPool2d(2),
        *block(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        *([nn.Dropout(dropout)] if dropout else []),
        nn.Linear(2 * width, num_classes),
    )

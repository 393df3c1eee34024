"""Models the bundled jobs name in YAML (``rayps.worker.models:mlp``, ``rayps.worker.models:cnn``), and two
sequence models for the token task (``transformer``, ``lstm``)."""

from __future__ import annotations

from typing import Sequence

import torch
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


class _TokenTransformer(nn.Module):
    """Token ids ``(N, length)`` -> class logits: learned positions, a pre-norm encoder, mean pooling."""

    def __init__(self, vocab: int, length: int, width: int, heads: int, layers: int, dropout: float,
                 num_classes: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.zeros(1, length, width).normal_(std=0.02))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, ids):
        h = self.encoder(self.tokens(ids) + self.positions[:, : ids.shape[1]])
        return self.head(self.norm(h).mean(dim=1))


def transformer(vocab: int = 12, length: int = 16, width: int = 32, heads: int = 2, layers: int = 2,
                dropout: float = 0.1, num_classes: int = 2) -> nn.Module:
    """A small transformer encoder classifier over token sequences (the ``order_tokens`` task's shape)."""
    return _TokenTransformer(vocab, length, width, heads, layers, dropout, num_classes)


class _TokenLSTM(nn.Module):
    def __init__(self, vocab: int, width: int, hidden: int, num_classes: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.tokens(ids))
        return self.head(h[-1])


def lstm(vocab: int = 12, width: int = 16, hidden: int = 32, num_classes: int = 2) -> nn.Module:
    """A one-layer LSTM classifier over token sequences: its last hidden state, then a linear head."""
    return _TokenLSTM(vocab, width, hidden, num_classes)

"""Real data sets that ship inside installed packages, so jobs run offline."""

from __future__ import annotations

import numpy as np


def digits(test_fraction: float = 0.2, seed: int = 0) -> dict:
    """scikit-learn's 1,797 handwritten 8x8 digits, scaled to [0, 1], split train/test.

    The split is stratified by class and fixed by ``seed``, so every run of the
    default job is scored on the same 360 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=y
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def synthetic_mnist(examples: int = 60_000, test: int = 2_000, features: int = 784, classes: int = 10,
                    seed: int = 0) -> dict:
    """MNIST-shaped random data (784 float32 features, 10 classes) labelled by a random linear teacher.

    For speed benchmarks: every system trains on exactly the same arrays, and
    the loss falls, so "time to a target loss" means something.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples + test, features)).astype(np.float32)
    teacher = rng.normal(size=(features, classes)).astype(np.float32)
    y = (x @ teacher).argmax(axis=1).astype(np.int64)
    return {"train": (x[:examples], y[:examples]), "test": (x[examples:], y[examples:])}


def order_tokens(examples: int = 4_000, test: int = 1_000, length: int = 16, vocab: int = 12,
                 seed: int = 0) -> dict:
    """An order-sensitive token task: which of the tokens 1 and 2 comes first in the sequence.

    Each sequence holds tokens 1 and 2 once each, at random positions, among
    filler tokens 3..vocab-1; the label is 1 when 2 comes before 1. No count of
    tokens tells them apart: a model must use positions (a transformer's
    learned positions, an LSTM's order).
    """
    rng = np.random.default_rng(seed)
    n = examples + test
    ids = rng.integers(3, vocab, size=(n, length))
    places = np.argsort(rng.random((n, length)), axis=1)[:, :2]  # two distinct positions per sequence
    rows = np.arange(n)
    ids[rows, places[:, 0]] = 1
    ids[rows, places[:, 1]] = 2
    y = (places[:, 1] < places[:, 0]).astype(np.int64)
    ids = ids.astype(np.int64)
    return {"train": (ids[:examples], y[:examples]), "test": (ids[examples:], y[examples:])}

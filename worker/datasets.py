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

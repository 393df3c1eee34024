"""Sorted, unique ids: the form every id list of a sparse table travels in, checked and made cheaply.

A worker's ids for a table are unique and sorted (``np.unique``, then split by
shard in order), which spares a shard the sort it would otherwise need to find
duplicates. Where ids must be made unique without their inverse, a sort is used
rather than ``np.unique``: numpy 2.4's hash-based ``unique`` took 180 us for
2,000 ids here, against 22 us for a sort.
"""

from __future__ import annotations

import numpy as np


def strictly_increasing(ids: np.ndarray) -> bool:
    """Whether ``ids`` are sorted and unique."""
    return bool(len(ids) < 2 or (ids[1:] > ids[:-1]).all())


def unique_sorted(ids: np.ndarray) -> np.ndarray:
    """``ids`` sorted, each once (what ``np.unique(ids)`` returns)."""
    s = np.sort(ids)
    keep = np.empty(len(s), bool)
    keep[:1] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]

"""Incremental checkpoints of a sparse table: the rows changed since the last cut, and merging them back.

A table notes the ids of every row it creates, reads for a worker (a pull
moves the row's last-seen version) or updates, the ids it evicts, and the
local indices whose frequency-filter count moved. At a cut it writes only
those rows, as they stand then, with the ids evicted and the counts moved:
a step that touched k rows costs O(k) bytes, however many rows the table
holds. Everything else of the table's state (its version, clocks, round,
counters) is small and written whole.

``merged`` folds such a delta onto the full state it follows, giving the full
state of the later cut exactly: evicted ids leave, changed rows replace their
old values (or join), counts move. The checkpoint store chains a delta to its
base (ps/core/checkpoint.py), and a shard restoring a cut merges the chain
from its full checkpoint forward (ps/served.py).
"""

from __future__ import annotations

import numpy as np

from .ids import unique_sorted

#: compact the noted ids once they hold this many more than the table's rows (a long gap between cuts)
_COMPACT_FACTOR = 4


class ChangeLog:
    """Which rows of one table changed since the last cut."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self._ids: list[np.ndarray] = []
        self._removed: list[np.ndarray] = []
        self._touched: list[np.ndarray] = []
        self._noted = 0

    def note(self, ids: np.ndarray, rows: int) -> None:
        """Rows ``ids`` were made, read for a worker or updated (``rows``: the table's rows now)."""
        if len(ids):
            self._ids.append(ids.copy())  # a transport may hand ids in a buffer it reuses
            self._noted += len(ids)
            if self._noted > _COMPACT_FACTOR * max(rows, 1 << 16):
                self._ids = [unique_sorted(np.concatenate(self._ids))]
                self._noted = len(self._ids[0])

    def note_removed(self, ids: np.ndarray) -> None:
        if len(ids):
            self._removed.append(ids.copy())

    def note_touched(self, local: np.ndarray) -> None:
        """The frequency filter's counts moved at these local indices."""
        if len(local):
            self._touched.append(local.copy())

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The changed ids, the evicted ids and the local indices whose count moved, each sorted and unique;
        the log starts afresh."""
        out = tuple(unique_sorted(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
                    for parts in (self._ids, self._removed, self._touched))
        self.clear()
        return out


def merged(base: dict, delta: dict) -> dict:
    """The full table state of a later cut: ``base`` (full) with ``delta`` (the rows changed since) folded in."""
    rows, old = delta["store"], base["store"]
    gone = np.concatenate([np.asarray(delta["removed"], np.int64), np.asarray(rows["ids"], np.int64)])
    keep = ~np.isin(old["ids"], gone)
    store = {k: np.concatenate([old[k][keep], rows[k]]) for k in ("ids", "weights", "last_seen")}
    store["state"] = {k: np.concatenate([v[keep], rows["state"][k]]) for k, v in old["state"].items()}
    counts = dict(zip(np.asarray(base["touched"]).tolist(), np.asarray(base["touches"]).tolist()))
    counts.update(zip(np.asarray(delta["touched"]).tolist(), np.asarray(delta["touches"]).tolist()))
    touched = np.array(sorted(k for k, v in counts.items() if v), np.int64)
    touches = np.array([counts[k] for k in touched.tolist()], np.asarray(base["touches"]).dtype)
    out = {k: v for k, v in delta.items() if k not in ("delta", "removed")}
    out.update(store=store, touched=touched, touches=touches)
    return out

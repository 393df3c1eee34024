"""Model buffers on a shard: each worker's latest report, and the merge pulls return.

Buffers (BatchNorm running statistics and the like) are model state, not
gradients: nothing is optimized, they are reported. A shard holds its slice
of the model's buffers as one float64 vector. Each push may carry the
worker's current values; the shard keeps the latest report of every worker
and serves their merge:

- floating-point entries: the mean of the reports weighted by the samples of
  the batch each came with (with equal batches, the plain mean);
- integer entries (``num_batches_tracked``): the maximum. Workers load
  these back only when they register, so the maximum is the most batches
  any one worker counted.

A worker that finishes or dies keeps its last report in the merge: its
statistics stay valid, and the final model carries every worker's. Reports
are merged in worker-id order, never arrival order, so a bsp run is
reproducible bit for bit. Before any report, pulls return the initial values
(the driver's model). Pure numpy, no I/O: unit-tested directly.
"""

from __future__ import annotations

import numpy as np

from ...errors import ShapeError

DTYPE = np.dtype(np.float64)


class BufferTable:
    def __init__(self, initial: np.ndarray | None = None, integer: np.ndarray | None = None):
        self.values = np.zeros(0, DTYPE) if initial is None else np.array(initial, dtype=DTYPE, copy=True).reshape(-1)
        self.integer = np.zeros(self.values.size, bool) if integer is None else np.asarray(integer, bool).reshape(-1)
        if self.integer.shape != self.values.shape:
            raise ShapeError(f"integer mask of shape {self.integer.shape} for {self.values.size} buffer values")
        self._reports: dict[int, tuple[np.ndarray, int]] = {}

    @property
    def size(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes) * (1 + len(self._reports))

    def check(self, values: object, where: str) -> None:
        """Refuse a report that is no float64 vector of this table's size, or holds NaN."""
        if not isinstance(values, np.ndarray):
            raise ShapeError(f"{where}: buffers must be a numpy array, got {type(values).__name__}")
        if values.dtype != DTYPE:
            raise ShapeError(f"{where}: buffers dtype must be {DTYPE}, got {values.dtype}")
        if values.shape != self.values.shape:
            raise ShapeError(f"{where}: buffers shape must be {self.values.shape}, got {values.shape}")
        if np.isnan(values).any():  # +-inf may be a legitimate running min or max; NaN never is
            raise ShapeError(f"{where}: buffers hold {int(np.isnan(values).sum())} NaN values")

    def report(self, worker_id: int, values: np.ndarray, weight: int) -> None:
        """Record ``worker_id``'s current buffers (a copy: a transport reuses its receive buffer)."""
        self._reports[int(worker_id)] = (np.array(values, dtype=DTYPE, copy=True), int(weight))

    def merge(self) -> None:
        """Recompute ``values`` from the latest report of every worker."""
        if not self._reports or not self.size:
            return
        reports = [self._reports[w] for w in sorted(self._reports)]
        total = sum(weight for _, weight in reports)
        mean = np.zeros(self.size, DTYPE)
        for values, weight in reports:
            # Weights are sample counts, so sum(n * x) / sum(n): with one report, or
            # identical ones, exactly x again.
            mean += values * (weight if total > 0 else 1)
        mean /= total if total > 0 else len(reports)
        if self.integer.any():
            mean[self.integer] = np.max([values[self.integer] for values, _ in reports], axis=0)
        self.values = mean

    @property
    def reporters(self) -> list[int]:
        return sorted(self._reports)

    def state_dict(self) -> dict:
        """The served values, the integer mask and every worker's latest report (copies)."""
        return {"values": self.values.copy(), "integer": self.integer.copy(),
                "reports": {w: (v.copy(), n) for w, (v, n) in self._reports.items()}}

    def load_state_dict(self, state: dict) -> None:
        values = np.asarray(state["values"], DTYPE)
        if values.shape != self.values.shape:
            raise ShapeError(f"buffer state holds {values.size} values; this table holds {self.size}")
        reports = {int(w): (np.array(v, DTYPE), int(n)) for w, (v, n) in state["reports"].items()}
        for w, (v, _) in reports.items():
            if v.shape != self.values.shape:
                raise ShapeError(f"buffer state: worker {w}'s report has shape {v.shape}, not {self.values.shape}")
        self.values, self.integer = values.copy(), np.asarray(state["integer"], bool).copy()
        self._reports = reports

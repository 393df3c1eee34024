"""``rayps.Embedding`` and ``rayps.EmbeddingBag``: torch modules whose rows live on the parameter servers.

Drop-in for ``torch.nn.Embedding`` / ``torch.nn.EmbeddingBag`` (``sum`` and
``mean`` modes, ``padding_idx``, ``offsets``, ``per_sample_weights``), except
that the module holds no weight: each forward pulls only the *unique* ids of
its input from the shards, as a small leaf tensor, and computes on those. After
``backward`` that leaf's gradient is the row gradient with duplicate ids
already summed (autograd sums the uses of one row), and the worker pushes it
beside the dense gradient. The rest of the model (its ``nn.Parameter``\\ s) goes
through the dense path as before, so a model that mixes both needs no other
change. A worker's memory is what one batch touches, never the table.

A module's table is named after the module's place in the model
(``"user"`` for ``model.user``) unless ``table=`` names it; modules that name
the same table share its rows (they must agree on its shape).

Outside a job the modules have nowhere to read rows from: ``bind`` gives them a
``RowSource`` (the worker binds the shards; ``LocalRows`` is an in-process
table, for trying a model out).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, ShapeError


class RowSource(Protocol):
    def pull(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (unique int64) of ``table``, float32 (len(ids) x dim)."""
        ...


class _SparseModule(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 table: str | None = None, **unsupported):
        super().__init__()
        for key, value in unsupported.items():
            if value not in (None, False, 2.0):  # torch's defaults for max_norm, scale_grad_by_freq, sparse, norm_type
                raise ConfigError(f"{type(self).__name__}: {key}={value!r} is not supported on sparse tables")
        if int(num_embeddings) < 1 or int(embedding_dim) < 1:
            raise ConfigError(f"{type(self).__name__}: num_embeddings ({num_embeddings}) and embedding_dim"
                              f" ({embedding_dim}) must be positive")
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = padding_idx
        self.table = table
        self._source: RowSource | None = None
        self._touched: list[tuple[np.ndarray, torch.Tensor]] = []

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, table={self.table!r}"

    def _rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unique rows of ``ids`` pulled as a leaf tensor, and each id's index into them."""
        if ids.dtype not in (torch.int64, torch.int32):
            raise ShapeError(f"{self!r}: ids must be an integer tensor, got {ids.dtype}")
        if self._source is None:
            raise ConfigError(f"sparse table {self.table!r} is not bound: its rows live on the parameter servers;"
                              " train the model with rayps.Job, or LocalRows(model) to try it here")
        flat = ids.detach().reshape(-1).cpu().numpy().astype(np.int64, copy=False)
        if len(flat) and (flat.min() < 0 or flat.max() >= self.num_embeddings):
            bad = int(flat.min() if flat.min() < 0 else flat.max())
            raise ShapeError(f"table {self.table!r}: id {bad} is out of range [0, {self.num_embeddings})")
        unique, inverse = np.unique(flat, return_inverse=True)
        values = self._source.pull(self.table, unique)
        if self.padding_idx is not None:
            values[unique == self.padding_idx] = 0  # as torch: the padding row reads zero and never trains
        rows = torch.from_numpy(values).to(ids.device)
        if torch.is_grad_enabled() and self.training:
            rows.requires_grad_(True)
            self._touched.append((unique, rows))
        return rows, torch.from_numpy(inverse).to(ids.device).view(ids.shape)

    def row_parts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This module's (unique ids, row gradients), one pair per forward since the last call, then
        forgets them (``row_grads`` sums them per table)."""
        touched, self._touched = self._touched, []
        parts = [(u, r.grad.detach().cpu().numpy()) for u, r in touched if r.grad is not None]
        if self.padding_idx is not None:
            parts = [(u[u != self.padding_idx], g[u != self.padding_idx]) for u, g in parts]
        return parts


class Embedding(_SparseModule):
    """``torch.nn.Embedding`` with its rows on the parameter servers."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm=None, norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False,
                 *, table: str | None = None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, table, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows, index = self._rows(input)
        return F.embedding(index, rows)


class EmbeddingBag(_SparseModule):
    """``torch.nn.EmbeddingBag`` (``sum`` or ``mean``) with its rows on the parameter servers."""

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm=None, norm_type: float = 2.0,
                 scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                 include_last_offset: bool = False, padding_idx: int | None = None, *, table: str | None = None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, table, max_norm=max_norm,
                         norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq)
        if mode not in ("sum", "mean"):
            raise ConfigError(f"EmbeddingBag mode {mode!r} is not supported on sparse tables (sum or mean)")
        self.mode, self.include_last_offset = mode, include_last_offset

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        rows, index = self._rows(input)
        padding = None
        if self.padding_idx is not None:  # padding ids are left out of their bags, as torch does
            keep = input != self.padding_idx
            if offsets is None and input.dim() == 2:
                return self._padded_2d(rows, index, keep, per_sample_weights)
            padding = keep
        if padding is not None:
            index, offsets, per_sample_weights = _drop_padding(index, offsets, per_sample_weights, padding,
                                                               self.include_last_offset)
        return F.embedding_bag(index, rows, offsets, mode=self.mode, per_sample_weights=per_sample_weights,
                               include_last_offset=self.include_last_offset)

    def _padded_2d(self, rows, index, keep, weights):
        picked = F.embedding(index, rows) * keep.unsqueeze(-1)
        if weights is not None:
            picked = picked * weights.unsqueeze(-1)
        total = picked.sum(dim=1)
        if self.mode == "mean":
            total = total / keep.sum(dim=1, keepdim=True).clamp(min=1)
        return total


def _drop_padding(index, offsets, weights, keep, include_last):
    counts = torch.diff(torch.cat([offsets, torch.tensor([len(index)])])) if not include_last else torch.diff(offsets)
    bag = torch.repeat_interleave(torch.arange(len(counts)), counts)
    kept = keep.reshape(-1)
    new_counts = torch.bincount(bag[kept], minlength=len(counts))
    new_offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(new_counts, 0)[:-1]])
    if include_last:
        new_offsets = torch.cat([new_offsets, new_counts.sum().view(1)])
    return index[kept], new_offsets, None if weights is None else weights[kept]


def _summed(ids: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(ids, return_inverse=True)
    out = np.zeros((len(unique), grads.shape[1]), np.float32)
    np.add.at(out, inverse, grads)
    return unique, out


# ---- a model's sparse tables ------------------------------------------------------------

def sparse_modules(model: nn.Module) -> list[_SparseModule]:
    """The model's sparse modules, each with its table name set (its place in the model by default)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, _SparseModule):
            if module.table is None:
                module.table = name or "embedding"
            found.append(module)
    return found


def sparse_tables(model: nn.Module) -> dict[str, tuple[int, int]]:
    """table name -> (num_embeddings, dim), checked: modules sharing a table agree on its shape."""
    tables: dict[str, tuple[int, int]] = {}
    for m in sparse_modules(model):
        shape = (m.num_embeddings, m.embedding_dim)
        if tables.setdefault(m.table, shape) != shape:
            raise ConfigError(f"modules sharing sparse table {m.table!r} disagree on its shape:"
                              f" {tables[m.table]} and {shape}")
    return tables


def bind(model: nn.Module, source: RowSource) -> nn.Module:
    """Have every sparse module of ``model`` read its rows from ``source``; returns the model."""
    for m in sparse_modules(model):
        m._source = source
    return model


def row_grads(model: nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every table's row gradients of the last backward (duplicate ids summed), then forgotten."""
    per_table: dict[str, list] = {}
    for m in sparse_modules(model):
        per_table.setdefault(m.table, []).extend(m.row_parts())
    # one forward of one module: its ids are unique already; several (calls, or modules sharing a table): summed
    return {t: parts[0] if len(parts) == 1 else _summed(np.concatenate([u for u, _ in parts]),
                                                        np.concatenate([g for _, g in parts]))
            for t, parts in per_table.items() if parts}


def forget_rows(model: nn.Module) -> None:
    """Drop what the last forward pulled (a step that is not pushed)."""
    for m in sparse_modules(model):
        m._touched = []


class SavedRows:
    """Trained rows held in this process (what a job hands back): ``tables`` maps a name to
    ``(ids, rows)``; an id never trained reads as the shards would have created it."""

    def __init__(self, tables: dict[str, tuple[np.ndarray, np.ndarray]], configs: dict | None = None):
        self.tables = {}
        for name, (ids, rows) in tables.items():
            order = np.argsort(ids)
            self.tables[name] = (ids[order], rows[order])
        self.configs = configs or {}  # name -> TableConfig: how an untrained row starts

    def pull(self, table: str, ids: np.ndarray) -> np.ndarray:
        from ...ps.sparse.table import untrained_rows
        known, rows = self.tables[table]
        where = np.minimum(np.searchsorted(known, ids), max(len(known) - 1, 0))
        hit = (known[where] == ids) if len(known) else np.zeros(len(ids), bool)
        c = self.configs.get(table)
        dim = rows.shape[1] if rows.ndim == 2 and rows.shape[1] else c.dim
        out = np.zeros((len(ids), dim), np.float32)
        out[hit] = rows[where[hit]]
        if c is not None and not hit.all():
            out[~hit] = untrained_rows(c, ids[~hit])
        return out


class LocalRows:
    """An in-process row source with the shards' initial values: try a sparse model without a job.

    ``step(model, lr)`` applies plain SGD to the rows of the last backward."""

    def __init__(self, model: nn.Module, seed: int = 0, init: str = "normal", init_scale: float = 1.0):
        from ...ps.sparse.row_optimizers import RowOptimizerConfig
        from ...ps.sparse.table import SparseTable, TableConfig
        self._tables = {name: SparseTable(TableConfig(name, n, d, optimizer=RowOptimizerConfig("sgd", lr=1.0),
                                                      init=init, init_scale=init_scale, seed=seed), 0, 1, [0])
                        for name, (n, d) in sparse_tables(model).items()}
        bind(model, self)

    def pull(self, table: str, ids: np.ndarray) -> np.ndarray:
        return self._tables[table].rows(ids, worker_id=0)

    def step(self, model: nn.Module, lr: float) -> None:
        for table, (ids, grads) in row_grads(model).items():
            t = self._tables[table]
            t.push(0, t.clocks.completed(0) + 1, ids, grads * np.float32(lr), 1)

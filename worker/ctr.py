"""Synthetic click data with a known click model, and a DeepFM-style model for it.

``clicks`` draws examples of ``fields`` categorical features. Each field has
``vocab`` ids drawn from a Zipf law (exponent ``zipf``; id rank k has
probability proportional to k^-zipf, the ranks shuffled over the ids so hot
ids are spread across shards), numbered globally: field f's ids are
``f * vocab .. (f + 1) * vocab - 1``, so one table holds every field.

The true click model is a factorization machine: per id a bias ``w[id]`` and
a factor vector ``v[id]`` (``factors`` values),
``logit = b + sum_f w[x_f] + sum_{f<g} <v[x_f], v[x_g]>``, and the label is a
Bernoulli draw of ``sigmoid(logit)``. Because the probabilities are known, the
test split carries the AUC of the true model on those very examples
(``source.reference["auc"]``); a job reports its own AUC next to it.

Everything is drawn from ``seed`` with numpy's PCG64, so every run, worker
and machine sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..ps.sparse.row_store import initial_rows
from .data.sources import ArraySource
from .loop.embedding import Embedding, EmbeddingBag
from .loop.scoring import roc_auc  # the same AUC the job reports


class ReferencedSource(ArraySource):
    """An ``ArraySource`` that knows what the true model scores on it."""

    def __init__(self, x, y, reference: dict):
        super().__init__(x, y)
        self.reference = reference


def _zipf_ids(rng, n: int, vocab: int, exponent: float, permutation: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(np.arange(1, vocab + 1, dtype=np.float64) ** -exponent)
    ranks = np.searchsorted(cdf / cdf[-1], rng.random(n), side="right")
    return permutation[np.minimum(ranks, vocab - 1)]


def clicks(examples: int = 600_000, test: int = 50_000, fields: int = 8, vocab: int = 5_000,
           zipf: float = 1.3, factors: int = 4, bias_std: float = 0.6, factor_std: float = 0.2,
           offset: float = -1.0, seed: int = 0) -> dict:
    """Train and test splits of synthetic clicks; see the module docstring."""
    rng = np.random.default_rng(seed)
    total = fields * vocab
    w = rng.normal(0, bias_std, total).astype(np.float32)
    v = rng.normal(0, factor_std, (total, factors)).astype(np.float32)
    n = examples + test
    x = np.empty((n, fields), np.int64)
    for f in range(fields):
        x[:, f] = f * vocab + _zipf_ids(rng, n, vocab, zipf, rng.permutation(vocab))
    factor_sum = v[x].sum(axis=1)
    pairwise = 0.5 * ((factor_sum ** 2).sum(axis=1) - (v[x] ** 2).sum(axis=(1, 2)))
    logit = offset + w[x].sum(axis=1) + pairwise
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < p).astype(np.float32)
    test_auc = roc_auc(p[examples:], y[examples:])
    reference = {"auc": test_auc, "click_rate": float(y[examples:].mean()), "ids": total}
    return {"train": ArraySource(x[:examples], y[:examples]),
            "test": ReferencedSource(x[examples:], y[examples:], reference)}


def clicks_hard(seed: int = 0) -> dict:
    """``clicks`` on the click model before the CTR example was eased to reach its target: 100,000 ids per
    field (not 5,000), Zipf exponent 1.1 (not 1.3: a longer tail of rare ids), factor spread 0.35 (not 0.2:
    stronger pairwise effects), 200,000 train examples (not 600,000). examples/ctr-hard.yaml trains on it."""
    return clicks(examples=200_000, vocab=100_000, zipf=1.1, factor_std=0.35, seed=seed)


#: the largest id of the whole int64 space a table holds (ids are >= 0)
INT64_IDS = 2**63 - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _hashed_ids(field: int, ranks: np.ndarray, seed: int) -> np.ndarray:
    """Field ``field``'s id of each rank: a splitmix64 hash, so ids spread over the whole int64 space."""
    with np.errstate(over="ignore"):
        z = ranks.astype(np.uint64) + np.uint64((field << 40) ^ (seed << 56)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(1)).astype(np.int64)


def clicks_int64(examples: int = 2_000_000, test: int = 100_000, fields: int = 8, ids: int = 100_000_000,
                 zipf: float = 1.05, factors: int = 4, bias_std: float = 0.6, factor_std: float = 0.2,
                 offset: float = -1.0, seed: int = 0) -> dict:
    """``clicks`` over ``ids`` ids drawn from the whole int64 space (``ids / fields`` per field, Zipf ranks
    hashed to int64), for tables beyond memory. The true model's bias and factors of an id are a hash of it
    (the tables' own initializer, with the true model's spread), so no table of ``ids`` rows is ever held."""
    rng = np.random.default_rng(seed)
    vocab = ids // fields
    n = examples + test
    cdf = np.cumsum(np.arange(1, vocab + 1, dtype=np.float64) ** -zipf)
    cdf /= cdf[-1]
    x = np.empty((n, fields), np.int64)
    for f in range(fields):
        ranks = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), vocab - 1)
        x[:, f] = _hashed_ids(f, ranks, seed)
    del cdf
    flat = x.reshape(-1)
    w = initial_rows(flat, 1, "normal", bias_std, seed, "true-bias").reshape(n, fields)
    v = initial_rows(flat, factors, "normal", factor_std, seed, "true-factors").reshape(n, fields, factors)
    pairwise = 0.5 * ((v.sum(axis=1) ** 2).sum(axis=1) - (v ** 2).sum(axis=(1, 2)))
    p = 1 / (1 + np.exp(-(offset + w.sum(axis=1) + pairwise)))
    y = (rng.random(n) < p).astype(np.float32)
    reference = {"auc": roc_auc(p[examples:], y[examples:]), "click_rate": float(y[examples:].mean()), "ids": ids,
                 "ids_seen": int(len(np.unique(x[:examples])))}
    return {"train": ArraySource(x[:examples], y[:examples]),
            "test": ReferencedSource(x[examples:], y[examples:], reference)}


class DeepFM(nn.Module):
    """Wide (a per-id bias, summed over fields), factorization-machine pairs, and a deep MLP, on one
    logit. Both tables live on the parameter servers; the MLP and the global bias are dense."""

    def __init__(self, num_ids: int = 40_000, fields: int = 8, dim: int = 8, hidden=(64, 32)):
        super().__init__()
        self.wide = EmbeddingBag(num_ids, 1, mode="sum", table="wide")
        self.deep = Embedding(num_ids, dim, table="deep")
        layers, width = [], fields * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.deep(x)  # batch x fields x dim
        pairs = 0.5 * (e.sum(dim=1).pow(2) - e.pow(2).sum(dim=1)).sum(dim=1)
        return self.bias + self.wide(x).squeeze(1) + pairs + self.mlp(e.flatten(1)).squeeze(1)

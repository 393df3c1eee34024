"""Reading a batch's sparse ids before its forward (worker/loop/lookahead.py), on models people write.

No Ray: each model's ids read ahead are compared with the ids its forward pulls from a recording
row source; a model whose ids are not a function of the batch alone reads none.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import rayps
from rayps.worker.loop.batches import spread
from rayps.worker.loop.embedding import bind
from rayps.worker.loop.lookahead import lookahead


class Recording:
    """A row source that records what each table was asked (zeros for rows)."""

    def __init__(self, dims):
        self.dims, self.asked = dims, {}

    def pull(self, table, ids):
        self.asked.setdefault(table, []).append(ids.copy())
        return np.zeros((len(ids), self.dims[table]), np.float32)


def pulled(model, inputs, dims) -> dict[str, np.ndarray]:
    source = Recording(dims)
    bind(model, source)
    args, kwargs = spread(inputs)
    model(*args, **kwargs)
    return {t: np.unique(np.concatenate(parts)) for t, parts in source.asked.items()}


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = rayps.EmbeddingBag(1000, 4, mode="sum")
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.bag(x))


class WideDeep(nn.Module):
    """Two tables, one read twice, on columns of the input and an offset of one."""

    def __init__(self):
        super().__init__()
        self.user = rayps.Embedding(500, 4)
        self.item = rayps.Embedding(800, 4)
        self.mlp = nn.Linear(12, 1)

    def forward(self, x):
        u = self.user(x[:, 0])
        i = self.item(x[:, 1])
        j = self.item((x[:, 2] + 7) % 800)
        return self.mlp(torch.cat([u, i, j], dim=1))


class DictBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.items = rayps.Embedding(300, 4)
        self.head = nn.Linear(5, 1)

    def forward(self, ids, dense):
        return self.head(torch.cat([self.items(ids), dense], dim=1))


class IdsFromALayer(nn.Module):
    """The ids depend on a parameter: they cannot be known before the forward."""

    def __init__(self):
        super().__init__()
        self.route = nn.Linear(3, 50)
        self.emb = rayps.Embedding(50, 4)

    def forward(self, x):
        return self.emb(self.route(x).argmax(dim=1)).sum(dim=1)


class Branching(nn.Module):
    """A forward that branches on the data: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.emb = rayps.Embedding(50, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.emb(x).sum()
        return self.emb(x + 1).sum()


def test_ids_read_ahead_are_the_ids_the_forward_pulls():
    rng = np.random.default_rng(0)
    cases = [
        (Bag(), torch.from_numpy(rng.integers(0, 1000, (64, 5))), {"bag": 4}),
        (WideDeep(), torch.from_numpy(np.stack([rng.integers(0, 500, 32), rng.integers(0, 800, 32),
                                                rng.integers(0, 800, 32)], 1)), {"user": 4, "item": 4}),
        (DictBatch(), {"ids": torch.from_numpy(rng.integers(0, 300, 16)), "dense": torch.zeros(16, 1)},
         {"items": 4}),
    ]
    for model, inputs, dims in cases:
        upcoming = lookahead(model)
        assert upcoming is not None, type(model).__name__
        ahead = upcoming(inputs)
        expected = pulled(model, inputs, dims)
        assert ahead.keys() == expected.keys(), type(model).__name__
        for table in expected:
            np.testing.assert_array_equal(ahead[table], expected[table])


def test_ids_that_depend_on_more_than_the_batch_are_not_read_ahead():
    assert lookahead(IdsFromALayer()) is None
    assert lookahead(Branching()) is None
    assert lookahead(nn.Linear(3, 1)) is None  # no sparse table at all


def test_out_of_range_ids_are_left_for_the_forward_to_refuse():
    upcoming = lookahead(Bag())
    assert upcoming(torch.tensor([[1, 2, 1000]])) == {}
    assert list(upcoming(torch.tensor([[1, 2, 3]]))["bag"]) == [1, 2, 3]

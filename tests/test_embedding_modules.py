"""rayps.Embedding / EmbeddingBag are drop-ins for torch's: the same outputs and the same row gradients
(duplicate ids summed), given the same rows. No Ray: the rows come from an in-process source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rayps
from rayps.errors import ConfigError, ShapeError
from rayps.worker.loop.embedding import bind, row_grads, sparse_tables

ROWS, DIM = 30, 4


class Rows:
    """A row source holding a torch weight's values, counting what it was asked."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.detach().numpy().copy()
        self.asked: list[np.ndarray] = []

    def pull(self, table, ids):
        self.asked.append(ids)
        return self.weight[ids].copy()


def pair(torch_cls, rayps_cls, **kw):
    torch.manual_seed(0)
    reference = torch_cls(ROWS, DIM, **kw)
    mine = rayps_cls(ROWS, DIM, **kw)
    holder = nn.ModuleDict({"emb": mine})
    source = Rows(reference.weight)
    bind(holder, source)
    return reference, mine, holder, source


def dense_grad_of(ids, grads) -> np.ndarray:
    out = np.zeros((ROWS, DIM), np.float32)
    out[ids] = grads
    return out


# (torch takes per_sample_weights in sum mode only)
@pytest.mark.parametrize("mode,form", [("sum", "2d"), ("mean", "2d"), ("sum", "offsets"), ("mean", "offsets"),
                                       ("sum", "weights")])
def test_embedding_bag_matches_torch_outputs_and_row_gradients(mode, form):
    reference, mine, holder, source = pair(nn.EmbeddingBag, rayps.EmbeddingBag, mode=mode)
    ids = torch.tensor([[1, 2, 2, 7], [7, 7, 3, 1], [0, 29, 2, 2]])
    args = {"2d": (ids,), "offsets": (ids.reshape(-1), torch.tensor([0, 3, 5])),
            "weights": (ids, None, torch.rand(ids.shape))}[form]
    ours, theirs = mine(*args), reference(*args)
    torch.testing.assert_close(ours, theirs)
    (ours * torch.arange(1.0, DIM + 1)).sum().backward()
    (theirs * torch.arange(1.0, DIM + 1)).sum().backward()
    got = row_grads(holder)["emb"]
    np.testing.assert_array_equal(got[0], np.unique(ids.numpy()))  # unique ids, each pulled once
    np.testing.assert_allclose(dense_grad_of(*got), reference.weight.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert len(source.asked) == 1 and len(source.asked[0]) == len(np.unique(ids.numpy()))


def test_embedding_matches_torch_with_padding_idx():
    reference, mine, holder, _ = pair(nn.Embedding, rayps.Embedding, padding_idx=0)
    with torch.no_grad():
        reference.weight[0] = 0  # torch starts the padding row at zero; ours reads it as zero
    ids = torch.tensor([[0, 3, 3], [5, 0, 3]])
    ours, theirs = mine(ids), reference(ids)
    torch.testing.assert_close(ours, theirs)
    ours.pow(2).sum().backward()
    theirs.pow(2).sum().backward()
    got_ids, got = row_grads(holder)["emb"]
    assert 0 not in got_ids  # the padding row never trains
    np.testing.assert_allclose(dense_grad_of(got_ids, got), reference.weight.grad.numpy(), rtol=1e-6)


def test_two_modules_sharing_a_table_push_one_summed_gradient_per_row():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = rayps.Embedding(ROWS, DIM, table="shared")
            self.b = rayps.Embedding(ROWS, DIM, table="shared")

        def forward(self, x):
            return self.a(x[:, 0]) + self.b(x[:, 1])

    model = Tied()
    assert sparse_tables(model) == {"shared": (ROWS, DIM)}
    bind(model, Rows(torch.zeros(ROWS, DIM)))
    model(torch.tensor([[1, 1], [2, 1]])).sum().backward()
    ids, grads = row_grads(model)["shared"]
    np.testing.assert_array_equal(ids, [1, 2])
    np.testing.assert_array_equal(grads, [[3.0] * DIM, [1.0] * DIM])


def test_bad_uses_are_refused_by_name():
    with pytest.raises(ConfigError, match="mode 'max' is not supported"):
        rayps.EmbeddingBag(10, 2, mode="max")
    with pytest.raises(ConfigError, match="max_norm=1.0 is not supported"):
        rayps.Embedding(10, 2, max_norm=1.0)
    unbound = rayps.Embedding(10, 2, table="t")
    with pytest.raises(ConfigError, match="sparse table 't' is not bound"):
        unbound(torch.tensor([1]))
    bind(nn.ModuleDict({"t": unbound}), Rows(torch.zeros(10, 2)))
    with pytest.raises(ShapeError, match=r"id 10 is out of range \[0, 10\)"):
        unbound(torch.tensor([3, 10]))
    with pytest.raises(ShapeError, match="ids must be an integer tensor"):
        unbound(torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="disagree on its shape"):
        sparse_tables(nn.ModuleDict({"a": rayps.Embedding(10, 2, table="x"), "b": rayps.Embedding(10, 3, table="x")}))


def test_evaluation_pulls_without_keeping_anything_for_a_push():
    reference, mine, holder, _ = pair(nn.Embedding, rayps.Embedding)
    holder.eval()
    mine(torch.tensor([1, 2]))
    with torch.no_grad():
        holder.train()
        mine(torch.tensor([1, 2]))
    assert row_grads(holder) == {}

"""A model whose parameters count how often each example's gradient was applied, shared by the exactly-once
tests in real processes (tests/test_failures.py, tests/test_data_jobs.py) and in one (tests/local_job.py)."""

from __future__ import annotations

import torch
from torch import nn


class Counter(nn.Module):
    """p[i] goes up by exactly 1 each time example i's gradient is applied (SGD, lr 1, loss -sum)."""

    def __init__(self, n: int = 600):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return self.p[x[:, 0].long()]


def minus_sum(out, y):
    return -out.sum()


def assert_counted_once_per_epoch(result, epochs: int, examples: int = 500) -> None:
    """A finished counting job (JobResult): each training example applied exactly once per epoch, the
    held-out ones never; no push applied twice."""
    import numpy as np

    s = result.summary
    assert s["applied_twice"] == 0
    counts = result.model.p.detach().numpy()
    assert (counts[:examples] == epochs).all(), np.unique(counts[:examples], return_counts=True)
    assert (counts[examples:] == 0).all()
    assert s["examples_per_epoch"] == {str(e): examples for e in range(epochs)}

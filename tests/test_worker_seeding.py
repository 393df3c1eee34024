"""Per-worker randomness: each worker draws its own dropout masks, reproducibly (no Ray)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rayps.ps.transport.object_store import RayTransport
from rayps.ps.core.partition import partition
from rayps.worker.data.sources import ArraySource
from rayps.worker.loop.losses import resolve_loss
from rayps.worker.loop.trainer import Worker, WorkerPlan


class Frozen(nn.Module):
    """A random frozen layer (it must come out the same everywhere) and Dropout."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.head = nn.Linear(8, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.head(self.drop(self.frozen(x)))


def make_worker(worker_id: int, seed: int = 3) -> Worker:
    data = ArraySource(np.zeros((16, 8), np.float32), np.zeros(16, np.int64))
    plan = WorkerPlan(worker_id=worker_id, num_workers=2, batch_size=4, epochs=1, seed=seed)
    # A handle per shard is only used once training starts; building a worker calls no shard.
    return Worker(plan, Frozen, resolve_loss("cross_entropy"), data, RayTransport((None,), tuple(partition(18, 1))))


def dropout_mask(worker: Worker) -> torch.Tensor:
    worker.model.train()
    return worker.model.drop(torch.ones(1000)) == 0


def test_workers_draw_different_dropout_masks_from_one_job_seed():
    masks = {w: dropout_mask(make_worker(w)) for w in (0, 1)}
    assert not torch.equal(masks[0], masks[1])
    assert 400 < int(masks[0].sum()) < 600  # still dropout at p = 0.5


def test_a_workers_masks_repeat_with_the_same_seed_and_change_with_another():
    assert torch.equal(dropout_mask(make_worker(1)), dropout_mask(make_worker(1)))
    assert not torch.equal(dropout_mask(make_worker(1, seed=3)), dropout_mask(make_worker(1, seed=4)))


def test_every_worker_builds_the_model_the_driver_builds_frozen_parameters_included():
    torch.manual_seed(3)
    driver_model = Frozen()
    for w in (0, 1):
        model = make_worker(w).model
        assert torch.equal(model.frozen.weight, driver_model.frozen.weight)
        assert torch.equal(model.head.weight, driver_model.head.weight)

"""The single-process reference the golden tests compare a job with: one torch loop over the digits job's
batches, in the order one worker of the job trains them."""

from __future__ import annotations

import numpy as np
import torch

from rayps.worker.data.sources import resolve_data
from rayps.worker.models import mlp
from rayps.worker.queue.sharder import EpochSharder


def plain_digits_loop(seed: int, epochs: int, batch: int, optimizer, schedule=None) -> tuple[np.ndarray, int]:
    """The MLP trained on digits by one process: ``optimizer(params)`` (and ``schedule(opt, total)``, stepped
    after each batch), one step per batch of one worker's shard. The flat parameters, and the batches taken."""
    torch.manual_seed(seed)
    model = mlp()
    train = resolve_data("rayps.worker.datasets:digits", seed=seed).train
    sharder = EpochSharder(len(train), 1, batch, seed)
    total = epochs * sharder.batches_per_epoch
    opt = optimizer(model.parameters())
    sched = schedule(opt, total) if schedule is not None else None
    for epoch in range(epochs):
        for indices in sharder.batches(epoch, 0):
            x, y = train.batch(indices)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if sched is not None:
                sched.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy(), total

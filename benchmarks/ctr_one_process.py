"""The harder CTR example's data in one plain torch process: what a model learns from it without rayps.

    python benchmarks/ctr_one_process.py [--epochs 1]

The same DeepFM shape as ``rayps.worker.ctr:DeepFM`` (a wide per-id bias, factorization-machine pairs and
a 64-32 MLP over 8-dim rows), with torch's sparse ``nn.Embedding`` tables on Adagrad (lr 0.05) and the
dense part on Adam (lr 0.002), one batch of 1,024 per step (the two rayps workers' 512 each), on
``clicks_hard``. It prints the test AUC and its ratio to the true click model's, the figure
examples/ctr-hard.yaml's summary reports as ``auc_ratio``: the gap both leave is the data's, not the system's.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from rayps.worker.ctr import clicks_hard
from rayps.worker.loop.scoring import roc_auc

IDS, FIELDS, DIM, BATCH = 800_000, 8, 8, 1024


class DeepFM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Embedding(IDS, 1, sparse=True)
        torch.nn.init.zeros_(self.wide.weight)
        self.deep = torch.nn.Embedding(IDS, DIM, sparse=True)
        torch.nn.init.normal_(self.deep.weight, std=0.01)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(FIELDS * DIM, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                                       torch.nn.ReLU(), torch.nn.Linear(32, 1))
        self.bias = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        rows = self.deep(x)
        pairs = 0.5 * ((rows.sum(1) ** 2) - (rows ** 2).sum(1)).sum(1)
        return self.bias + self.wide(x).sum((1, 2)) + pairs + self.mlp(rows.flatten(1)).squeeze(1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = clicks_hard()
    train, test = data["train"], data["test"]
    x, y = (torch.as_tensor(a) for a in train.batch(np.arange(len(train)))[:2])
    xt, yt = test.batch(np.arange(len(test)))[:2]
    model = DeepFM()
    tables = torch.optim.Adagrad([*model.wide.parameters(), *model.deep.parameters()], lr=0.05)
    dense = torch.optim.Adam([*model.mlp.parameters(), model.bias], lr=0.002)
    for _ in range(args.epochs):
        order = torch.randperm(len(x))
        for lo in range(0, len(x), BATCH):
            b = order[lo:lo + BATCH]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[b]), y[b].float())
            tables.zero_grad()
            dense.zero_grad()
            loss.backward()
            tables.step()
            dense.step()
    with torch.no_grad():
        auc = roc_auc(torch.sigmoid(model(torch.as_tensor(xt))).numpy(), np.asarray(yt))
    print(f"one process, {args.epochs} epoch(s): test AUC {auc:.4f}; the true click model's"
          f" {test.reference['auc']:.4f}; ratio {auc / test.reference['auc']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

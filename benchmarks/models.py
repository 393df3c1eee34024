"""The digits CNN with BatchNorm (and Dropout): rayps against a plain single-process torch loop.

    python benchmarks/models.py [--epochs N] [--lr LR] [--seeds N]

Each rayps run is a full job (2 shards, 2 workers, batch 32 per worker, Adam)
on one local Ray instance, once per seed. Its reference is the same model,
optimizer, epochs and seed in one process, stepping once per 32 examples
(asp) or per 64 (bsp, whose one step takes both workers' batches). The test
split has 360 images, so one image is 0.28 points: compare the means.
"model = summary" checks that ``JobResult.model``, scored again, gives the
summary's accuracy (its BatchNorm statistics are the trained ones).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
import torch
from torch import nn

import rayps
from rayps.runtime import RAY
from rayps.worker.datasets import digits
from rayps.worker.models import cnn

MODELS = [("BatchNorm", {}), ("BatchNorm + Dropout 0.3", {"dropout": 0.3})]
RUNS = [("asp", "grpc"), ("bsp", "ray")]


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(dim=1).numpy() == y).mean())


def single_process(model_args: dict, batch: int, epochs: int, lr: float, seed: int = 0) -> float:
    """Test accuracy of the plain torch loop: one process, Adam, ``batch`` examples a step."""
    torch.manual_seed(seed)
    (x, y), (xt, yt) = digits()["train"], digits()["test"]
    model = cnn(**model_args)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for b in np.array_split(rng.permutation(len(x)), len(x) // batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
            opt.step()
    return accuracy(model, xt, yt)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    RAY.start(dashboard=False)
    xt, yt = digits()["test"]
    print("| model | mode, transport | rayps test accuracy per seed | single process per seed | mean difference"
          " | model = summary |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model_args in MODELS:
            for mode, transport in RUNS:
                got, ref, same = [], [], True
                for seed in range(args.seeds):
                    result = rayps.Job(model=cnn, model_args=model_args, seed=seed, epochs=args.epochs,
                                       optimizer={"name": "adam", "lr": args.lr}, consistency={"mode": mode},
                                       transport=transport, eval_every_s=0).run(
                        output=f"{tmp}/{name}-{mode}-{seed}", progress=False, dashboard=False, report=False)
                    got.append(result.summary["test_accuracy"])
                    same = same and accuracy(result.model, xt, yt) == got[-1]
                    ref.append(single_process(model_args, 64 if mode == "bsp" else 32, args.epochs, args.lr, seed))
                diff = 100 * (np.mean(got) - np.mean(ref))
                print(f"| {name} | {mode}, {transport} | {', '.join(f'{a:.3f}' for a in got)}"
                      f" | {', '.join(f'{a:.3f}' for a in ref)} | {diff:+.1f} points | {'yes' if same else 'NO'} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

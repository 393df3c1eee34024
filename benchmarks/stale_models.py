"""Sequence models under stale updates: a transformer encoder and an LSTM, rayps against one process.

    python benchmarks/stale_models.py [--models transformer,lstm] [--modes bsp,ssp,asp] [--seeds 5]
                                      [--epochs 8] [--set key=value ...]

The task is ``order_tokens`` (which of two marked tokens comes first: a model
must use positions). Each rayps run is a full job (2 shards, 2 workers, batch
32 per worker, Adam 2e-3) on one local Ray instance, once per seed and mode.
Its reference is the same model, optimizer, epochs and seed in one process,
one step per 32 examples: the same number of examples; at a constant lr, and
with a cosine decay over the whole run. (rayps's default schedule, auto,
decays over the job's last fifth under asp and ssp, and keeps bsp constant.) ``--set`` passes job
keys (``--set clip_grad_norm=1.0``, ``--set consistency.staleness_aware_lr=true``)
to every rayps run, to measure what steadies stale updates. One JSON line per
run, then a table: accuracy on the 1,000 test sequences (one is 0.1 points).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import numpy as np
import torch
import yaml
from torch import nn

import rayps
from rayps.worker import models
from rayps.worker.datasets import order_tokens

LR, BATCH = 2e-3, 32


def one_process(model_name: str, epochs: int, seed: int, cosine: bool = False) -> float:
    """Test accuracy of the plain torch loop: one process, Adam, one step per BATCH examples; ``cosine``:
    the lr decayed to 0 over the whole run (CosineAnnealingLR)."""
    (x, y), (xt, yt) = order_tokens()["train"], order_tokens()["test"]
    torch.manual_seed(seed)
    model = getattr(models, model_name)()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = len(x) // BATCH
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch) if cosine else None
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for b in np.array_split(rng.permutation(len(x)), steps_per_epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
            opt.step()
            if decay is not None:
                decay.step()
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(xt)).argmax(dim=1).numpy() == yt).mean())


def rayps_job(model_name: str, mode: str, epochs: int, seed: int, overrides: dict) -> float:
    config = {"model": f"rayps.worker.models:{model_name}", "data": "rayps.worker.datasets:order_tokens",
              "workers": 2, "servers": 2, "batch_size": BATCH, "epochs": epochs, "seed": seed,
              "optimizer": {"name": "adam", "lr": LR}, "consistency": {"mode": mode},
              "eval_every_s": 0, "checkpoint": {"enabled": False}}
    for key, value in overrides.items():  # dotted keys into the nested config
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    with tempfile.TemporaryDirectory() as out:
        result = rayps.Job(**config).run(output=out, progress=False, dashboard=False, report=False)
    return float(result.summary["test_accuracy"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="transformer,lstm")
    parser.add_argument("--modes", default="bsp,ssp,asp")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    table: dict = {}
    for model_name in args.models.split(","):
        for seed in range(args.seeds):
            runs = [("one process", lambda: one_process(model_name, args.epochs, seed)),
                    ("one process, cosine", lambda: one_process(model_name, args.epochs, seed, cosine=True))]
            runs += [(mode, lambda mode=mode: rayps_job(model_name, mode, args.epochs, seed, overrides))
                     for mode in args.modes.split(",")]
            for label, fn in runs:
                accuracy = fn()
                table.setdefault((model_name, label), []).append(accuracy)
                print(json.dumps({"model": model_name, "run": label, "seed": seed, "accuracy": accuracy,
                                  "set": overrides}), flush=True)
    print(f"\n{'model':12} {'run':20} {'min':>6} {'mean':>6}  per seed    (--set {overrides})")
    for (model_name, label), accs in table.items():
        print(f"{model_name:12} {label:20} {min(accs):6.3f} {np.mean(accs):6.3f}  {' '.join(f'{a:.3f}' for a in accs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

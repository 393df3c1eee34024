"""Scores of a trained model on a test split that the job's summary reports beside its loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.sources import DataSource
from .batches import ModelCall, leading_size


def evaluate(model: nn.Module, loss_fn, data: DataSource, batch_size: int = 1024,
             call: ModelCall = ModelCall()) -> tuple[float, float | None]:
    """Mean loss over ``data`` and, for class-index targets, accuracy."""
    return score(model, loss_fn, data, batch_size, call)[:2]


@torch.no_grad()
def score(model: nn.Module, loss_fn, data: DataSource, batch_size: int = 1024, call: ModelCall = ModelCall(),
          ) -> tuple[float, float | None, float | None]:
    """One pass over ``data``, the model called as in training (``call``): the mean loss; accuracy for
    class-index targets; ROC AUC of the single logit for 0/1 targets (None where the targets, or the
    output, are not of that kind)."""
    model.eval()
    total_loss, correct, seen, classify, binary = 0.0, 0, 0, True, True
    scores, labels = [], []
    for lo in range(0, len(data), batch_size):
        x, y = data.batch(np.arange(lo, min(lo + batch_size, len(data))))[:2]
        loss, out = call.loss_and_output(model, x, y, loss_fn)
        n = leading_size(y) or leading_size(x) or 1
        total_loss += float(loss) * n
        seen += n
        plain = isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor)
        classify = classify and plain and y.dtype == torch.int64 and out.dim() == 2
        if classify:
            correct += int((out.argmax(dim=1) == y).sum())
        binary = binary and plain and out.numel() == len(y) \
            and y.dtype in (torch.float32, torch.float64, torch.int64) and bool(((y == 0) | (y == 1)).all())
        if binary:
            scores.append(out.reshape(-1).float().numpy())
            labels.append(y.reshape(-1).numpy())
    auc = roc_auc(np.concatenate(scores), np.concatenate(labels)) if binary and scores else None
    return total_loss / seen, (correct / seen if classify else None), auc


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """The probability a random positive scores above a random negative (ties count half)."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        return None
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    _, tie, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.bincount(tie, weights=ranks) / counts)[tie]  # tied scores share their mean rank
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

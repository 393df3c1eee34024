"""The AUC the summary reports, against scikit-learn's, with ties."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from rayps.worker.loop.scoring import roc_auc


def test_roc_auc_matches_scikit_learn_with_tied_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 5000).astype(np.float32)  # many ties
    labels = (rng.random(5000) < 0.2 + 0.03 * scores).astype(np.float32)
    assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) < 1e-12


def test_roc_auc_of_one_class_is_undefined():
    assert roc_auc(np.arange(5.0), np.ones(5)) is None


def test_one_scoring_pass_gives_loss_and_the_auc_of_binary_targets_or_the_accuracy_of_classes():
    import torch

    from rayps.worker.data.sources import ArraySource
    from rayps.worker.loop.losses import bce, cross_entropy
    from rayps.worker.loop.scoring import score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 1)).astype(np.float32)
    y = (rng.random(3000) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(np.float32)
    logit = torch.nn.Linear(1, 1)
    with torch.no_grad():
        logit.weight.fill_(2.0)
        logit.bias.zero_()
    loss, accuracy, auc = score(logit, bce, ArraySource(x, y))
    assert accuracy is None and abs(auc - roc_auc_score(y, x[:, 0])) < 1e-12  # a monotone logit: x's own AUC
    assert loss == pytest.approx(float(bce(logit(torch.from_numpy(x)), torch.from_numpy(y))), rel=1e-5)
    classes = (x[:, 0] > 0).astype(np.int64)
    _, accuracy, auc = score(torch.nn.Linear(1, 2), cross_entropy, ArraySource(x, classes))
    assert auc is None and 0 <= accuracy <= 1

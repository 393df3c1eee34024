"""The AUC the summary reports, against scikit-learn's, with ties."""

import numpy as np
from sklearn.metrics import roc_auc_score

from rayps.worker.scoring import roc_auc


def test_roc_auc_matches_scikit_learn_with_tied_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 5000).astype(np.float32)  # many ties
    labels = (rng.random(5000) < 0.2 + 0.03 * scores).astype(np.float32)
    assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) < 1e-12


def test_roc_auc_of_one_class_is_undefined():
    assert roc_auc(np.arange(5.0), np.ones(5)) is None

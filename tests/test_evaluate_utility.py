"""Usefulness: train on synthetic (a phantom cohort), test on real (another): AUC well above chance;
the same synthetic volumes with shuffled labels: about chance.

The cohorts are phantom anatomy with conspicuous lesions (see _evaluate_cohorts.conspicuous_cohort): the
phantom's own lesions at 64 px cannot be seen at the classifier's 16x48x64 input size."""

from __future__ import annotations

import numpy as np
import pytest

from _evaluate_cohorts import conspicuous_cohort, summaries
from ctsynth.evaluate.utility import bootstrap_auc, predict, train_classifier


@pytest.fixture(scope="module")
def thumbs():
    real, labels = conspicuous_cohort(0, 20)
    synth, synth_labels = conspicuous_cohort(100, 20)
    assert labels == synth_labels
    return (np.stack([s.thumb for s in summaries(real, "real")]), np.asarray([int(l == "covid") for l in labels]),
            np.stack([s.thumb for s in summaries(synth, "synthetic")]))


def test_tstr_auc_is_well_above_chance_and_shuffled_labels_are_not(thumbs):
    real, y, synth = thumbs
    net = train_classifier(synth, y, steps=100, seed=0)
    auc, lo, hi = bootstrap_auc(y, predict(net, real), n=300, seed=0)
    assert auc > 0.8 and lo > 0.6
    shuffled = np.random.default_rng(5).permutation(y)
    net = train_classifier(synth, shuffled, steps=100, seed=0)
    auc_shuffled, lo, hi = bootstrap_auc(y, predict(net, real), n=300, seed=0)
    assert abs(auc_shuffled - 0.5) < 0.25
    assert lo < 0.5 < hi


def test_bootstrap_interval_brackets_the_auc_and_is_seeded():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.3, 0.6, 0.4, 0.8, 0.9, 0.2, 0.7])
    auc, lo, hi = bootstrap_auc(y, p, n=200, seed=1)
    assert lo <= auc <= hi
    assert (auc, lo, hi) == bootstrap_auc(y, p, n=200, seed=1)
    assert auc == pytest.approx(15 / 16)

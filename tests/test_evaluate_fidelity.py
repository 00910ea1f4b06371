"""Fidelity metrics against known answers: Gaussians with a known Frechet distance, and phantom sets where
a disjoint sample of the same distribution must be close and a shifted set or noise far."""

from __future__ import annotations

import numpy as np
import pytest

from _evaluate_cohorts import cohort, noise_volume, shifted, summaries
from ctsynth.evaluate.fidelity import (frechet_distance, frechet_terms, matched_scores, median_bandwidth, mmd_rbf,
                                       prdc_scores, standardiser)


def test_frechet_distance_of_gaussians_matches_the_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2.0 + np.array([1.0, 0.0, 0.0])
    # FD = |mu|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) = 1 + 3 * (1 + 4 - 2 * 2) = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # its two terms: 1 from the means, 3 from the spreads; they add up to MONAI's distance
    mean, cov = frechet_terms(a, b)
    assert mean == pytest.approx(1.0, abs=0.1) and cov == pytest.approx(3.0, rel=0.1)
    assert mean + cov == pytest.approx(frechet_distance(a, b), rel=1e-6)
    mean, cov = frechet_terms(a, a + np.array([0.0, 2.0, 0.0]))  # a shift alone: all of it in the mean term
    assert mean == pytest.approx(4.0) and cov == pytest.approx(0.0, abs=1e-6)


def test_mmd_and_prdc_on_identical_and_separated_sets():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(60, 4))
    bw = median_bandwidth(a)
    assert mmd_rbf(a, a, bw) == pytest.approx(0.0, abs=1e-9)
    assert mmd_rbf(a, a + 10.0, bw) > 1.0
    same = prdc_scores(a, a)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc_scores(a, a + 10.0)
    assert far["precision"] == 0.0 and far["coverage"] == 0.0


@pytest.fixture(scope="module")
def phantom_sets():
    reference = summaries(cohort(0, 20), "ref")
    same = summaries(cohort(100, 20), "same")  # disjoint seeds, same distribution
    moved = summaries([shifted(v) for v in cohort(100, 20) if v.label == "normal"], "moved")  # no lesions, HU +100
    noise = summaries([noise_volume(k, cohort(0, 1)[0]) for k in range(10)], "noise")
    return reference, same, moved, noise


def _scores(reference, candidate, feature):
    ref = np.stack([feature(s) for s in reference])
    scale = standardiser(ref)
    # compared at the same sample size (10), as the evaluation does
    return matched_scores(scale(ref), scale(np.stack([feature(s) for s in candidate])), 10, seed=0)


@pytest.mark.parametrize("space", ["radiomics", "encoder"])
def test_same_distribution_is_close_shift_and_noise_are_far(phantom_sets, space):
    reference, same, moved, noise = phantom_sets
    if space == "radiomics":
        feature = lambda s: s.radiomics  # noqa: E731
    else:
        from ctsynth.evaluate.encoder import TrainedEncoder

        encoder = TrainedEncoder.fit(np.stack([s.thumb for s in reference]), steps=60, seed=0)
        table = {id(s): f for group in phantom_sets
                 for s, f in zip(group, encoder.features(np.stack([s.thumb for s in group])))}
        feature = lambda s: table[id(s)]  # noqa: E731
    close = _scores(reference, same, feature)
    for far in (_scores(reference, moved, feature), _scores(reference, noise, feature)):
        assert far["frechet_distance"] > 3.0 * close["frechet_distance"]
        assert far["mmd"] > 3.0 * close["mmd"]
        assert far["precision"] < close["precision"]

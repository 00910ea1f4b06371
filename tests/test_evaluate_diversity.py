"""MS-SSIM diversity: ten copies of one volume are flagged, a phantom cohort is not."""

from __future__ import annotations

import numpy as np
import pytest

from _evaluate_cohorts import cohort, summaries
from ctsynth.evaluate.diversity import mean_pairwise_ms_ssim, pairs_to_score
from ctsynth.evaluate.verdicts import diversity_row


def test_ten_copies_are_flagged_and_a_cohort_is_not():
    thumbs = np.stack([s.thumb for s in summaries(cohort(0, 10))])
    real = mean_pairwise_ms_ssim(thumbs)
    copies = mean_pairwise_ms_ssim(np.stack([thumbs[3]] * 10))
    assert copies == pytest.approx(1.0, abs=1e-4)
    assert real < 0.98
    assert diversity_row(copies, real)["verdict"] == "fail"
    other = np.stack([s.thumb for s in summaries(cohort(100, 10))])
    assert diversity_row(mean_pairwise_ms_ssim(other), real)["verdict"] == "pass"


def test_pair_sampling_is_seeded_and_capped():
    assert len(pairs_to_score(5, 300, 0)) == 10
    sample = pairs_to_score(100, 50, 3)
    assert len(sample) == 50 and len(set(sample)) == 50
    assert sample == pairs_to_score(100, 50, 3)

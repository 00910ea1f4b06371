"""Lung masks against the phantom's ground truth (normal and COVID cases, lesions included)."""

from __future__ import annotations

import numpy as np
import pytest

from ctsynth.segment import lung_mask, split_lungs

phantom = pytest.importorskip("ctsynth.phantom", reason="the phantom package (contract C) is not importable")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.mark.parametrize("seed,label", [(0, "normal"), (1, "normal"), (0, "covid"), (3, "covid")])
def test_lung_mask_matches_the_phantom(seed, label):
    case = phantom.make_phantom_case(seed, label, 64)
    mask = lung_mask(case.volume)
    assert dice(mask, case.lung_mask) > 0.9
    if label == "covid":
        assert case.lesion_mask.any()
        # Ground glass and consolidation inside the lungs are part of the mask.
        assert mask[case.lesion_mask].mean() > 0.85
    left, right = split_lungs(mask, direction=case.volume.direction)
    assert left.any() and right.any() and not (left & right).any()
    assert min(left.sum(), right.sum()) > 0.4 * max(left.sum(), right.sum())
    # The phantom is built in LPS with the patient's left lung (and the heart) towards +x.
    assert np.nonzero(left)[2].mean() > np.nonzero(right)[2].mean()

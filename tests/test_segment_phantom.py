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
    left, right = split_lungs(mask, direction=case.volume.direction)
    assert left.any() and right.any() and not (left & right).any()
    assert min(left.sum(), right.sum()) > 0.4 * max(left.sum(), right.sum())
    # The phantom is built in LPS with the patient's left lung (and the heart) towards +x.
    assert np.nonzero(left)[2].mean() > np.nonzero(right)[2].mean()


SUBPLEURAL_GAP = ("known gap (docs/evaluation.md, limits): dense consolidation lying as a thin crescent on the "
                  "chest wall has the HU of the wall's muscle, so neither the threshold nor the per-lung 10 mm "
                  "closing brings it into the mask; this case's mask holds 82% of its lesion voxels")


@pytest.mark.parametrize("seed", [3, 5, pytest.param(0, marks=pytest.mark.xfail(strict=True, reason=SUBPLEURAL_GAP))])
def test_lung_mask_includes_the_lesions(seed):
    """Ground glass and consolidation inside the lungs are part of the lung mask."""
    case = phantom.make_phantom_case(seed, "covid", 64)
    assert case.lesion_mask.any()
    assert lung_mask(case.volume)[case.lesion_mask].mean() > 0.85

"""Vessel centrelines against constructions with a known answer: wide tubes and in-plane bands are vessels,
round lesions and short clusters of them are not, and a vessel running through ground glass stays lesion."""

from __future__ import annotations

import numpy as np
import pytest

from ctsynth.segment import lesion_masks
from ctsynth.segment import vessel_voxels

LUNG_HU, BLOOD_HU, GGO_HU = -850.0, 40.0, -500.0


def _block(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.full(shape, LUNG_HU, dtype=np.float32) + rng.normal(0.0, 20.0, shape).astype(np.float32)


def _vessels(hu, spacing):
    lung = np.ones(hu.shape, dtype=bool)
    return vessel_voxels(hu, hu, spacing, lung)


def _ball(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def test_a_tube_wider_than_the_opening_is_a_vessel_not_a_lesion():
    shape = (64, 48, 48)
    hu = _block(shape)
    yy, xx = np.indices(shape[1:])
    tube = np.broadcast_to((yy - 24) ** 2 + (xx - 24) ** 2 <= 4 ** 2, shape)  # radius 4 mm, along z
    hu[tube] = BLOOD_HU
    assert _vessels(hu, (1.0, 1.0, 1.0))[tube].mean() > 0.9
    lesion, _, _ = lesion_masks(hu, np.ones(shape, dtype=bool), (1.0, 1.0, 1.0))
    assert lesion.sum() < 0.02 * tube.sum()


@pytest.mark.parametrize("radius, value", [(5, GGO_HU), (7, 0.0), (9, GGO_HU)])
def test_a_round_lesion_is_not_a_vessel(radius, value):
    shape = (40, 40, 40)
    hu = _block(shape, seed=radius)
    ball = _ball(shape, (20, 20, 20), radius)
    hu[ball] = value
    assert _vessels(hu, (1.0, 1.0, 1.0))[ball].mean() < 0.05
    lesion, _, _ = lesion_masks(hu, np.ones(shape, dtype=bool), (1.0, 1.0, 1.0))
    assert lesion.sum() == pytest.approx(ball.sum(), rel=0.10)


def test_a_short_cluster_of_touching_lesions_is_not_a_vessel():
    """Two touching balls make an elongated blob, but it is short next to its width (the length rule)."""
    shape = (40, 40, 56)
    hu = _block(shape, seed=3)
    cluster = _ball(shape, (20, 20, 22), 7) | _ball(shape, (20, 20, 34), 7)
    hu[cluster] = GGO_HU
    assert _vessels(hu, (1.0, 1.0, 1.0))[cluster].mean() < 0.05


def test_a_vessel_lying_in_a_thick_slice_is_a_vessel():
    """5 mm slices, 0.7 mm pixels: a 3 mm vessel within one slice is a grey band (partial volume) in it."""
    spacing = (5.0, 0.7, 0.7)
    shape = (12, 128, 128)
    hu = _block(shape, seed=4)
    band = np.zeros(shape, dtype=bool)
    band[6, 60:65, 10:118] = True  # 3.5 mm wide, 75 mm long
    hu[band] = GGO_HU  # a 3 mm vessel filling about 40% of the 5 mm slice
    assert _vessels(hu, spacing)[band].mean() > 0.9
    lesion, _, _ = lesion_masks(hu, np.ones(shape, dtype=bool), spacing)
    assert lesion.sum() < 0.05 * band.sum()


def test_a_vessel_through_ground_glass_is_counted_as_lesion():
    shape = (64, 48, 48)  # the vessel runs 20 mm beyond the patch on both sides
    hu = _block(shape, seed=5)
    patch = _ball(shape, (32, 24, 24), 12)
    hu[patch] = GGO_HU
    yy, xx = np.indices(shape[1:])
    tube = np.broadcast_to((yy - 24) ** 2 + (xx - 24) ** 2 <= 2 ** 2, shape)
    hu[tube] = BLOOD_HU
    lesion, _, _ = lesion_masks(hu, np.ones(shape, dtype=bool), (1.0, 1.0, 1.0))
    assert lesion[patch & tube].mean() > 0.9
    assert lesion.sum() == pytest.approx(patch.sum(), rel=0.10)
    beyond = tube & ~_ball(shape, (32, 24, 24), 15)  # the vessel more than 3 mm outside the patch
    assert not lesion[beyond].any()

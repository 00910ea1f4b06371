"""Anatomy in HU against known answers: a constructed lung with vessels and lesions of known size, the
phantom's own masks, and the phantom's saved lesion ground truth."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from _evaluate_cohorts import case
from ctsynth.evaluate.anatomy import QUANTITIES, TISSUES, coarse_pixel_note, measure_anatomy
from ctsynth.phantom import make_phantom_case
from ctsynth.segment import body_mask, lesion_masks, lung_mask, split_lungs


def _measure(volume):
    hu = np.asarray(volume.hu, dtype=np.float32)
    body = body_mask(hu, spacing_mm=volume.spacing_mm)
    lung = lung_mask(volume) & body
    left, right = split_lungs(lung, direction=volume.direction)
    return measure_anatomy(hu, volume.spacing_mm, body, lung, left, right)


def _lung_with_lesions(seed: int):
    """A 1 mm lung block at -850 HU with noise, thin vessels and lesions of known volume."""
    rng = np.random.default_rng(seed)
    shape = (48, 96, 96)
    hu = np.full(shape, -850.0, dtype=np.float32)
    for _ in range(40):  # vessels: straight lines 1-2 voxels thick at blood HU
        axis = rng.integers(3)
        z, y, x = (int(rng.integers(2, s - 2)) for s in shape)
        sl = [slice(z, z + 2), slice(y, y + 1), slice(x, x + 2)]
        sl[axis] = slice(None)
        hu[tuple(sl)] = 40.0
    truth = np.zeros(shape, dtype=bool)
    zz, yy, xx = np.indices(shape)
    for k in range(4):
        centre = rng.uniform([10, 20, 20], [38, 76, 76])
        radius = rng.uniform(5, 9)
        blob = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
        truth |= blob
        hu[blob] = -500.0 if k % 2 else 0.0  # ground glass and consolidation
    hu += rng.normal(0.0, 25.0, shape).astype(np.float32)
    return hu, np.ones(shape, dtype=bool), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lesion_fraction_of_a_known_construction_within_10_percent(seed):
    hu, lung, truth = _lung_with_lesions(seed)
    lesion, ggo, consolidation = lesion_masks(hu, lung, (1.0, 1.0, 1.0))
    assert lesion.sum() / lung.sum() == pytest.approx(truth.sum() / lung.sum(), rel=0.10)
    assert ggo.any() and consolidation.any()
    assert (lesion & ~truth).sum() < 0.05 * truth.sum()  # vessels are not lesions


def test_thin_vessels_are_not_lesions():
    hu = np.full((20, 40, 40), -850.0, dtype=np.float32)
    lung = np.ones_like(hu, dtype=bool)
    hu[:, 20, 20] = 40.0  # a one-voxel vessel along z
    hu[8:14, 5:13, 5:13] = -500.0  # a ground-glass block of 6 x 8 x 8 voxels
    lesion, ggo, consolidation = lesion_masks(hu, lung, (1.0, 1.0, 1.0))
    assert not lesion[:, 18:23, 18:23].any()
    assert lesion[8:14, 5:13, 5:13].mean() > 0.5  # the opening rounds the block's corners
    assert ggo.sum() == lesion.sum() and not consolidation.any()


def test_normal_phantom_anatomy_matches_its_masks():
    truth = case(2, "normal")
    a = _measure(truth.volume)
    assert set(a) == set(QUANTITIES)
    assert sum(a[f"fraction_{t}"] for t in TISSUES) == pytest.approx(1.0)
    assert -950 < a["median_hu_lung_mask"] < -600
    voxel_ml = float(np.prod(truth.volume.spacing_mm)) / 1000
    assert a["lung_volume_ml"] == pytest.approx(truth.lung_mask.sum() * voxel_ml, rel=0.15)
    assert 0.3 < a["left_lung_share"] < 0.7


@functools.lru_cache(maxsize=None)
def _case_128(seed: int, label: str):
    return make_phantom_case(seed, label, size=128)


_COVID_SEEDS = tuple(range(15))  # covid phantom seeds 0-14; those with truth >= 0.03 are checked
# The default run keeps, at 128 px, extensive (0) and moderate (4) disease and one case of each known gap (2, 7);
# the other seeds are marked slow (pytest -m slow): more cases of a requirement the fast run already checks.
_FAST_128_SEEDS = (0, 2, 4, 7)


def _fast_or_slow(seed: int, reason: str | None = None):
    marks = [] if seed in _FAST_128_SEEDS else [pytest.mark.slow]
    if reason:
        marks.append(pytest.mark.xfail(strict=True, reason=reason))
    return pytest.param(seed, marks=marks)
_READER_GAP = ("known gap (docs/evaluation.md): at 128 px this case's patchy ground glass loses its thin parts "
               "to the opening and its edges to noise: 0.044 vs 0.052 (-14.5%); at 512 px it reads -7%")
_LUNG_MASK_GAP = ("known gap (docs/evaluation.md): in extensive disease the lung mask still misses 2-3.5% of the "
                  "lung (basal and paravertebral consolidation with no aerated lung on its ray), which is lesion: "
                  "reads 10-13% low; with the phantom's true lung mask this case is within 10%")


def _truth_at_least_3_percent(seed: int):
    truth = _case_128(seed, "covid")
    if truth.lesion_fraction < 0.03:
        pytest.skip(f"truth {truth.lesion_fraction:.3f} < 0.03: a few voxels of partial volume are already 10%")
    return truth


@pytest.mark.parametrize("seed", [_fast_or_slow(s, _READER_GAP if s == 2 else None) for s in _COVID_SEEDS])
def test_lesion_reader_recovers_the_phantom_ground_truth_in_the_true_lung(seed):
    """The lesion reader alone (given the phantom's lung mask): within 10% relative of the saved truth."""
    truth = _truth_at_least_3_percent(seed)
    lesion, _, _ = lesion_masks(truth.volume.hu, truth.lung_mask, truth.volume.spacing_mm)
    assert lesion.sum() / truth.lung_mask.sum() == pytest.approx(truth.lesion_fraction, rel=0.10)


_FAST_512_SEEDS = (0, 4)  # extensive (0.23) and moderate (0.12) disease; the other seeds are marked slow


@pytest.mark.parametrize("seed", [s if s in _FAST_512_SEEDS else pytest.param(s, marks=pytest.mark.slow)
                                  for s in _COVID_SEEDS])
def test_lesion_fraction_recovers_the_phantom_ground_truth(seed):
    """Issue requirement, end to end as `ctsynth evaluate` measures it (our body and lung masks), at the
    phantom's own size (512 x 512, pixels of 0.6-0.9 mm as in clinical chest CT): within 10% relative of the
    saved truth, for covid cases whose truth is >= 0.03."""
    truth = make_phantom_case(seed, "covid")
    if truth.lesion_fraction < 0.03:
        pytest.skip(f"truth {truth.lesion_fraction:.3f} < 0.03: a few voxels of partial volume are already 10%")
    measured = _measure(truth.volume)["lesion_fraction"]
    assert measured == pytest.approx(truth.lesion_fraction, rel=0.10)


_END_TO_END_GAPS = {2: _READER_GAP, 7: _LUNG_MASK_GAP, 11: _LUNG_MASK_GAP, 12: _LUNG_MASK_GAP,
                    13: _LUNG_MASK_GAP}


@pytest.mark.parametrize("seed", [_fast_or_slow(s, _END_TO_END_GAPS.get(s)) for s in _COVID_SEEDS])
def test_lesion_fraction_at_coarse_pixels_128(seed):
    """The same at 128 x 128 (pixels of 2.6-3.3 mm), where the known gaps are marked."""
    truth = _truth_at_least_3_percent(seed)
    measured = _measure(truth.volume)["lesion_fraction"]
    assert measured == pytest.approx(truth.lesion_fraction, rel=0.10)


def test_normal_phantom_has_almost_no_lesion():
    for seed in (0, 1, 2):
        assert _measure(_case_128(seed, "normal").volume)["lesion_fraction"] < 0.01


def test_coarse_pixels_get_a_note_on_the_lesion_fraction():
    assert coarse_pixel_note([0.7, 0.85, 1.0]) is None
    note = coarse_pixel_note([0.7, 3.1, 1.5])
    assert note.startswith("2 of 3 volumes") and "up to 3.10 mm" in note

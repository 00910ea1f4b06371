"""The procedural chest CT phantom: determinism, geometry, tissue HU and COVID lesions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ctsynth.errors import CTSynthError
from ctsynth.phantom import make_phantom_case
from ctsynth.phantom.params import sample_params


@pytest.fixture(scope="module")
def covid_case():
    return make_phantom_case(7, "covid", size=96)


@pytest.fixture(scope="module")
def normal_case():
    return make_phantom_case(7, "normal", size=96)


def test_same_seed_gives_identical_case(covid_case):
    again = make_phantom_case(7, "covid", size=96)
    assert np.array_equal(again.volume.hu, covid_case.volume.hu)
    assert np.array_equal(again.lesion_mask, covid_case.lesion_mask)
    assert np.array_equal(again.lung_mask, covid_case.lung_mask)
    assert again.volume.spacing_mm == covid_case.volume.spacing_mm


def test_different_seeds_give_different_anatomy(normal_case):
    other = make_phantom_case(8, "normal", size=96)
    assert other.params["body"]["a"] != normal_case.params["body"]["a"]
    if other.volume.shape == normal_case.volume.shape:
        assert not np.array_equal(other.lung_mask, normal_case.lung_mask)
    # lung volume in ml differs between cases
    ml = [c.lung_mask.sum() * np.prod(c.volume.spacing_mm) / 1000 for c in (normal_case, other)]
    assert abs(ml[0] - ml[1]) > 10


def test_volume_geometry_and_type(covid_case):
    v = covid_case.volume
    assert v.hu.dtype == np.float32 and v.hu.ndim == 3
    assert v.shape[1:] == (96, 96)
    assert 30 <= v.shape[0] <= 60
    assert np.allclose(v.direction, np.eye(3))
    assert v.label == "covid"
    # origin centred: the middle of the volume sits at (0, 0, 0) mm
    centre = v.index_to_lps() @ np.array([(v.shape[2] - 1) / 2, (v.shape[1] - 1) / 2, (v.shape[0] - 1) / 2, 1.0])
    assert np.allclose(centre[:3], 0.0, atol=1e-6)
    # spacing scales with the matrix: the field of view is that of a 512 image at 0.6-0.9 mm
    assert 0.6 * 512 - 1e-6 <= v.spacing_mm[1] * 96 <= 0.9 * 512 + 1e-6
    assert v.spacing_mm[1] == v.spacing_mm[2]


def test_parameters_stay_in_range_over_many_seeds():
    for seed in range(300):
        p = sample_params(seed, "normal", 512)
        assert 30 <= p["depth"] <= 60
        assert 5.0 <= p["slice_mm"] <= 8.0
        assert 0.6 - 1e-9 <= p["pixel_mm"] <= 0.9 + 1e-9
        assert 200 <= p["lungs"]["apex_z"] - p["lungs"]["recess_z"] <= 260
        assert 10.0 <= p["scanner"]["noise_sigma"] <= 25.0
    depths = {sample_params(s)["depth"] for s in range(300)}
    assert min(depths) == 30 and max(depths) == 60
    # the field of view does not depend on the matrix size
    assert sample_params(4, size=64)["fov_mm"] == sample_params(4, size=512)["fov_mm"]
    assert sample_params(4, depth=48)["depth"] == 48


def test_z_runs_from_feet_to_head(normal_case):
    masks = normal_case.tissue_masks
    d = normal_case.volume.shape[0]
    z = np.arange(d)
    liver_z = z[masks["liver"].any(axis=(1, 2))]
    trachea = masks["airway"] & ~normal_case.lung_mask
    airway_z = z[trachea.any(axis=(1, 2))]
    assert liver_z.mean() < d / 3          # upper abdomen at the inferior end (z = 0)
    assert airway_z.max() == d - 1 or airway_z.max() > 0.8 * d   # trachea runs to the top
    lung_area = normal_case.lung_mask.sum(axis=(1, 2))
    top = np.flatnonzero(lung_area)[-1]
    assert lung_area[top] < lung_area.max() / 3    # apices taper


def test_both_lungs_right_bigger_and_on_the_patients_right():
    bigger = 0
    for seed in range(6):
        case = make_phantom_case(seed, "normal", size=64)
        lung = case.lung_mask
        _, _, x = np.nonzero(lung)
        mid = (lung.shape[2] - 1) / 2
        right, left = (x < mid).sum(), (x > mid).sum()   # LPS: low column index = patient's right
        assert right > 0.3 * lung.sum() and left > 0.3 * lung.sum()
        bigger += right > left
    assert bigger >= 5


def test_heart_anterior_left_and_spine_posterior_midline(normal_case):
    m = normal_case.tissue_masks
    size = normal_case.volume.shape[2]
    mid = (size - 1) / 2
    heart = m["blood"]
    _, hy, hx = np.nonzero(heart)
    _, by, bx = np.nonzero(m["trabecular_bone"])
    assert hx.mean() > mid                 # left of the patient = higher x
    assert hy.mean() < by.mean()           # anterior of the spine
    spine = ndimage.label(m["trabecular_bone"])[0]
    assert spine.max() >= 1
    assert abs(np.median(bx) - mid) < 0.1 * size   # vertebral bodies near the midline


@pytest.mark.parametrize("tissue, lo, hi", [
    ("fat", -120, -80), ("muscle", 30, 60), ("lung", -900, -700), ("blood", 30, 50),
    ("liver", 40, 70), ("trabecular_bone", 150, 400), ("air", -1024, -990),
])
def test_tissue_hu_in_literature_range(normal_case, tissue, lo, hi):
    mask = normal_case.tissue_masks[tissue]
    # stay away from the borders: one-voxel erosion in-plane avoids partial-volume edges
    inner = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))
    values = normal_case.volume.hu[inner if inner.sum() > 50 else mask]
    assert values.size > 50
    assert lo <= float(np.median(values)) <= hi


def test_cortical_bone_bright_at_clinical_resolution():
    case = make_phantom_case(3, "normal", size=320, depth=30)
    cortical = case.tissue_masks["cortical_bone"]
    values = case.volume.hu[cortical]
    assert 700 <= float(np.median(values)) <= 1500
    assert 150 <= float(np.median(case.volume.hu[case.tissue_masks["trabecular_bone"]])) <= 400


def test_normal_case_has_no_lesions(normal_case):
    assert not normal_case.lesion_mask.any()
    assert normal_case.lesion_fraction == 0.0


def test_lesion_fraction_matches_mask(covid_case):
    expected = covid_case.lesion_mask.sum() / covid_case.lung_mask.sum()
    assert covid_case.lesion_fraction == pytest.approx(expected)
    assert 0.01 <= covid_case.lesion_fraction <= 0.35
    assert not (covid_case.lesion_mask & ~covid_case.lung_mask).any()


def test_label_changes_only_the_lesions(covid_case, normal_case):
    """Same seed: same body; the COVID case differs only in and right around its lesions.

    The lesion mask holds the voxels raised to at least -700 HU; the faint painted margin below that
    (at most about 150 HU above aerated lung) is not lesion, so away from the mask only small changes."""
    change = np.abs(covid_case.volume.hu - normal_case.volume.hu)
    near = ndimage.binary_dilation(covid_case.lesion_mask, iterations=3)
    assert (change > 0).any()
    assert not ((change > 150) & ~near).any()
    assert ((change > 0) & ~near).sum() < 0.01 * (change > 0).sum()
    inside = covid_case.lesion_mask
    raised = np.median(covid_case.volume.hu[inside] - normal_case.volume.hu[inside])
    assert raised > 150   # ground glass / consolidation is far denser than aerated lung


def test_lesion_mask_is_where_lesions_reach_ground_glass(covid_case, normal_case):
    """Ground truth is radiological: voxels a lesion raised to at least -700 HU (noise-free). After blur
    and noise nearly all of them still read as ground glass or denser, while most of the painted margin
    left out of the mask (the lesion's faint edge) reads as aerated lung, below -700 HU."""
    hu, mask = covid_case.volume.hu, covid_case.lesion_mask
    margin = (hu - normal_case.volume.hu > 1) & ~mask & covid_case.lung_mask
    assert (hu[mask] >= -700).mean() > 0.9
    assert margin.any() and (hu[margin] < -700).mean() > 0.75


def _lesion_stats(seed: int):
    case = make_phantom_case(seed, "covid", size=64)
    lung, lesion = case.lung_mask, case.lesion_mask
    sp = case.volume.spacing_mm
    dist = ndimage.distance_transform_edt(lung, sampling=sp)
    y_lung = np.nonzero(lung)[1].mean()
    y_lesion = np.nonzero(lesion)[1].mean()
    side_right = lesion[..., : lung.shape[2] // 2].any()
    side_left = lesion[..., lung.shape[2] // 2:].any()
    return dist[lesion].mean(), dist[lung].mean(), y_lesion - y_lung, side_right and side_left, case.lesion_fraction


def test_lesions_bilateral_peripheral_posterior_and_varying():
    stats = [_lesion_stats(seed) for seed in range(10, 16)]
    peripheral = sum(d_lesion < d_lung for d_lesion, d_lung, *_ in stats)
    posterior = sum(dy > 0 for _, _, dy, *_ in stats)
    bilateral = sum(b for *_, b, _ in stats)
    fractions = [f for *_, f in stats]
    assert peripheral >= 5
    assert posterior >= 5
    assert bilateral >= 5
    assert max(fractions) > 2 * min(fractions)     # extent varies per case


@pytest.mark.parametrize("kwargs", [dict(seed=-1), dict(seed=1, label="flu"), dict(seed=1, size=16)])
def test_bad_arguments_raise_one_clear_error(kwargs):
    kwargs = {"label": "normal", "size": 64, **kwargs}
    with pytest.raises(CTSynthError):
        make_phantom_case(**kwargs)


def test_anatomy_is_built_in_millimetres_not_pixels():
    """The same seed at two matrix sizes gives the same organs (volumes in ml within a few percent)."""
    def volumes(size):
        case = make_phantom_case(5, "normal", size=size)
        ml = float(np.prod(case.volume.spacing_mm)) / 1000
        m = case.tissue_masks
        return case.lung_mask.sum() * ml, m["blood"].sum() * ml, m["fat"].sum() * ml

    small, large = volumes(48), volumes(128)
    assert 2500 < large[0] < 7500            # adult lungs, litres
    for a, b in zip(small, large):
        assert a == pytest.approx(b, rel=0.05)


def test_breasts_in_some_cases_anterior_to_the_lungs():
    present = [sample_params(s)["breasts"]["present"] for s in range(200)]
    assert 0.3 < np.mean(present) < 0.6
    seed = present.index(True)
    case = make_phantom_case(seed, "normal", size=64)
    gland = case.tissue_masks["gland"]
    assert gland.any()
    assert np.nonzero(gland)[1].mean() < np.nonzero(case.lung_mask)[1].min() + 5   # in front of the chest
    assert 0 <= float(np.median(case.volume.hu[gland])) <= 60

"""Body and lung masks against geometry with a known answer (synthetic ellipsoids, the phantom, real CT)."""

from __future__ import annotations

import numpy as np
import pytest

from ctsynth.segment import body_mask, lung_mask, split_lungs
from ctsynth.volume import CTVolume

from _prepare_cohorts import ellipsoid_chest


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_body_mask_holds_the_lungs_and_drops_table_and_air():
    volume, lungs, _, table = ellipsoid_chest()
    body = body_mask(volume.hu, spacing_mm=volume.spacing_mm)
    assert body[lungs].all()
    assert not body[table].any()
    assert not body[:, :3, :].any()  # outside air at the top of every slice


def test_lung_mask_recovers_ellipsoids_and_the_enclosed_lesion():
    volume, lungs, _, _ = ellipsoid_chest()
    mask = lung_mask(volume)
    assert dice(mask, lungs) > 0.97
    lesion_voxels = lungs & (volume.hu > -300)
    assert lesion_voxels.sum() > 20
    assert mask[lesion_voxels].mean() > 0.95


def test_lung_mask_removes_a_trachea_entering_from_the_top():
    volume, lungs, _, _ = ellipsoid_chest(trachea=True)
    # The tube touches the lungs' top slices; without removal it would be counted as lung.
    with_airway = lung_mask(volume, remove_airways=False)
    mask = lung_mask(volume)
    tube = (volume.hu < -960) & ~lungs & body_mask(volume.hu, spacing_mm=volume.spacing_mm)
    assert tube.sum() > 10
    assert mask[tube].mean() < 0.2
    assert dice(mask, lungs) >= dice(with_airway, lungs) - 0.01
    assert dice(mask, lungs) > 0.95


def test_lung_mask_of_air_only_or_no_lungs_is_empty():
    empty = CTVolume(hu=np.full((8, 32, 32), -1000.0, np.float32), spacing_mm=(2.0, 2.0, 2.0))
    assert not lung_mask(empty).any()
    solid = CTVolume(hu=np.full((8, 32, 32), 40.0, np.float32), spacing_mm=(2.0, 2.0, 2.0))
    assert not lung_mask(solid).any()


@pytest.mark.parametrize("fused", [False, True])
def test_split_lungs_left_is_plus_x_and_flips_with_direction(fused):
    volume, lungs, left_truth, _ = ellipsoid_chest(lesion=False, fused=fused)
    mask = lung_mask(volume) if not fused else lungs
    left, right = split_lungs(mask)
    assert not (left & right).any()
    assert ((left | right) == mask).all()
    assert dice(left, left_truth) > 0.9
    flipped_left, flipped_right = split_lungs(mask, direction=np.diag([-1.0, 1.0, 1.0]))
    assert (flipped_left == right).all() and (flipped_right == left).all()


def test_lung_mask_on_a_field_of_view_cropped_into_the_chest(real_ct):
    """A real chest CT cropped to the lungs (they touch the image border): both lungs still found."""
    import nibabel as nib

    image = nib.load(real_ct / "totalseg_nifti" / "pulmonary_ct_cropped.nii.gz")
    hu = np.ascontiguousarray(np.transpose(np.asarray(image.dataobj, dtype=np.float32), (2, 1, 0)))
    spacing = tuple(float(s) for s in image.header.get_zooms()[::-1])
    # affine[0, 0] < 0 in RAS: the x index runs to the patient's left, i.e. LPS +x as the array is stored.
    volume = CTVolume(hu=hu, spacing_mm=spacing)
    mask = lung_mask(volume)
    ml = mask.sum() * np.prod(spacing) / 1000.0
    assert 1000 < ml < 4000  # a cropped pair of adult lungs
    assert -900 < float(np.median(hu[mask])) < -600
    left, right = split_lungs(mask)
    vl, vr = left.sum(), right.sum()
    assert min(vl, vr) > 0.3 * max(vl, vr)


def test_subsampled_morphology_matches_full_resolution(monkeypatch):
    """At sub-millimetre pixels the openings/closings run on 2x coarser pixels: same mask, to within a rim."""
    import ctsynth.segment as segment

    volume, lungs, _, _ = ellipsoid_chest(n=160, nz=12)
    volume = volume.with_hu(volume.hu, spacing_mm=(5.0, 0.75, 0.75))
    assert segment._morph_factor(volume.spacing_mm) == 2
    fast = lung_mask(volume)
    monkeypatch.setattr(segment, "MORPH_MM", 0.1)
    assert segment._morph_factor(volume.spacing_mm) == 1
    slow = lung_mask(volume)
    assert dice(fast, slow) > 0.995
    assert dice(fast, lungs) > 0.97
    lesion = lungs & (volume.hu > -300)
    assert fast[lesion].mean() > 0.95


def test_a_precomputed_body_mask_gives_the_same_lungs_and_is_not_modified():
    volume, _, _, _ = ellipsoid_chest()
    body = body_mask(volume.hu, spacing_mm=volume.spacing_mm)
    before = body.copy()
    assert (lung_mask(volume, body=body) == lung_mask(volume)).all()
    assert (body == before).all()

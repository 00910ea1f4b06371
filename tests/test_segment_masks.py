"""Body and lung masks against geometry with a known answer (synthetic ellipsoids, the phantom, real CT)."""

from __future__ import annotations

import numpy as np
import pytest

from ctsynth.segment import lungs as lung_module
from ctsynth.segment import body_mask, lung_mask, split_lungs
from ctsynth.segment.lungs import _airway
from ctsynth.segment.morphology import morph_factor
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


def _chest_with_a_dim_bronchus(lung_hu: float):
    """``ellipsoid_chest`` with the three slices of its trachea nearest the lungs at -930 HU (a bronchus
    partial-volumed with its wall in a thick slice) and the lungs at ``lung_hu``; returns the inputs of
    ``_airway``, the dim part and the lungs."""
    volume, lungs, _, _ = ellipsoid_chest(trachea=True)
    hu = volume.hu.copy()
    rng = np.random.default_rng(1)
    tube = (hu < -960) & ~lungs & body_mask(hu, spacing_mm=volume.spacing_mm)
    dim = tube & (np.arange(hu.shape[0]) < np.flatnonzero(tube.any(axis=(1, 2)))[0] + 3)[:, None, None]
    hu[dim] = -930.0 + rng.normal(0, 15, int(dim.sum()))
    hu[lungs] = lung_hu + rng.normal(0, 15, int(lungs.sum()))
    body = body_mask(hu, spacing_mm=volume.spacing_mm)
    return (hu < -320) & body, hu, body, volume.spacing_mm, dim, lungs


def test_airway_threshold_rises_for_a_dim_bronchus(monkeypatch):
    air, hu, body, spacing, dim, lungs = _chest_with_a_dim_bronchus(-850.0)
    airway = _airway(air, hu, body, spacing)
    assert airway[dim].mean() > 0.9
    assert not (airway & lungs).any()
    monkeypatch.setattr(lung_module, "AIRWAY_HU_STEPS", (lung_module.AIRWAY_HU,))
    assert _airway(air, hu, body, spacing)[dim].mean() < 0.5  # -950 HU alone stops where the lumen dims


def test_airway_threshold_stops_before_it_leaks_into_dark_lung():
    """Lungs at -905 HU: at -900 the airway would run into them; the -925 HU airway is kept."""
    air, hu, body, spacing, dim, lungs = _chest_with_a_dim_bronchus(-905.0)
    airway = _airway(air, hu, body, spacing)
    assert airway[dim].mean() > 0.3
    assert (airway & lungs).sum() < 0.01 * lungs.sum()


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
    from ctsynth.segment import morphology

    volume, lungs, _, _ = ellipsoid_chest(n=160, nz=12)
    volume = volume.with_hu(volume.hu, spacing_mm=(5.0, 0.75, 0.75))
    assert morph_factor(volume.spacing_mm) == 2
    fast = lung_mask(volume)
    monkeypatch.setattr(morphology, "MORPH_MM", 0.1)
    assert morph_factor(volume.spacing_mm) == 1
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


def wall_chest(consolidation: bool = True, dome: bool = False, seed: int = 0):
    """A chest with a known answer for the subpleural and dome steps: 16 slices of 5 mm, 2 mm pixels; a body
    (40 HU, muscle) whose lungs (-850 HU) fill it but for a 20 mm chest wall and a 50 mm mediastinum, in
    slices 2-13. With ``consolidation``, the right lung's dependent part (more than 55 mm behind the centre,
    up to 25 mm thick) is consolidated in slices 5-10 (+20 HU, the chest wall's HU give or take the noise)
    inside a ground-glass margin (-450 HU: 4 mm in-plane, and the slice above and below), as a COVID lesion
    lies on the wall. With ``dome``, a soft-tissue column (45 HU, 40 mm wide) rises from below into the left
    lung up to slice 4, which the lung surrounds in slices 2-4 as it surrounds the liver's dome.
    Returns (volume, lungs, lesion, wall, dome)."""
    rng = np.random.default_rng(seed)
    nz, n, px = 16, 160, 2.0
    y, x = (np.mgrid[0:n, 0:n].astype(np.float32) - n / 2) * px  # mm, y posterior, x to the patient's left
    body = (y / 100.0) ** 2 + (x / 140.0) ** 2 <= 1
    inner = (y / 80.0) ** 2 + (x / 120.0) ** 2 <= 1
    lungs = np.zeros((nz, n, n), dtype=bool)
    lungs[2:14] = inner & (np.abs(x) > 25.0)
    hu = np.full((nz, n, n), -1000.0, np.float32)
    hu[:, body] = 40.0
    hu[lungs] = -850.0
    lesion = np.zeros_like(lungs)
    if consolidation:
        core = lungs[5] & (x < 0) & (y > 55.0)
        margin = lungs[5] & (x < 0) & (y > 51.0) & ~core
        lesion[4:12] = core | margin
        hu[4:12][:, core | margin] = -450.0
        hu[5:11, core] = 20.0
    column = np.zeros_like(lungs)
    if dome:
        column[:5] = (y / 20.0) ** 2 + ((x - 70.0) / 20.0) ** 2 <= 1
        hu[column] = 45.0
        lungs &= ~column
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    wall = np.broadcast_to(body & ~inner, lungs.shape)
    column[:2] = False  # the dome: the column where the lung surrounds it
    return CTVolume(hu=hu, spacing_mm=(5.0, px, px)), lungs, lesion, wall, column


def test_lung_mask_takes_in_consolidation_lying_on_the_chest_wall():
    """Consolidation on the chest wall has the wall's HU; the mask takes it in up to the pleura's depth
    (which the slices above and below show), and takes in neither the wall nor the mediastinum. What it
    recovers is the consolidation with aerated lung between it and the centre of the chest (rays from the
    centre); the corner seen past the mediastinum (y > 2 |x| here) is a known limit."""
    volume, lungs, lesion, wall, _ = wall_chest()
    consolidated = lesion & (volume.hu > -200)
    n, px = volume.shape[1], volume.spacing_mm[1]
    y, x = (np.mgrid[0:n, 0:n] - n / 2) * px
    seen = consolidated & (y < 2.0 * np.abs(x))
    assert seen.sum() > 0.75 * consolidated.sum() > 750
    mediastinum = ((y / 80.0) ** 2 + (x / 120.0) ** 2 <= 1) & (np.abs(x) <= 25.0)
    mask = lung_mask(volume)
    assert mask[seen].mean() > 0.97
    assert mask[consolidated].mean() > 0.8
    assert (mask & wall).sum() < 0.002 * lungs.sum()
    assert not (mask & mediastinum).any()
    assert dice(mask, lungs) > 0.98
    healthy = lung_mask(wall_chest(consolidation=False)[0])
    assert (healthy & ~lungs).sum() < 0.002 * lungs.sum()
    assert dice(healthy, lungs) > 0.98


def test_lung_mask_leaves_out_a_dome_the_lung_surrounds():
    """A large slice-wise hole that opens onto the abdomen below (the liver's dome) is not filled, while
    small holes (vessels) and a lesion enclosed in 3D are (see test_lung_mask_recovers_ellipsoids...)."""
    volume, lungs, _, _, dome = wall_chest(consolidation=False, dome=True)
    assert dome.sum() > 500
    mask = lung_mask(volume)
    assert mask[dome].mean() < 0.05
    assert dice(mask, lungs) > 0.98

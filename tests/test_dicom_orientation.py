"""Every volume reaches prepare axial (issue #14, point 4): a phantom written axial, coronal and sagittal reads
back as the same axial volume; oblique stacks are resampled onto an axial grid, or refused beyond the limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctsynth.errors import CTSynthError
from ctsynth.io.discover import discover
from ctsynth.io.orientation import obliquity_deg, reorient_to_lps, slice_plane, to_canonical_axial
from ctsynth.volume import CTVolume
from test_dicom_studies import _coronal, _sagittal, add_series
from test_dicom_support import rotation, synthetic_volume


def _axial() -> CTVolume:
    vol = synthetic_volume(shape=(7, 18, 20), spacing=(2.0, 0.75, 0.8), origin=(-12.0, 30.0, -100.0))
    return vol.with_hu(np.rint(vol.hu).astype(np.int16))


@pytest.mark.parametrize("make", [lambda v: v, _coronal, _sagittal], ids=["axial", "coronal", "sagittal"])
def test_phantom_written_in_any_plane_reads_as_the_same_axial_volume(tmp_path: Path, make) -> None:
    axial = _axial()
    stored = make(axial)
    add_series(tmp_path / "d", stored, study="1.2.7", patient="P7", description="ANY")
    (study,) = discover(tmp_path / "d", series="all").studies
    back = study.read()
    np.testing.assert_array_equal(back.hu, axial.hu)
    assert back.spacing_mm == pytest.approx(axial.spacing_mm)
    assert back.origin_mm == pytest.approx(axial.origin_mm, abs=1e-3)
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-6)
    if stored is not axial:
        assert any("reoriented to axial" in n and "no voxel resampled" in n for n in back.meta["notes"])


def test_planes_are_named_from_the_direction() -> None:
    axial = _axial()
    assert [slice_plane(v.direction) for v in (axial, _coronal(axial), _sagittal(axial))] == \
        ["axial", "coronal", "sagittal"]
    assert reorient_to_lps(axial) is axial and obliquity_deg(np.eye(3)) == 0.0


def test_oblique_stack_is_resampled_onto_an_axial_grid() -> None:
    # A smooth field of world position, stored on a grid tilted 12 degrees about x: after resampling, each
    # voxel must hold the field's value at its own (axis-aligned) world position.
    tilt = rotation(ax=np.radians(12.0), az=0.0)
    shape, spacing = (20, 24, 26), (1.5, 1.0, 1.0)
    src = CTVolume(hu=np.zeros(shape, np.float32), spacing_mm=spacing, origin_mm=(-13.0, -12.0, -15.0),
                   direction=tilt)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = src.index_to_lps() @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])

    def field(xyz):
        return 3.0 * xyz[0] - 2.0 * xyz[1] + 1.5 * xyz[2]

    src.hu[...] = field(world).reshape(shape).astype(np.float32)
    out = to_canonical_axial(src)
    np.testing.assert_allclose(out.direction, np.eye(3))
    assert any("oblique slices (12.0 degrees" in n for n in out.meta["notes"])
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in out.shape], indexing="ij")
    wout = out.index_to_lps() @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    inside = out.hu.ravel() > -1000  # voxels inside the acquired volume (outside: air)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out.hu.ravel()[inside], field(wout)[inside], atol=0.05)


def test_strongly_oblique_stack_is_refused_in_one_line() -> None:
    src = CTVolume(hu=np.zeros((4, 8, 8), np.float32), spacing_mm=(1, 1, 1), direction=rotation(ax=0.7, az=0.0),
                   source="scan/ob")
    with pytest.raises(CTSynthError, match=r"scan/ob: the slices are oblique, 40.1 degrees .* \(fix: reconstruct"):
        to_canonical_axial(src)


def test_reformats_are_set_aside_by_default_and_prepare_sees_axial(tmp_path: Path) -> None:
    axial = _axial()
    add_series(tmp_path / "d", _coronal(axial), study="1.2.8", patient="P8", number=604, description="COR")
    add_series(tmp_path / "d", _sagittal(axial), study="1.2.8", patient="P8", number=605, description="SAG")
    (study,) = discover(tmp_path / "d").studies
    with pytest.raises(CTSynthError, match="no series of this study can be a training volume .*coronal reformat"):
        study.read()

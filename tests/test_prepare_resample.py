"""Resampling keeps the physical extent, the geometry and the values of a linear ramp."""

from __future__ import annotations

import numpy as np
import pytest

from ctsynth.preprocess.resample import resample_box, resample_volume
from ctsynth.volume import CTVolume


def ramp_volume(shape=(20, 30, 40), spacing=(2.0, 1.0, 0.5), direction=None) -> CTVolume:
    """HU = 3 z + 2 y - x, with (z, y, x) the voxel centre in mm from the volume's outer corner."""
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(np.float64)
    hu = 3 * (z + 0.5) * spacing[0] + 2 * (y + 0.5) * spacing[1] - (x + 0.5) * spacing[2]
    return CTVolume(hu=hu.astype(np.float32), spacing_mm=spacing, origin_mm=(10.0, -20.0, 30.0),
                    direction=np.eye(3) if direction is None else direction)


def expected_ramp(volume: CTVolume) -> np.ndarray:
    sz, sy, sx = volume.spacing_mm
    z, y, x = np.mgrid[0:volume.shape[0], 0:volume.shape[1], 0:volume.shape[2]].astype(np.float64)
    return 3 * (z + 0.5) * sz + 2 * (y + 0.5) * sy - (x + 0.5) * sx


@pytest.mark.parametrize("shape", [(10, 45, 16), (40, 15, 80), (7, 30, 40)])
def test_resample_to_shape_keeps_extent_and_ramp_values(shape):
    volume = ramp_volume()
    out = resample_volume(volume, shape=shape, antialias=False)
    assert out.shape == shape
    assert out.hu.dtype == np.float32
    assert np.allclose(out.extent_mm, volume.extent_mm)
    # Linear interpolation reproduces a linear ramp exactly away from the outermost half voxel.
    inner = (slice(1, -1),) * 3
    assert np.abs(out.hu - expected_ramp(out))[inner].max() < 1e-3


def test_resample_moves_the_origin_to_the_new_first_voxel_centre():
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # rotated in-plane
    volume = ramp_volume(direction=direction)
    out = resample_volume(volume, shape=(10, 60, 20))
    # Outer corner of the volume in LPS is the same before and after.
    def corner(v: CTVolume) -> np.ndarray:
        return np.asarray(v.origin_mm) - v.direction @ (0.5 * np.asarray(v.spacing_mm)[::-1])

    assert np.allclose(corner(volume), corner(out))
    assert np.allclose(out.direction, direction)


def test_resample_by_spacing_rounds_the_shape_and_keeps_the_extent():
    volume = ramp_volume()
    out = resample_volume(volume, spacing_mm=(3.0, 1.0, 1.0))
    assert out.shape == (13, 30, 20)  # 40/3 -> 13, 30/1, 20/1
    assert np.allclose(out.extent_mm, volume.extent_mm)
    with pytest.raises(ValueError):
        resample_volume(volume)


def test_downsampling_is_antialiased():
    rng = np.random.default_rng(0)
    noise = CTVolume(hu=rng.normal(0, 100, (8, 64, 64)).astype(np.float32), spacing_mm=(1.0, 1.0, 1.0))
    smooth = resample_volume(noise, shape=(8, 16, 16))
    aliased = resample_volume(noise, shape=(8, 16, 16), antialias=False)
    assert smooth.hu.std() < 0.6 * aliased.hu.std()


def test_box_beyond_the_volume_is_filled_with_air():
    volume = ramp_volume()
    extent = volume.extent_mm
    box = ((0.0, extent[0]), (-extent[1] / 2, extent[1] * 1.5), (0.0, extent[2]))
    out = resample_box(volume, box, (20, 60, 40), antialias=False)
    assert (out.hu[:, :14, :] == -1024).all() and (out.hu[:, 46:, :] == -1024).all()
    inner = out.hu[1:-1, 16:44, 1:-1]
    assert np.abs(inner - expected_ramp(volume)[1:-1, 1:-1, 1:-1]).max() < 1e-3

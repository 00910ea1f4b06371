"""Resampling a CTVolume onto a new axis-aligned grid, keeping its geometry true.

Convention (edge alignment, like ``align_corners=False`` in torch or ``grid_mode=True`` in scipy): a volume
of ``n`` voxels of spacing ``s`` covers ``n * s`` mm along that axis, from the outer edge of the first voxel
to the outer edge of the last. Resampling to a new shape keeps that extent: the new spacing is
``n * s / n_new`` and the centre of the new first voxel moves half a new voxel in from the edge, so
``origin_mm`` (centre of voxel [0, 0, 0], LPS) is updated along the direction's axes. ``direction`` is
unchanged: the grid is only scaled and shifted, never rotated.

Interpolation is separable (``scipy.ndimage.affine_transform`` with a diagonal matrix: no coordinate
arrays, so memory is the input plus the output). When an axis shrinks, the input is first smoothed with a
Gaussian of sigma ``(1/zoom - 1) / 2`` voxels along it (as scikit-image does) so that thin-slice noise and
fine texture do not alias into the coarse grid.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from ..volume import CTVolume

Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


def resample_volume(volume: CTVolume, *, shape: tuple[int, int, int] | None = None,
                    spacing_mm: tuple[float, float, float] | None = None, order: int = 1,
                    antialias: bool = True) -> CTVolume:
    """The volume on a new grid covering the same physical extent (float32 HU).

    Give exactly one of ``shape`` (z, y, x) or ``spacing_mm`` (z, y, x). With ``spacing_mm`` the shape is
    ``round(extent / spacing)`` (at least 1) and the spacing actually used is ``extent / shape``, within
    half a voxel of the request over the whole extent, so the extent is always kept exactly.
    """
    if (shape is None) == (spacing_mm is None):
        raise ValueError("give exactly one of shape or spacing_mm")
    extent = volume.extent_mm
    if shape is None:
        shape = tuple(max(1, int(round(e / float(s)))) for e, s in zip(extent, spacing_mm))  # type: ignore[arg-type]
    box: Box = tuple((0.0, e) for e in extent)  # type: ignore[assignment]
    return resample_box(volume, box, shape, order=order, antialias=antialias)  # type: ignore[arg-type]


def resample_box(volume: CTVolume, box_mm: Box, shape: tuple[int, int, int], *, order: int = 1,
                 fill: float = -1024.0, antialias: bool = True) -> CTVolume:
    """The physical box ``box_mm`` of the volume resampled to ``shape`` (float32 HU).

    ``box_mm`` is ``((z0, z1), (y0, y1), (x0, x1))`` in mm along the array axes, measured from the outer
    edge of voxel [0, 0, 0] (so ``(0, extent)`` is the whole volume). It may reach beyond the volume: that
    part is filled with ``fill`` (air, -1024 HU, by default). The output covers the box exactly.
    """
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive integers, got {shape}")
    old_sp = np.asarray(volume.spacing_mm, dtype=np.float64)
    lo = np.array([b[0] for b in box_mm], dtype=np.float64)
    hi = np.array([b[1] for b in box_mm], dtype=np.float64)
    if np.any(hi <= lo):
        raise ValueError(f"empty box {box_mm}")
    new_sp = (hi - lo) / np.asarray(shape, dtype=np.float64)
    zoom = old_sp / new_sp  # > 1: upsampling along that axis

    # Read only the input voxels the box needs (plus a margin for interpolation and smoothing).
    sigma = np.where(antialias & (zoom < 1.0), (1.0 / np.minimum(zoom, 1.0) - 1.0) / 2.0, 0.0)
    margin = np.ceil(3.0 * sigma).astype(int) + order + 1
    first = np.floor(lo / old_sp - 0.5).astype(int) - margin
    last = np.ceil(hi / old_sp + 0.5).astype(int) + margin
    first = np.clip(first, 0, np.asarray(volume.shape))
    last = np.clip(last, first, np.asarray(volume.shape))
    if np.any(last <= first):  # the box lies wholly outside the volume
        hu = np.full(shape, fill, dtype=np.float32)
    else:
        region = np.asarray(volume.hu[tuple(slice(a, b) for a, b in zip(first, last))], dtype=np.float32)
        if np.any(sigma > 0):
            region = ndimage.gaussian_filter(region, sigma=sigma, mode="nearest")
        # Output voxel i has its centre at lo + (i + 0.5) * new_sp mm, i.e. input index
        # (lo + (i + 0.5) * new_sp) / old_sp - 0.5, minus the region's first index.
        scale = new_sp / old_sp
        offset = (lo + 0.5 * new_sp) / old_sp - 0.5 - first
        # mode="nearest": output voxels within the volume but past its outermost voxel centres take the
        # edge value (edge alignment); those whose centre lies outside the volume get ``fill`` below.
        hu = ndimage.affine_transform(region, scale, offset=offset, output_shape=shape, order=order,
                                      mode="nearest", prefilter=order > 1).astype(np.float32, copy=False)
        inside = []
        for axis, n in enumerate(shape):
            centre = (lo[axis] + (np.arange(n) + 0.5) * new_sp[axis]) / old_sp[axis]
            inside.append((centre >= 0.0) & (centre <= volume.shape[axis]))
        if not all(m.all() for m in inside):
            outside = ~(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
            hu[outside] = fill
    # Centre of the new first voxel, in mm from the centre of the old first voxel, along the (x, y, z)
    # index axes (the direction's columns).
    shift_zyx = lo + 0.5 * new_sp - 0.5 * old_sp
    origin = np.asarray(volume.origin_mm) + volume.direction @ shift_zyx[::-1]
    return replace(volume, hu=hu, spacing_mm=tuple(float(s) for s in new_sp), origin_mm=tuple(origin),
                   direction=volume.direction.copy(), meta=dict(volume.meta))

"""Vessels inside the lung, found from their centrelines, so that the lesion reader can set them aside.

Why: vessels have the HU of consolidation (blood, about +40) and, through partial volume, of ground glass.
The lesion reader's 2 mm opening removes the thin ones, but not vessels wider than it (hilar and segmental
arteries and veins, 4-14 mm) nor a vessel lying in the plane of a thick slice, which partial volume turns
into a grey band several millimetres wide. In a normal lung those read as about 5% "lesion".

Method (arrays are ``(z, y, x)`` in HU, spacing in mm; all lengths below in mm):

1. **Centrelines in 3D.** The image is resampled to ``ISO_MM`` (2 mm) isotropic voxels and its Hessian
   taken at the scales ``SIGMAS_3D_MM`` (scale-normalised). Frangi's vesselness for bright tubes (alpha =
   beta = 0.5, c = 80 HU) marks tube-like voxels. A voxel is on a centreline where the vesselness is above
   ``CENTRE_VESSELNESS`` and the gradient is small next to the cross-sectional curvature (below
   ``CENTRE_GRADIENT`` times ``|lambda3|``): on a tube's axis the intensity is flat across and along it.
   The gradient test is what keeps round lesions: near the surface of a sphere the Hessian also sees "a
   tube" (two equal curvatures, the axis pointing outwards), but the intensity falls steeply there.
2. **Centrelines in the slice plane**, for slices thicker than ``THICK_SLICE_MM``: the same test in 2D on
   each slice (a bright line), at the scales ``SIGMAS_2D_MM``, catches vessels running within one slice.
3. **Length.** A connected piece of centreline is kept only if it is at least ``MIN_LENGTH_RADII`` times
   its radius long (extent along its principal axis): a vessel is long; a cluster of touching round
   lesions may be elongated, but it is short.
4. **Vessel voxels.** Around each kept centreline voxel, within the radius ``RADIUS_PER_SIGMA`` times the
   scale at which its vesselness was highest, the voxels at least halfway in (smoothed) HU from the local
   background (the darkest voxel within twice the largest radius) to the centreline's own HU. Halfway
   keeps ground glass around a vessel that runs through it out of the vessel.

Its cost is a few seconds for a 512 x 512 x 50 volume on one core.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .morphology import IN_PLANE

ISO_MM = 2.0
SIGMAS_3D_MM = (2.5, 4.0, 6.0)
SIGMAS_2D_MM = (1.5, 2.5, 4.0)
THICK_SLICE_MM = 2.5
FRANGI_ALPHA = 0.5
FRANGI_BETA = 0.5
FRANGI_C_HU = 80.0
CENTRE_VESSELNESS = 0.3
CENTRE_GRADIENT = 0.4
MIN_LENGTH_RADII = 2.5
RADIUS_PER_SIGMA = 1.5

_SECOND_ORDERS = {(0, 0): (2, 0, 0), (1, 1): (0, 2, 0), (2, 2): (0, 0, 2),
                  (0, 1): (1, 1, 0), (0, 2): (1, 0, 1), (1, 2): (0, 1, 1)}
_FIRST_ORDERS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def _resize(a: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """``a`` resampled to exactly ``shape`` (same field of view)."""
    out = ndimage.zoom(a, [n / m for n, m in zip(shape, a.shape)], order=order, mode="nearest", grid_mode=True)
    out = np.pad(out, [(0, max(0, n - m)) for n, m in zip(shape, out.shape)], mode="edge")
    return out[tuple(slice(0, n) for n in shape)]


def _frangi(big: np.ndarray, mid: np.ndarray | None, small: np.ndarray) -> np.ndarray:
    """Frangi vesselness for bright structures from eigenvalues sorted by magnitude (``mid`` None in 2D)."""
    a_big = np.abs(big) + 1e-6
    if mid is None:
        rb, shape_term = np.abs(small) / a_big, 1.0
        strength = np.sqrt(big ** 2 + small ** 2)
        dark = big > 0
    else:
        a_mid = np.abs(mid) + 1e-6
        ra, rb = a_mid / a_big, np.abs(small) / np.sqrt(a_mid * a_big)
        shape_term = 1.0 - np.exp(-ra ** 2 / (2 * FRANGI_ALPHA ** 2))
        strength = np.sqrt(big ** 2 + mid ** 2 + small ** 2)
        dark = (mid > 0) | (big > 0)
    v = shape_term * np.exp(-rb ** 2 / (2 * FRANGI_BETA ** 2)) * (1.0 - np.exp(-strength ** 2 / (2 * FRANGI_C_HU ** 2)))
    return np.where(dark, 0.0, v).astype(np.float32)


def _keep_long(centre: np.ndarray, radius: np.ndarray, spacing_mm: tuple[float, ...],
               structure: np.ndarray) -> np.ndarray:
    """Centreline pieces at least MIN_LENGTH_RADII times their median radius long (step 3)."""
    labels, n = ndimage.label(centre, structure=structure)
    keep = np.zeros(n + 1, dtype=bool)
    scale = np.asarray(spacing_mm, dtype=np.float64)
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[sl] == index
        points = np.argwhere(inside) * scale
        if len(points) < 2:
            continue
        extent = 2.0 * np.sqrt(3.0 * np.linalg.eigvalsh(np.cov(points.T)).max()) + float(scale[scale > 0].min())
        keep[index] = extent >= MIN_LENGTH_RADII * float(np.median(radius[sl][inside]))
    return keep[labels]


def _centrelines_3d(hu: np.ndarray, spacing_mm: tuple[float, float, float], where: np.ndarray) -> np.ndarray:
    """Radius (mm) at 3D centreline voxels, 0 elsewhere, on the grid of ``hu`` (steps 1 and 3)."""
    iso = max(ISO_MM, min(spacing_mm))
    shape = tuple(max(2, int(round(n * s / iso))) for n, s in zip(hu.shape, spacing_mm))
    img = _resize(hu, shape, 1)
    idx = np.nonzero(_resize(where.astype(np.uint8), shape, 0))
    best = np.zeros(idx[0].size, dtype=np.float32)
    radius = np.zeros(idx[0].size, dtype=np.float32)
    centre = np.zeros(idx[0].size, dtype=bool)
    for sigma_mm in SIGMAS_3D_MM:
        s = sigma_mm / iso
        hessian = np.empty((idx[0].size, 3, 3), dtype=np.float32)
        for (i, j), order in _SECOND_ORDERS.items():
            hessian[:, i, j] = hessian[:, j, i] = ndimage.gaussian_filter(img, s, order=order)[idx] * s * s
        ev = np.linalg.eigvalsh(hessian)
        ev = np.take_along_axis(ev, np.argsort(np.abs(ev), axis=1), axis=1)
        v = _frangi(ev[:, 2], ev[:, 1], ev[:, 0])
        grad = np.sqrt(sum((ndimage.gaussian_filter(img, s, order=o)[idx] * s) ** 2 for o in _FIRST_ORDERS))
        centre |= (v > CENTRE_VESSELNESS) & (grad < CENTRE_GRADIENT * np.abs(ev[:, 2]))
        better = v > best
        best[better], radius[better] = v[better], RADIUS_PER_SIGMA * sigma_mm
    grid = np.zeros(shape, dtype=np.float32)
    grid[tuple(i[centre] for i in idx)] = radius[centre]
    grid *= _keep_long(grid > 0, grid, (iso, iso, iso), np.ones((3, 3, 3), dtype=bool))
    return _resize(grid, hu.shape, 0)


def _centrelines_in_plane(hu: np.ndarray, spacing_mm: tuple[float, float, float], where: np.ndarray) -> np.ndarray:
    """Radius (mm) at in-plane (2D, slice by slice) centreline voxels, 0 elsewhere (steps 2 and 3)."""
    _, sy, sx = spacing_mm
    best = np.zeros(hu.shape, dtype=np.float32)
    radius = np.zeros(hu.shape, dtype=np.float32)
    centre = np.zeros(hu.shape, dtype=bool)
    for sigma_mm in SIGMAS_2D_MM:
        s = (0.0, sigma_mm / sy, sigma_mm / sx)
        norm = sigma_mm * sigma_mm
        hyy = ndimage.gaussian_filter(hu, s, order=(0, 2, 0)) * norm / (sy * sy)
        hxx = ndimage.gaussian_filter(hu, s, order=(0, 0, 2)) * norm / (sx * sx)
        hxy = ndimage.gaussian_filter(hu, s, order=(0, 1, 1)) * norm / (sy * sx)
        half_trace, dev = (hyy + hxx) / 2, np.sqrt(((hyy - hxx) / 2) ** 2 + hxy ** 2)
        e1, e2 = half_trace + dev, half_trace - dev
        first_big = np.abs(e2) >= np.abs(e1)
        big, small = np.where(first_big, e2, e1), np.where(first_big, e1, e2)
        v = _frangi(big, None, small)
        grad = np.hypot(ndimage.gaussian_filter(hu, s, order=(0, 1, 0)) * sigma_mm / sy,
                        ndimage.gaussian_filter(hu, s, order=(0, 0, 1)) * sigma_mm / sx)
        centre |= (v > CENTRE_VESSELNESS) & (grad < CENTRE_GRADIENT * np.abs(big)) & where
        better = v > best
        best[better], radius[better] = v[better], RADIUS_PER_SIGMA * sigma_mm
    return np.where(_keep_long(centre, radius, spacing_mm, IN_PLANE), radius, 0.0).astype(np.float32)


def vessel_voxels(hu: np.ndarray, smoothed: np.ndarray, spacing_mm: tuple[float, float, float],
                  lung: np.ndarray) -> np.ndarray:
    """Bool mask (z, y, x) of vessel voxels in ``lung`` (module docstring, step 4).

    ``hu``: the image in HU; ``smoothed``: the same lightly smoothed, as the lesion reader sees it.
    """
    hu = np.asarray(hu, dtype=np.float32)
    radius = _centrelines_3d(hu, spacing_mm, lung)
    if spacing_mm[0] >= THICK_SLICE_MM:
        radius = np.maximum(radius, _centrelines_in_plane(hu, spacing_mm, lung))
    on_centre = radius > 0
    if not on_centre.any():
        return np.zeros(hu.shape, dtype=bool)
    reach = 2.0 * float(radius.max())
    background = ndimage.minimum_filter(smoothed, size=[max(1, int(reach / s) | 1) for s in spacing_mm])
    halfway = np.where(on_centre, (smoothed + background) / 2.0, 0.0)
    distance, nearest = ndimage.distance_transform_edt(~on_centre, sampling=spacing_mm, return_indices=True)
    nearest = tuple(nearest)
    return lung & (distance <= radius[nearest]) & (smoothed >= halfway[nearest])

"""Lesions (ground glass and consolidation) inside a lung mask, by HU and shape.

Lesions are looked for inside the lung mask, in five steps:

1. **Candidates**: voxels in -700..+50 HU on a lightly smoothed copy (Gaussian, sigma 0.7 voxel, so that a
   noise spike is not a lesion) and at least -700 HU unsmoothed (so that smoothing does not grow a lesion's
   edge): ground glass -700..-300, consolidation -100..+50 and the -300..-100 transition between them.
2. **Vessels** wider than the opening below, or lying in a thick slice's plane, are set aside from their
   centrelines (:mod:`ctsynth.evaluate.vessels`).
3. **Opening**: the rest is opened with an ellipsoid of radius ``VESSEL_RADIUS_MM`` (at least one voxel
   in-plane): thin vessels, airway walls and partial-volume halos disappear, a lesion (a patch several mm
   across) survives. The opened set then grows by one voxel in-plane within the candidates, to give back the
   edge voxels the opening rounded off. Components smaller than ``MIN_LESION_ML`` are noise.
4. **Vessels inside lesions** are lesion (the phantom's truth counts them, and a reader would): a vessel
   voxel is put back when at least half of the lung voxels around it (in-plane Gaussian of
   ``ENCLOSED_SIGMA_MM``, vessel voxels not counted) are lesion.
5. Ground glass and consolidation are the lesion voxels in their HU ranges (smoothed HU).

Measured against the phantom's saved truth: ``benchmarks/bench_lesion_reader.py``; the figures are in
docs/evaluation.md.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .morphology import IN_PLANE_CROSS, ellipsoid
from .vessels import vessel_voxels

GGO_RANGE = (-700.0, -300.0)
CONSOLIDATION_RANGE = (-100.0, 50.0)
VESSEL_RADIUS_MM = 2.0
MIN_LESION_ML = 0.05
SMOOTH_SIGMA_VOXELS = 0.7
ENCLOSED_SIGMA_MM = 3.0


def lesion_masks(hu: np.ndarray, lung: np.ndarray, spacing_mm: tuple[float, float, float]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lesion, ground_glass, consolidation) boolean masks inside ``lung`` (see the module docstring)."""
    if not lung.any():
        empty = np.zeros_like(lung, dtype=bool)
        return empty, empty, empty
    zs, ys, xs = (slice(s.start, s.stop) for s in ndimage.find_objects(lung.astype(np.uint8))[0])
    box = (zs, ys, xs)
    raw = np.asarray(hu[box], dtype=np.float32)
    sub = ndimage.gaussian_filter(raw, SMOOTH_SIGMA_VOXELS)
    sub_lung = lung[box]
    # In range after smoothing (a noise spike is not a lesion) and before it (smoothing must not grow a
    # lesion's edge into the lung around it).
    candidates = sub_lung & (sub >= GGO_RANGE[0]) & (sub <= CONSOLIDATION_RANGE[1]) & (raw >= GGO_RANGE[0])
    vessels = vessel_voxels(raw, sub, spacing_mm, sub_lung) & candidates
    rest = candidates & ~vessels
    opened = ndimage.binary_opening(rest, structure=vessel_filter_element(spacing_mm))
    opened |= ndimage.binary_dilation(opened, structure=IN_PLANE_CROSS) & rest
    labels, n = ndimage.label(opened)
    if n:
        voxel_ml = float(np.prod(spacing_mm)) / 1000.0
        sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
        keep = sizes >= MIN_LESION_ML
        keep[0] = False
        opened = keep[labels]
    opened |= vessels & (_share_around(opened, sub_lung & ~vessels, spacing_mm) >= 0.5)
    lesion = np.zeros_like(lung, dtype=bool)
    lesion[box] = opened
    ggo = np.zeros_like(lesion)
    ggo[box] = opened & (sub <= GGO_RANGE[1])
    consolidation = np.zeros_like(lesion)
    consolidation[box] = opened & (sub >= CONSOLIDATION_RANGE[0])
    return lesion, ggo, consolidation


def vessel_filter_element(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The opening element: radius VESSEL_RADIUS_MM per axis, at least one voxel in-plane, none in z if thick."""
    sz, sy, sx = spacing_mm
    rz = VESSEL_RADIUS_MM / sz if sz <= VESSEL_RADIUS_MM else 0.0
    ry = max(VESSEL_RADIUS_MM / sy, 1.0)
    rx = max(VESSEL_RADIUS_MM / sx, 1.0)
    return ellipsoid((rz, ry, rx))


def _share_around(lesion: np.ndarray, seen: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The lesion share of the ``seen`` voxels around each voxel, in plane (Gaussian, ``ENCLOSED_SIGMA_MM``)."""
    sigma = (0.0, ENCLOSED_SIGMA_MM / spacing_mm[1], ENCLOSED_SIGMA_MM / spacing_mm[2])
    near_lesion = ndimage.gaussian_filter(lesion.astype(np.float32), sigma)
    near_seen = ndimage.gaussian_filter(seen.astype(np.float32), sigma)
    return near_lesion / np.maximum(near_seen, 1e-3)

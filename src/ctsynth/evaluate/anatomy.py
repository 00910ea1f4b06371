"""Anatomy in Hounsfield units: tissue fractions, median HU per tissue, lung volume and balance, lesions.

Tissue classes are HU ranges of the voxels inside the body mask (half-open intervals, in HU):
air < -900 <= lung < -200 <= fat < -30 <= soft tissue < 150 <= bone. "lung" here is the aerated-lung HU
range, not the lung mask; the lung's own median HU is taken inside the lung mask.

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

from .vessels import vessel_voxels

TISSUES = ("air", "lung", "fat", "soft_tissue", "bone")
TISSUE_EDGES = (-900.0, -200.0, -30.0, 150.0)  # boundaries between consecutive classes above
GGO_RANGE = (-700.0, -300.0)
CONSOLIDATION_RANGE = (-100.0, 50.0)
VESSEL_RADIUS_MM = 2.0
MIN_LESION_ML = 0.05
SMOOTH_SIGMA_VOXELS = 0.7
ENCLOSED_SIGMA_MM = 3.0
LESION_CHECKED_PIXEL_MM = 1.0  # the lesion fraction is checked against the phantom's truth at pixels up to this
_IN_PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)

QUANTITIES = (
    tuple(f"fraction_{t}" for t in TISSUES)
    + ("median_hu_lung_mask", "median_hu_fat", "median_hu_soft_tissue", "median_hu_bone")
    + ("lung_volume_ml", "left_lung_share", "lesion_fraction", "ggo_fraction", "consolidation_fraction")
)


def _ellipsoid(radii_vox: tuple[float, float, float]) -> np.ndarray:
    r = [max(float(x), 0.0) for x in radii_vox]
    half = [int(np.floor(x)) for x in r]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    total = np.zeros([2 * h + 1 for h in half], dtype=np.float64)
    for g, radius in zip(grids, r):
        if radius > 0:
            total = total + (g / radius) ** 2
    return total <= 1.0 + 1e-9


def vessel_filter_element(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The opening element: radius VESSEL_RADIUS_MM per axis, at least one voxel in-plane, none in z if thick."""
    sz, sy, sx = spacing_mm
    rz = VESSEL_RADIUS_MM / sz if sz <= VESSEL_RADIUS_MM else 0.0
    ry = max(VESSEL_RADIUS_MM / sy, 1.0)
    rx = max(VESSEL_RADIUS_MM / sx, 1.0)
    return _ellipsoid((rz, ry, rx))


def _share_around(lesion: np.ndarray, seen: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The lesion share of the ``seen`` voxels around each voxel, in plane (Gaussian, ``ENCLOSED_SIGMA_MM``)."""
    sigma = (0.0, ENCLOSED_SIGMA_MM / spacing_mm[1], ENCLOSED_SIGMA_MM / spacing_mm[2])
    near_lesion = ndimage.gaussian_filter(lesion.astype(np.float32), sigma)
    near_seen = ndimage.gaussian_filter(seen.astype(np.float32), sigma)
    return near_lesion / np.maximum(near_seen, 1e-3)


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
    opened |= ndimage.binary_dilation(opened, structure=_IN_PLANE_CROSS) & rest
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


def coarse_pixel_note(pixels_mm: list[float]) -> str | None:
    """A note for the report when volumes have in-plane pixels coarser than ``LESION_CHECKED_PIXEL_MM``,
    where the lesion fraction is less accurate (figures in docs/evaluation.md); None when there are none."""
    coarse = [p for p in pixels_mm if p > LESION_CHECKED_PIXEL_MM]
    if not coarse:
        return None
    return (f"{len(coarse)} of {len(pixels_mm)} volumes have in-plane pixels over {LESION_CHECKED_PIXEL_MM:g} mm "
            f"(up to {max(coarse):.2f} mm): the lesion fraction is within 10% of a phantom's truth at 0.6-0.9 mm "
            "pixels but reads up to 26% off at 1.3-3.3 mm (docs/evaluation.md)")


def tissue_classes(hu_body: np.ndarray) -> np.ndarray:
    """Index into :data:`TISSUES` for each HU value (1D)."""
    return np.searchsorted(np.asarray(TISSUE_EDGES), hu_body, side="right")


def measure_anatomy(hu: np.ndarray, spacing_mm: tuple[float, float, float], body: np.ndarray,
                    lung: np.ndarray, left: np.ndarray, right: np.ndarray) -> dict[str, float]:
    """The quantities named in :data:`QUANTITIES` for one volume (NaN where undefined, e.g. no lungs)."""
    out: dict[str, float] = {}
    body_hu = np.asarray(hu[body], dtype=np.float32)
    classes = tissue_classes(body_hu)
    n_body = max(body_hu.size, 1)
    for k, name in enumerate(TISSUES):
        out[f"fraction_{name}"] = float(np.count_nonzero(classes == k)) / n_body
    lung_hu = np.asarray(hu[lung], dtype=np.float32)
    out["median_hu_lung_mask"] = float(np.median(lung_hu)) if lung_hu.size else float("nan")
    for k, name in ((2, "fat"), (3, "soft_tissue"), (4, "bone")):
        sel = body_hu[classes == k]
        out[f"median_hu_{name}"] = float(np.median(sel)) if sel.size else float("nan")
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    n_lung = int(np.count_nonzero(lung))
    out["lung_volume_ml"] = n_lung * voxel_ml
    n_left, n_right = int(np.count_nonzero(left)), int(np.count_nonzero(right))
    out["left_lung_share"] = n_left / (n_left + n_right) if n_left + n_right else float("nan")
    lesion, ggo, consolidation = lesion_masks(hu, lung, spacing_mm)
    for name, mask in (("lesion_fraction", lesion), ("ggo_fraction", ggo),
                       ("consolidation_fraction", consolidation)):
        out[name] = float(np.count_nonzero(mask)) / n_lung if n_lung else float("nan")
    return out

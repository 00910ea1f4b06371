"""Anatomy in Hounsfield units: tissue fractions, median HU per tissue, lung volume and balance, lesions.

Tissue classes are HU ranges of the voxels inside the body mask (half-open intervals, in HU):
air < -900 <= lung < -200 <= fat < -30 <= soft tissue < 150 <= bone. "lung" here is the aerated-lung HU
range, not the lung mask; the lung's own median HU is taken inside the lung mask.

Lesions, vessels, lungs and body come from :mod:`ctsynth.segment` (its methods are described there);
this module only measures.

Measured against the phantom's saved truth: ``benchmarks/bench_lesion_reader.py``; the figures are in
docs/evaluation.md.
"""

from __future__ import annotations

import numpy as np

from ..segment.lesions import lesion_masks

TISSUES = ("air", "lung", "fat", "soft_tissue", "bone")
TISSUE_EDGES = (-900.0, -200.0, -30.0, 150.0)  # boundaries between consecutive classes above
LESION_CHECKED_PIXEL_MM = 1.0  # the lesion fraction is checked against the phantom's truth at pixels up to this
QUANTITIES = (
    tuple(f"fraction_{t}" for t in TISSUES)
    + ("median_hu_lung_mask", "median_hu_fat", "median_hu_soft_tissue", "median_hu_bone")
    + ("lung_volume_ml", "left_lung_share", "lesion_fraction", "ggo_fraction", "consolidation_fraction")
)


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

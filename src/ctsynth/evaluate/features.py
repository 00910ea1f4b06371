"""Per-volume summaries: everything the metrics need from one volume, so volumes can be streamed.

A :class:`VolumeSummary` keeps the radiomics feature vector, the anatomy quantities, a body-HU histogram,
a small thumbnail (at most 16x48x64, area-averaged: for MS-SSIM, the trained encoder and the classifier),
a band-pass memorisation descriptor (at most 32x96x128, float16) and three central slices for the report.
A 48x240x360 volume (16.6 MB as float32) becomes about 1 MB, so 400 volumes take about 400 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..segment import body_mask, lung_mask, split_lungs
from ..volume import CTVolume
from .anatomy import measure_anatomy
from .radiomics import radiomics_features

MAX_THUMB_SHAPE = (16, 48, 64)
MAX_MEMO_SHAPE = (32, 96, 128)
MEMO_WINDOW = (-1024.0, 600.0)
MEMO_DOG_SIGMAS = (0.7, 2.0)  # voxels of the descriptor grid
HIST_EDGES = np.arange(-1025.0, 1501.0, 10.0)  # 10 HU bins over the model's HU window


@dataclass
class VolumeSummary:
    id: str
    label: str | None
    group: str  # "train", "held_out" or the synthetic set's name
    patient: str
    spacing_mm: tuple[float, float, float]
    radiomics: np.ndarray
    anatomy: dict[str, float]
    histogram: np.ndarray  # body-voxel counts per HIST_EDGES bin, normalised to sum 1
    thumb: np.ndarray  # float32 HU, thumbnail shape
    memo: np.ndarray  # float16 band-pass descriptor for the memorisation search (memorisation_descriptor)
    slices: dict[str, np.ndarray]  # "axial", "coronal", "sagittal": int16 HU central slices on the grid
    extra: dict[str, Any] = field(default_factory=dict)


def thumbnail_shape(grid: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(min(g, m) for g, m in zip(grid, MAX_THUMB_SHAPE))  # type: ignore[return-value]


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix averaging the input cells each output cell covers (fractional overlaps weighted)."""
    edges_out = np.linspace(0.0, n_in, n_out + 1)
    lo = np.arange(n_in, dtype=np.float64)
    overlap = np.clip(np.minimum(edges_out[1:, None], lo[None, :] + 1) - np.maximum(edges_out[:-1, None], lo[None, :]),
                      0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def make_thumbnail(hu: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Area-averaged (anti-aliased) resize of HU to ``shape`` (float32): each output voxel is the mean of
    the input it covers, done as one small matrix product per axis (fast, no torch needed)."""
    out = np.asarray(hu, dtype=np.float32)
    for axis, n_out in enumerate(shape):
        if out.shape[axis] != n_out:
            w = _area_weights(out.shape[axis], n_out)
            out = np.moveaxis(np.tensordot(w, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def memorisation_descriptor(hu: np.ndarray) -> np.ndarray:
    """Band-pass (difference of Gaussians) HU at up to 32x96x128: what tells one patient from another.

    The shared layout of every chest (body outline, lungs, mediastinum) is removed by the band-pass and
    what remains (vessels, airways, rib and lesion edges) is specific to the patient, so a near-copy
    correlates near 1 and different patients far lower (see :mod:`.memorisation`).
    """
    from scipy import ndimage

    shape = tuple(min(g, m) for g, m in zip(hu.shape, MAX_MEMO_SHAPE))
    small = make_thumbnail(np.clip(hu, *MEMO_WINDOW), shape)
    fine, coarse = (ndimage.gaussian_filter(small, s) for s in MEMO_DOG_SIGMAS)
    return (fine - coarse).astype(np.float16)


def central_slices(hu: np.ndarray) -> dict[str, np.ndarray]:
    z, y, x = hu.shape
    clip = lambda a: np.clip(np.rint(a), -1024, 3071).astype(np.int16)  # noqa: E731
    return {"axial": clip(hu[z // 2]), "coronal": clip(hu[:, y // 2, :]), "sagittal": clip(hu[:, :, x // 2])}


def summarise_volume(volume: CTVolume, *, study_id: str, group: str, patient: str | None = None,
                     thumb_shape: tuple[int, int, int] | None = None) -> VolumeSummary:
    """Summarise one volume that is already on the evaluation grid."""
    hu = np.asarray(volume.hu, dtype=np.float32)
    body = body_mask(hu, spacing_mm=volume.spacing_mm)
    lung = lung_mask(volume.with_hu(hu), body=body) & body if body.any() else np.zeros_like(body)
    left, right = split_lungs(lung, direction=volume.direction)
    counts, _ = np.histogram(hu[body], bins=HIST_EDGES)
    total = counts.sum()
    return VolumeSummary(
        id=study_id, label=volume.label, group=group, patient=patient or study_id,
        spacing_mm=volume.spacing_mm,
        radiomics=radiomics_features(hu, volume.spacing_mm, body, lung),
        anatomy=measure_anatomy(hu, volume.spacing_mm, body, lung, left, right),
        histogram=(counts / total if total else counts).astype(np.float32),
        thumb=make_thumbnail(hu, thumb_shape or thumbnail_shape(hu.shape)),
        memo=memorisation_descriptor(hu),
        slices=central_slices(hu),
    )

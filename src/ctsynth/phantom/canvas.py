"""The volume being drawn: tissue labels and noise-free HU side by side, and how tissue is painted in.

Painting blends a tissue's HU over what is there by the fraction of each voxel it fills (partial
volume); voxels at least half filled take the tissue's label, so ``labels`` stays the dominant tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Grid, rasterise_tubes, tube_box
from .layout import Layout


@dataclass
class Anatomy:
    """Voxelised chest before lesions and scanner effects."""

    hu: np.ndarray          # float32 (z, y, x)
    labels: np.ndarray      # uint8 tissue codes (tissue.TISSUES)
    lung_side: np.ndarray   # uint8: 0 none, 1 right lung, 2 left lung
    cavity: np.ndarray      # bool: thoracic cavity above the diaphragm (where vessels may run)
    grid: Grid
    layout: Layout


def paint(anatomy: Anatomy, frac: np.ndarray, value: float, label: int, allowed: np.ndarray | None,
          box: tuple[slice, slice, slice] | None = None) -> None:
    """Blend ``value`` over the volume by voxel fraction (clipped to 1) inside ``box``; voxels at least half
    filled take ``label``. ``allowed`` (bool, full volume) limits where the tissue may go."""
    box = box or (slice(None),) * 3
    f = np.clip(frac[box], 0.0, 1.0)
    if allowed is not None:
        f *= allowed[box]
    hu = anatomy.hu[box]
    hu += f * (np.float32(value) - hu)
    anatomy.labels[box][f >= 0.5] = label


def stack_segments(segments: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenate several (p0, p1, r0, r1) segment groups into one."""
    return tuple(np.concatenate([np.asarray(group[i], dtype=np.float64) for group in segments]) for i in range(4))


def paint_layers(anatomy: Anatomy, layers: list[tuple[tuple[np.ndarray, ...], float, int, np.ndarray | None]]) -> None:
    """Rasterise and paint groups of tubes in order, re-using one scratch volume."""
    grid = anatomy.grid
    scratch = np.zeros(grid.shape, dtype=np.float32)
    for segments, value, label, allowed in layers:
        if len(segments[0]) == 0:
            continue
        box = tube_box(grid, *segments)
        rasterise_tubes(grid, *segments, out=scratch)
        paint(anatomy, scratch, value, label, allowed, box)
        scratch[box] = 0.0

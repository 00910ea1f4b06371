"""COVID-19 pneumonia lesions: ground-glass opacities and consolidations.

The pattern follows the CT descriptions of COVID-19 pneumonia (Pan et al., Radiology 2020; Bernheim et
al., Radiology 2020; Chung et al., Radiology 2020): multiple, bilateral, peripheral (subpleural) and
posterior/dependent-predominant opacities, ground glass more frequent than consolidation, consolidation
increasing with extent. Each lesion is an irregular patch: an ellipsoid centred near the chest wall,
roughened by smooth noise and eaten away with depth below the wall so that it hugs the pleura, with HU
rising from its edge inwards (soft margins) and, in a part of the lesions, a consolidated core.

The ground-truth mask is defined radiologically, not by where lesion HU was blended in: a voxel is lesion
when a lesion raised its noise-free HU (before vessels, blur and noise) to at least
:data:`LESION_THRESHOLD_HU` (-700 HU, the lower bound of ground glass). The faint soft margin below that
is painted (it softens the edge) but is not lesion, as no HU-based reader would call it one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .tissue import CONSOLIDATION_HU, GGO_HU

MAX_LESIONS = 120
RAMP = 0.45          # the lesion value is reached this far (in ellipsoid units) inside the edge
EDGE_FIELD = 0.147   # smoothstep(EDGE_FIELD / RAMP) = 0.25: the blend at the lesion's edge
EXTENT_RANGE = (0.02, 0.30)
LESION_THRESHOLD_HU = -700.0  # ground truth: voxels a lesion raised to at least this (noise-free) HU


def sample_extent(rng: np.random.Generator) -> float:
    """Target fraction of lung volume affected: log-uniform in EXTENT_RANGE (mild cases are common)."""
    lo, hi = np.log(EXTENT_RANGE[0]), np.log(EXTENT_RANGE[1])
    return float(np.exp(rng.uniform(lo, hi)))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def add_lesions(hu: np.ndarray, lung_side: np.ndarray, chest: np.ndarray, grid: Grid,
                rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Paint lesions into ``hu`` (in place) inside the lungs; return the lesion mask and a summary.

    The mask holds the voxels a lesion raised to at least :data:`LESION_THRESHOLD_HU` (noise-free HU).

    ``chest`` is the thoracic cavity (lungs + mediastinum): "peripheral" means close to its wall (the
    costal and diaphragmatic pleura), not to the mediastinum, so perihilar lung is relatively spared.
    """
    lung = lung_side > 0
    lesion = np.zeros(hu.shape, dtype=bool)
    raised = np.zeros(hu.shape, dtype=bool)   # voxels some lesion made denser (painted margins included)
    n_lung = int(lung.sum())
    target = sample_extent(rng)
    info: dict[str, Any] = {"target_fraction": target, "lesions": []}
    if n_lung == 0:
        return lesion, info

    # Candidate centres on a coarse grid (about 3 mm): weight by nearness to the chest wall and posteriority.
    step = max(1, int(round(3.0 / grid.pixel_mm)))
    coarse = lung[:, ::step, ::step]
    dist = ndimage.distance_transform_edt(chest[:, ::step, ::step],
                                          sampling=(grid.slice_mm, grid.pixel_mm * step, grid.pixel_mm * step))
    kz, ky, kx = np.nonzero(coarse)
    y_mm = grid.y[ky * step]
    y_lo, y_hi = float(y_mm.min()), float(y_mm.max())
    posterior = (y_mm - y_lo) / max(y_hi - y_lo, 1e-6)
    weight = np.exp(-dist[kz, ky, kx] / 6.0) * np.exp(2.0 * posterior)
    severity = target / EXTENT_RANGE[1]
    consolidation_share = 0.1 + 0.5 * severity   # more consolidation in extensive disease
    side_of = lung_side[:, ::step, ::step][kz, ky, kx]

    sz, sy, sx = grid.slice_mm, grid.pixel_mm, grid.pixel_mm
    affected = 0
    for i in range(MAX_LESIONS):
        remaining = target * n_lung - affected
        if remaining <= 0:
            break
        want_side = 1 + (i % 2)                      # alternate right/left: bilateral
        w = weight * (side_of == want_side)
        if w.sum() <= 0:
            w = weight
        j = rng.choice(len(w), p=w / w.sum())
        centre = np.array([grid.z[kz[j]], grid.y[ky[j] * step], grid.x[kx[j] * step]], dtype=np.float64)
        centre += rng.uniform(-0.5, 0.5, 3) * np.array([sz, sy * step, sx * step])
        # radius: big enough to make progress, 10-60 mm (the lung part is a pleural crescent of it)
        voxel_mm3 = sz * sy * sx
        r_need = (remaining * voxel_mm3 * 3 / (4 * np.pi)) ** (1 / 3)
        radius = float(np.clip(rng.uniform(0.8, 1.5) * r_need, 10.0, 60.0))
        axes = radius * np.array([rng.uniform(0.8, 1.4), rng.uniform(0.6, 1.1), rng.uniform(0.8, 1.3)])
        reach = rng.uniform(20.0, 40.0)
        consolidated = rng.uniform() < consolidation_share
        ggo = rng.uniform(*GGO_HU)
        cons = rng.uniform(*CONSOLIDATION_HU)
        origin = np.array([grid.z[0], grid.y[0], grid.x[0]], dtype=np.float64)
        spacing = np.array([sz, sy, sx])
        lo_idx = np.clip(np.floor((centre - 1.3 * axes - origin) / spacing).astype(int), 0, hu.shape)
        hi_idx = np.clip(np.ceil((centre + 1.3 * axes - origin) / spacing).astype(int) + 1, 0, hu.shape)
        shape = tuple(int(b - a) for a, b in zip(lo_idx, hi_idx))
        rough_coarse = rng.standard_normal((4, 5, 5))
        if min(shape) <= 0:
            continue
        # work on the lung voxels of the lesion's box only
        box = tuple(slice(a, b) for a, b in zip(lo_idx, hi_idx))
        iz, iy, ix = np.nonzero(lung[box])
        if len(iz) == 0:
            continue
        zz = (grid.z[lo_idx[0] + iz] - centre[0]) / axes[0]
        yy = (grid.y[lo_idx[1] + iy] - centre[1]) / axes[1]
        xx = (grid.x[lo_idx[2] + ix] - centre[2]) / axes[2]
        # smooth roughness: the coarse 4x5x5 noise interpolated across the box (corners aligned)
        coords = [i * (n_in - 1) / max(n - 1, 1) for i, n_in, n in zip((iz, iy, ix), rough_coarse.shape, shape)]
        rough = ndimage.map_coordinates(rough_coarse, coords, order=1)
        # depth below the chest wall (coarse distance map) eats into the blob: lesions hug the pleura
        # and reach deeper only in extensive disease
        depth_mm = dist[lo_idx[0] + iz, np.minimum((lo_idx[1] + iy) // step, dist.shape[1] - 1),
                        np.minimum((lo_idx[2] + ix) // step, dist.shape[2] - 1)]
        field = (1.0 - np.sqrt(zz * zz + yy * yy + xx * xx) + 0.25 * rough
                 - depth_mm / (reach * (1.0 + severity)))
        # the painted lesion starts where it has raised the HU a quarter of the way to its value (ground
        # glass: roughly -760 HU in -850 HU lung), a soft margin that noise and blur then soften further;
        # the mask keeps the raised voxels that reach LESION_THRESHOLD_HU (module docstring)
        keep = field > EDGE_FIELD
        if not keep.any():
            continue
        field = field[keep]
        idx = (lo_idx[0] + iz[keep], lo_idx[1] + iy[keep], lo_idx[2] + ix[keep])
        current = hu[idx]
        value = current + _smoothstep(field / RAMP) * (ggo - current)
        if consolidated:
            value = value + _smoothstep((field - 0.35) / 0.3) * (cons - value)
        value = value.astype(np.float32)
        raised[idx] |= value > current
        hu[idx] = np.maximum(current, value)
        now = raised[idx] & (hu[idx] >= LESION_THRESHOLD_HU)
        affected += int((now & ~lesion[idx]).sum())
        lesion[idx] = now
        info["lesions"].append({"centre_zyx_mm": [round(float(c), 1) for c in centre], "radius_mm": round(radius, 1),
                                "consolidated": bool(consolidated)})
    return lesion, info

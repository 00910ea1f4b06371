"""COVID-19 pneumonia lesions: ground-glass opacities and consolidations.

The pattern follows the CT descriptions of COVID-19 pneumonia (Pan et al., Radiology 2020; Bernheim et
al., Radiology 2020; Chung et al., Radiology 2020): multiple, bilateral, peripheral (subpleural) and
posterior/dependent-predominant opacities, ground glass more frequent than consolidation, consolidation
increasing with extent. Each lesion is an irregular blob: an ellipsoid flattened along the pleura whose
edge is roughened by smooth noise, with HU rising from the edge inwards (soft margins), and a
consolidated core in a part of the lesions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .tissue import CONSOLIDATION_HU, GGO_HU

MAX_LESIONS = 60
EXTENT_RANGE = (0.02, 0.30)


def sample_extent(rng: np.random.Generator) -> float:
    """Target fraction of lung volume affected: log-uniform in EXTENT_RANGE (mild cases are common)."""
    lo, hi = np.log(EXTENT_RANGE[0]), np.log(EXTENT_RANGE[1])
    return float(np.exp(rng.uniform(lo, hi)))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _resize(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of a small array onto ``shape`` (corners aligned)."""
    coords = np.meshgrid(*[np.linspace(0, n_in - 1, n_out) for n_in, n_out in zip(a.shape, shape)], indexing="ij")
    return ndimage.map_coordinates(a, coords, order=1)


def add_lesions(hu: np.ndarray, lung_side: np.ndarray, grid: Grid,
                rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Paint lesions into ``hu`` (in place) inside the lungs; return the exact lesion mask and a summary."""
    lung = lung_side > 0
    lesion = np.zeros(hu.shape, dtype=bool)
    n_lung = int(lung.sum())
    target = sample_extent(rng)
    info: dict[str, Any] = {"target_fraction": target, "lesions": []}
    if n_lung == 0:
        return lesion, info

    # Candidate centres on a coarse grid (about 3 mm): weight by nearness to the pleura and posteriority.
    step = max(1, int(round(3.0 / grid.pixel_mm)))
    coarse = lung[:, ::step, ::step]
    dist = ndimage.distance_transform_edt(coarse, sampling=(grid.slice_mm, grid.pixel_mm * step, grid.pixel_mm * step))
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
        # radius: big enough to make progress, between 6 and 40 mm
        voxel_mm3 = sz * sy * sx
        r_need = (remaining * voxel_mm3 * 3 / (4 * np.pi)) ** (1 / 3)
        radius = float(np.clip(rng.uniform(0.35, 0.9) * r_need, 6.0, 40.0))
        axes = radius * np.array([rng.uniform(0.8, 1.4), rng.uniform(0.6, 1.1), rng.uniform(0.8, 1.3)])
        reach = rng.uniform(15.0, 35.0)
        consolidated = rng.uniform() < consolidation_share
        ggo = rng.uniform(*GGO_HU)
        cons = rng.uniform(*CONSOLIDATION_HU)
        lo_idx = np.floor((centre - 1.4 * axes - [grid.z[0], grid.y[0], grid.x[0]]) / [sz, sy, sx]).astype(int)
        hi_idx = np.ceil((centre + 1.4 * axes - [grid.z[0], grid.y[0], grid.x[0]]) / [sz, sy, sx]).astype(int) + 1
        lo_idx = np.clip(lo_idx, 0, hu.shape)
        hi_idx = np.clip(hi_idx, 0, hu.shape)
        box = tuple(slice(a, b) for a, b in zip(lo_idx, hi_idx))
        if any(b <= a for a, b in zip(lo_idx, hi_idx)):
            continue
        zz = (grid.z[box[0]][:, None, None] - centre[0]) / axes[0]
        yy = (grid.y[box[1]][None, :, None] - centre[1]) / axes[1]
        xx = (grid.x[box[2]][None, None, :] - centre[2]) / axes[2]
        shape = tuple(b - a for a, b in zip(lo_idx, hi_idx))
        rough = _resize(rng.standard_normal((4, 5, 5)), shape)
        # depth below the pleura (from the coarse distance map) eats into the blob: lesions hug the pleura
        # and reach deeper only in extensive disease
        zi = np.arange(box[0].start, box[0].stop)[:, None, None]
        yi = (np.arange(box[1].start, box[1].stop) // step)[None, :, None]
        xi = (np.arange(box[2].start, box[2].stop) // step)[None, None, :]
        depth_mm = dist[zi, np.minimum(yi, dist.shape[1] - 1), np.minimum(xi, dist.shape[2] - 1)]
        field = (1.0 - np.sqrt(zz * zz + yy * yy + xx * xx) + 0.25 * rough
                 - depth_mm / (reach * (1.0 + severity)))
        # below a 5% blend the lesion would not change the image: the mask starts where it does
        inside = (field > 0.06) & lung[box]
        if not inside.any():
            continue
        region = hu[box]
        w_in = _smoothstep(field / 0.45)
        value = region + w_in * (ggo - region)
        if consolidated:
            core = _smoothstep((field - 0.35) / 0.3)
            value = value + core * (cons - value)
        region[inside] = np.maximum(region[inside], value[inside].astype(np.float32))
        before = int(lesion[box].sum())
        lesion[box] |= inside
        affected += int(lesion[box].sum()) - before
        info["lesions"].append({"centre_zyx_mm": [round(float(c), 1) for c in centre], "radius_mm": round(radius, 1),
                                "consolidated": bool(consolidated)})
    return lesion, info

"""Inside the lungs: bronchi and pulmonary vessels (branching trees), and parenchymal texture."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .canvas import Anatomy, paint_layers, stack_segments
from .geometry import Grid
from .tissue import TISSUES as T
from .trees import grow_tree, sample_points


def draw_lung_trees(anatomy: Anatomy, p: dict[str, Any], rng: np.random.Generator) -> None:
    """Bronchi (air with thin walls) and pulmonary arteries and veins, branching through both lungs."""
    grid, lay = anatomy.grid, anatomy.layout
    spacing = (grid.slice_mm, grid.pixel_mm, grid.pixel_mm)
    origin = grid.origin_mm
    walls, lumens, vessels = [], [], []
    n_points = 900
    # vessels much thinner than a pixel are invisible: stop the trees there (keeps small matrices fast)
    r_min = max(0.6, 0.25 * grid.pixel_mm)
    for code, side in ((1, "right"), (2, "left")):
        mask = anatomy.lung_side == code
        if not mask.any():
            continue
        pts_a = sample_points(rng, mask, n_points, spacing, origin)
        pts_v = sample_points(rng, mask, n_points, spacing, origin)
        lat = np.array([-1.0 if side == "right" else 1.0, 0.0, 0.0])
        # bronchi: main bronchus from the carina, lumen radius by Murray's law down to 1 mm
        r_main = 6.5 if side == "right" else 5.8
        b0, b1, br0, br1 = grow_tree(rng, lay.carina, lay.bronchus_end[side], pts_a, r_main, max(1.0, r_min))
        wall0 = br0 + 0.5 + 0.15 * br0
        wall1 = br1 + 0.5 + 0.15 * br1
        walls.append((b0, b1, wall0, wall1))
        lumens.append((b0, b1, br0, br1))
        hilum = lay.hila[side]
        a_end = hilum + 18.0 * lat + np.array([0.0, 4.0, -10.0])
        vessels.append(grow_tree(rng, hilum, a_end, pts_a, 7.0, r_min))
        v_root = lay.vein_root[side]
        v_end = v_root + 16.0 * lat + np.array([0.0, 0.0, -4.0])
        vessels.append(grow_tree(rng, v_root, v_end, pts_v, 6.0, r_min))

    labels = anatomy.labels
    lung = anatomy.lung_side > 0
    in_chest = lung | (anatomy.cavity & (labels == T["fat"]))
    vessel_segments = stack_segments(vessels)
    before = labels.copy() if vessels else None
    paint_layers(anatomy, [(vessel_segments, p["hu"]["lung_vessel"], T["lung_vessel"], in_chest)])
    if before is not None:
        # vessels outside the lungs (hilum, mediastinum) are plain blood
        labels[(labels == T["lung_vessel"]) & (before != T["lung_vessel"]) & ~lung] = T["blood"]
    if walls:
        wall_allowed = in_chest | (labels == T["blood"])
        paint_layers(anatomy, [(stack_segments(walls), p["hu"]["muscle"], T["muscle"], wall_allowed),
                               (stack_segments(lumens), p["hu"]["airway"], T["airway"], None)])


def _linear_upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of linear interpolation weights, corners aligned."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def lung_texture(p: dict[str, Any], grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Smooth parenchymal density variation (about 8 mm blobs), zero mean, in HU, shape of the grid."""
    n = max(4, int(np.ceil(grid.size * grid.pixel_mm / 8.0)))
    coarse = rng.standard_normal((grid.depth, n, n)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, (0.6, 1.0, 1.0))
    coarse /= max(float(coarse.std()), 1e-6)
    up = _linear_upsample_matrix(grid.size, n)
    fine = up[None] @ coarse @ up.T[None]    # separable bilinear upsampling, slice by slice
    fine *= np.float32(p["lungs"]["texture_hu"])
    return fine

"""Space-filling branching trees for the pulmonary vessels and the bronchi.

The algorithm follows the idea of Kitaoka et al.'s airway model (J Appl Physiol 1999): every branch owns
a region of the lung (here a cloud of points sampled uniformly in it); the region is split in two by a
plane through its centroid across its longest axis, and each daughter branch grows from the parent's end
towards the centroid of its half. Radii follow a Murray-type law with flow proportional to the territory
(r_child^k = r_parent^k * n_child / n_parent; k = 2.8 by default, a design choice a little below Murray's
cube law that thins the tree slightly faster), so branches taper and thin towards the periphery and the
tree fills the lung without leaving it (a centroid of lung points lies in or very near the lung).
"""

from __future__ import annotations

import numpy as np


def grow_tree(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, points: np.ndarray,
              r_root: float, r_min: float, length_range: tuple[float, float] = (0.35, 0.6),
              murray_exponent: float = 2.8,
              max_branches: int = 20000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Branches (p0, p1, r0, r1) of a tree rooted at ``start -> end`` filling ``points`` (n, 3) mm."""
    p0s, p1s, r0s, r1s = [], [], [], []
    stack = [(np.asarray(start, float), np.asarray(end, float), np.asarray(points, float), float(r_root))]
    while stack and len(p0s) < max_branches:
        a, b, pts, r = stack.pop()
        p0s.append(a)
        p1s.append(b)
        r0s.append(r)
        r1s.append(r * 0.93)
        n = len(pts)
        if n < 2:
            continue
        centre = pts.mean(axis=0)
        d = pts - centre
        direction = b - a
        direction /= max(np.linalg.norm(direction), 1e-9)
        # longest axis of the region, made perpendicular to the parent branch so daughters diverge
        _, vecs = np.linalg.eigh(d.T @ d)
        axis = vecs[:, -1] - (vecs[:, -1] @ direction) * direction
        if np.linalg.norm(axis) < 0.2:
            axis = vecs[:, -2] - (vecs[:, -2] @ direction) * direction
        side = d @ axis < 0
        for half in (pts[side], pts[~side]):
            if len(half) == 0:
                continue
            rc = r * (len(half) / n) ** (1.0 / murray_exponent)
            if rc < r_min:
                continue
            target = half.mean(axis=0)
            vec = target - b
            dist = float(np.linalg.norm(vec))
            if dist < 1e-3:
                continue
            frac = 1.0 if len(half) == 1 else rng.uniform(*length_range)
            length = max(dist * frac, min(dist, 2.0 * rc))
            stack.append((b, b + vec / dist * length, half, rc))
    return np.array(p0s), np.array(p1s), np.array(r0s), np.array(r1s)


def sample_points(rng: np.random.Generator, mask: np.ndarray, n: int, spacing_zyx: tuple[float, float, float],
                  origin_xyz: tuple[float, float, float]) -> np.ndarray:
    """``n`` points (x, y, z) in mm drawn uniformly inside a boolean (z, y, x) mask."""
    flat = np.flatnonzero(mask)
    if len(flat) == 0:
        return np.zeros((0, 3))
    pick = flat[rng.integers(0, len(flat), size=n)]
    z, y, x = np.unravel_index(pick, mask.shape)
    jitter = rng.uniform(-0.5, 0.5, size=(n, 3))
    sz, sy, sx = spacing_zyx
    return np.stack([origin_xyz[0] + (x + jitter[:, 0]) * sx,
                     origin_xyz[1] + (y + jitter[:, 1]) * sy,
                     origin_xyz[2] + (z + jitter[:, 2]) * sz], axis=1)

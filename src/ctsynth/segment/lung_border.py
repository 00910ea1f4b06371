"""Steps 6 and 7 of :func:`ctsynth.segment.lungs.lung_mask`: what a threshold misses or takes in at the
lung's border.

6. **Subpleural consolidation** (:func:`costal_consolidation`): dependent consolidation lying on the chest wall
   has the wall's HU, so steps 2-5 stop at the aerated lung and miss it (3-8% of the lungs in extensive
   disease). Rays are cast in-plane from the centre of the lungs' bounding box (bins about one pixel wide at
   60 mm); along a ray the mediastinum and the upper abdomen lie inward of the lung, so whatever is found
   beyond the lung's outermost voxel (its edge) is on the costal side. The depth of a voxel is its in-plane
   distance to the outside of the body. The pleura's depth on a ray is taken as the shallowest lung edge on
   the same ray within ±40 mm of slices (``COSTAL_MM``): the chest wall's thickness changes slowly along the
   body, and the lung touches the pleura somewhere in that range. A ray is filled when

   - its edge looks like a lesion's margin: the last 4 mm of lung on it average above ``-600`` HU (aerated
     lung is -900..-700) and also above ``-750`` HU in the slices within ±5 mm (the lower of their HU), which
     rejects the partial volume of an apex or a diaphragm dome cut obliquely by the slice; at least half of
     those 4 mm is lung (the ray does not graze the lung);
   - its edge lies more than 2 mm deeper than the pleura's depth;
   - outward of the edge, the depth falls to the pleura's before bone (> +200 HU), air or the outside comes,
     within 40 mm;
   - what it adds averages at most +40 HU (consolidation with its ground-glass margin; a fill that runs into
     muscle, liver, the heart or contrast-filled vessels averages more) and is at least 3.5 mm wide along
     the wall.

   It is filled from the edge to the pleura's depth, and not beyond the farthest the lung reaches on the ray
   within ±40 mm of slices (breasts and arms change the depth, not that radius); holes the fill encloses are
   filled. Slices where the field of view cuts into the body have no skin to measure depth from and are
   skipped. Not recovered: consolidation with no aerated lung on the ray between it and the centre (a basal
   rim round the heart or the liver dome, a paravertebral gutter seen past the spine). A pleural effusion
   lies where dependent consolidation lies and has its HU: it is taken in as lung, a limit of this method.
7. **Partial volume at the border** (:func:`trim_partial_volume`): -320 HU takes in an edge voxel that is only
   30-40% lung next to fat (-100 HU) or muscle, which adds a rim of up to 2% of the lungs at sub-millimetre
   pixels. An in-plane edge voxel of the mask is dropped when its HU is above the midpoint between the local
   lung (mean of the mask's interior within 5 mm) and the local outside (mean of the body outside the mask
   within 5 mm, bone counted as +100), i.e. when it is less than half lung; only where the two differ by more
   than 300 HU (a consolidation against the wall is left alone) and only at pixels up to 3.5 mm
   (``TRIM_MAX_PIXEL_MM``): at coarser pixels an edge voxel holds as much lesion as partial volume.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from .body import BONE_HU
from .morphology import IN_PLANE, fill_holes_slicewise, morph_factor, padded_box

COSTAL_MM = 40.0  # slice range for the pleura's depth, and longest subpleural fill along a ray (step 6)
LESION_EDGE_HU = -600.0  # a lung edge averaging above this over its last 4 mm looks like a lesion's margin
TRIM_MAX_PIXEL_MM = 3.5  # the partial-volume trim (step 7) runs at pixels up to this size


def costal_consolidation(part: np.ndarray, hu: np.ndarray, body: np.ndarray, depth: np.ndarray,
                          spacing_mm: tuple[float, float, float], centre: tuple[float, float],
                          threshold: float) -> np.ndarray:
    """``part`` (one lung) with the consolidation between its aerated edge and the chest wall added, ray by
    ray from ``centre`` (module docstring, step 6; the numbers are explained there): find each ray's lung
    edge and whether it looks like a lesion's margin, compare its depth with the pleura's, fill towards the
    wall where every condition holds, then fill the holes the fill encloses."""
    zs = np.flatnonzero(part.any(axis=(1, 2)) & depth.any(axis=(1, 2)))
    if zs.size == 0:
        return part
    rays = _Rays(part, centre, spacing_mm)
    edges = _lung_edges(part, hu, depth, rays, zs)
    k_range = max(1, int(round(COSTAL_MM / spacing_mm[0])))  # slices within ±40 mm
    pleura = ndimage.minimum_filter(edges.depth, size=(2 * k_range + 1, 1), mode="nearest")
    reach = ndimage.maximum_filter(edges.radius, size=(2 * k_range + 1, 1), mode="nearest")
    with np.errstate(invalid="ignore"):
        todo = edges.lesion & (edges.depth - pleura > 2.0)
    filled = _fill_to_wall(hu, body, depth, rays, edges.radius, pleura, reach, todo, threshold)
    changed = np.flatnonzero(filled.any(axis=(1, 2)))
    if changed.size == 0:
        return part
    # holes that the fill encloses are filled; those step 5 left open stay open
    box = rays.box
    before = part[changed][:, box[0], box[1]]
    after = before | filled[changed]
    out = part.copy()
    out[changed, box[0], box[1]] = after | (fill_holes_slicewise(after) & ~fill_holes_slicewise(before))
    return out


class _Rays:
    """The in-plane box round one lung (widened by ``COSTAL_MM``) and, per pixel of it, the radius in mm from
    ``centre`` and the ray (angle bin, about one pixel wide at 60 mm) it lies on."""

    def __init__(self, part: np.ndarray, centre: tuple[float, float], spacing_mm: tuple[float, float, float]):
        sz, sy, sx = spacing_mm
        self.px = max(sy, sx)
        self.box = padded_box(part, int(np.ceil(COSTAL_MM / sy)) + 1, int(np.ceil(COSTAL_MM / sx)) + 1)[1:]
        dy = (np.arange(self.box[0].start, self.box[0].stop) - centre[0])[:, None] * sy
        dx = (np.arange(self.box[1].start, self.box[1].stop) - centre[1])[None, :] * sx
        self.r = np.hypot(dy, dx)
        self.n = int(np.clip(round(2 * np.pi * 60.0 / self.px), 90, 720))
        self.bins = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * self.n).astype(np.int64) % self.n
        self.k_near = max(1, int(round(5.0 / sz)))  # slices within ±5 mm


class _Edges:
    def __init__(self, nz: int, n_rays: int) -> None:
        self.radius = np.full((nz, n_rays), -np.inf)  # radius of the lung's edge on each ray
        self.depth = np.full((nz, n_rays), np.inf)  # depth of that edge
        self.lesion = np.zeros((nz, n_rays), dtype=bool)  # the edge looks like a lesion's margin


def _lung_edges(part: np.ndarray, hu: np.ndarray, depth: np.ndarray, rays: _Rays, zs: np.ndarray) -> _Edges:
    """Per slice and ray: the lung's outermost radius, its depth below the skin, and whether its last 4 mm
    look like a lesion's margin (dense, also in the neighbouring slices, and not a grazing ray)."""
    box, r, bins, n_rays, px = rays.box, rays.r, rays.bins, rays.n, rays.px
    last = max(4.0, 1.5 * px)  # the lung's last 4 mm on a ray
    edges = _Edges(part.shape[0], n_rays)
    for z in zs:
        m = part[z][box]
        if not m.any():
            continue
        edges.radius[z] = _per_ray(bins[m], r[m], n_rays, np.maximum, -np.inf)
        outer = r[m] >= edges.radius[z][bins[m]] - px
        edges.depth[z] = _per_ray(bins[m][outer], depth[z][box][m][outer], n_rays, np.minimum, np.inf)
        near = (r > edges.radius[z][bins] - last) & (r <= edges.radius[z][bins])
        inner = m & near
        n_inner = np.bincount(bins[inner], minlength=n_rays)
        mean_hu = _ray_mean(bins[inner], hu[z][box][inner], n_rays)
        k = rays.k_near
        around = np.concatenate([hu[max(z - k, 0):z, box[0], box[1]], hu[z + 1:z + 1 + k, box[0], box[1]]])
        low = around.min(axis=0) if len(around) else hu[z][box]
        mean_low = _ray_mean(bins[inner], low[inner], n_rays)
        not_grazing = n_inner >= 0.5 * np.bincount(bins[near], minlength=n_rays)
        edges.lesion[z] = (n_inner > 0) & not_grazing & (mean_hu > LESION_EDGE_HU) & (mean_low > -750.0)
    return edges


def _fill_to_wall(hu: np.ndarray, body: np.ndarray, depth: np.ndarray, rays: _Rays, edge_r: np.ndarray,
                  pleura: np.ndarray, reach: np.ndarray, todo: np.ndarray, threshold: float) -> np.ndarray:
    """The pixels (in the box) filled on the rays ``todo``: from the lung's edge out to the pleura's depth,
    where the wall comes before bone, air or the outside, within ``COSTAL_MM``, not beyond the lung's reach in
    the neighbouring slices, averaging at most +40 HU and at least 3.5 mm wide along the wall."""
    box, r, bins, n_rays, px = rays.box, rays.r, rays.bins, rays.n, rays.px
    filled = np.zeros((hu.shape[0],) + r.shape, dtype=bool)
    for z in np.flatnonzero(todo.any(axis=1)):
        h = hu[z][box]
        beyond = r > edge_r[z][bins]
        stop = beyond & ((h > BONE_HU) | (h < threshold) | ~body[z][box])
        wall = beyond & (depth[z][box] < pleura[z][bins])
        r_stop = _per_ray(bins[stop], r[stop], n_rays, np.minimum, np.inf)
        r_wall = _per_ray(bins[wall], r[wall], n_rays, np.minimum, np.inf)
        ok = todo[z] & (r_wall < r_stop) & (r_wall - edge_r[z] <= COSTAL_MM)
        limit = np.where(ok, np.minimum(r_wall, reach[z] + 0.5 * px), -np.inf)
        fill = beyond & (r < limit[bins])
        ok &= _ray_mean(bins[fill], h[fill], n_rays) <= 40.0
        wall_per_ray = 2 * np.pi * np.median(edge_r[z][np.isfinite(edge_r[z])]) / n_rays  # mm of wall
        run = max(1, int(round(3.5 / wall_per_ray)))  # rays in 3.5 mm of wall
        if run > 1:
            ring = np.concatenate([ok[-run:], ok, ok[:run]])
            ok = ndimage.binary_opening(ring, structure=np.ones(run, dtype=bool))[run:-run]
        filled[z] = fill & ok[bins] & (h <= 100.0)
    return filled


def trim_partial_volume(mask: np.ndarray, hu: np.ndarray, body: np.ndarray,
                         spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """``mask`` less its in-plane edge voxels that are less than half lung (module docstring, step 7)."""
    sy, sx = spacing_mm[1:]
    k = max(3, int(round(5.0 / min(sy, sx))) | 1)  # a window of about 5 mm
    if not mask.any():
        return mask
    box = padded_box(mask, k, k)
    m = mask[box]
    h = np.clip(hu[box], -1000.0, 100.0)
    interior = ndimage.binary_erosion(m, structure=IN_PLANE, border_value=1)

    def local_mean(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = ndimage.uniform_filter(sel.astype(np.float32), size=(1, k, k))
        total = ndimage.uniform_filter(np.where(sel, h, 0.0).astype(np.float32), size=(1, k, k))
        return total / np.maximum(count, 1e-6), count > 0.5 / (k * k)  # at least one voxel

    lung, has_lung = local_mean(interior)
    rest, has_rest = local_mean(body[box] & ~m)
    drop = m & ~interior & has_lung & has_rest & (rest - lung > 300.0) & (h > (lung + rest) / 2)
    out = mask.copy()
    out[box] = m & ~drop
    return out


def skin_depth(body: np.ndarray, slices: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """In-plane distance (mm) of each voxel to the outside of the body (the image border counting as
    outside), on the flagged slices; 0 elsewhere. Run at the morphology's coarser pixels."""
    f = morph_factor(spacing_mm)
    sy, sx = spacing_mm[1:]
    ny, nx = body.shape[1:]
    depth = np.zeros(body.shape, dtype=np.float32)
    for z in np.flatnonzero(slices):
        d = ndimage.distance_transform_edt(np.pad(body[z, ::f, ::f], 1), sampling=(sy * f, sx * f))[1:-1, 1:-1]
        depth[z] = np.repeat(np.repeat(d, f, axis=0), f, axis=1)[:ny, :nx]
    return depth


def _per_ray(bins: np.ndarray, values: np.ndarray, n: int, reduce: np.ufunc, empty: float) -> np.ndarray:
    """``reduce`` (np.maximum or np.minimum) of ``values`` per ray bin; ``empty`` for bins with none."""
    out = np.full(n, empty)
    reduce.at(out, bins, values)
    return out


def _ray_mean(bins: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` per ray bin (0 for bins with none)."""
    return np.bincount(bins, values, n) / np.maximum(np.bincount(bins, minlength=n), 1)

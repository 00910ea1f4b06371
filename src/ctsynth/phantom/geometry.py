"""The phantom's voxel grid and the two shape primitives everything is drawn with.

All anatomy is described in millimetres (x to the patient's left, y posterior, z superior: LPS, centred on
the middle of the volume) and only turned into voxels here, so a 64-pixel test case and a 512-pixel case
show the same body at different resolutions.

Slices are thick (5-8 mm) compared with pixels (0.6-0.9 mm). Tubes (vessels, airways, ribs, aorta) are
therefore rasterised as the *fraction* of each voxel they fill, averaging several sub-planes across the
slab, which gives the partial-volume look of real thick-slice CT (a 2 mm vessel crossing a 5 mm slice is
grey, not white).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Voxel centres in mm: ``x``, ``y`` (in-plane, size each) and ``z`` (depth), all centred on 0."""

    size: int
    depth: int
    pixel_mm: float
    slice_mm: float

    @cached_property
    def x(self) -> np.ndarray:
        return ((np.arange(self.size) - (self.size - 1) / 2) * self.pixel_mm).astype(np.float32)

    @property
    def y(self) -> np.ndarray:
        return self.x

    @cached_property
    def z(self) -> np.ndarray:
        return ((np.arange(self.depth) - (self.depth - 1) / 2) * self.slice_mm).astype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.depth, self.size, self.size)

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """LPS position (x, y, z) of voxel [0, 0, 0]."""
        half = (self.size - 1) / 2 * self.pixel_mm
        return (-half, -half, -(self.depth - 1) / 2 * self.slice_mm)


def superellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay_ant: float, ay_post: float,
                 p_ant: float = 2.0, p_post: float = 2.0) -> np.ndarray:
    """Normalised 'radius' of a two-halved superellipse: < 1 inside, 1 on the boundary.

    The anterior half (y < cy) and posterior half (y >= cy) have their own semi-axis and exponent, which
    gives a chest's rounded front and flatter back. ``x`` and ``y`` broadcast against each other.
    """
    dx = np.abs(x - cx) / ax
    dy = y - cy
    post = dy >= 0
    ay = np.where(post, ay_post, ay_ant)
    p = np.where(post, p_post, p_ant)
    dy = np.abs(dy) / ay
    return (dx ** p + dy ** p) ** (1.0 / p)


def subdivide(p0: np.ndarray, p1: np.ndarray, r0: np.ndarray, r1: np.ndarray, max_len: float):
    """Split tube segments longer than ``max_len`` mm into equal pieces (keeps bounding boxes small)."""
    length = np.linalg.norm(p1 - p0, axis=1)
    pieces = np.maximum(1, np.ceil(length / max_len).astype(int))
    if np.all(pieces == 1):
        return p0, p1, r0, r1
    idx = np.repeat(np.arange(len(p0)), pieces)
    k = np.concatenate([np.arange(n) for n in pieces])
    n = pieces[idx]
    a, b = k / n, (k + 1) / n
    q0 = p0[idx] + (p1[idx] - p0[idx]) * a[:, None]
    q1 = p0[idx] + (p1[idx] - p0[idx]) * b[:, None]
    s0 = r0[idx] + (r1[idx] - r0[idx]) * a
    s1 = r0[idx] + (r1[idx] - r0[idx]) * b
    return q0, q1, s0, s1


def tube_arrays(p0, p1, r0, r1, min_length: float = 0.0):
    """Tube pieces as float64 arrays, (n, 3) end points and (n,) radii (a scalar radius is broadcast),
    without the pieces of zero radius or of a length not above ``min_length``."""
    p0 = np.asarray(p0, dtype=np.float64).reshape(-1, 3)
    p1 = np.asarray(p1, dtype=np.float64).reshape(-1, 3)
    r0 = np.broadcast_to(np.asarray(r0, dtype=np.float64), (len(p0),))
    r1 = np.broadcast_to(np.asarray(r1, dtype=np.float64), (len(p0),))
    keep = np.maximum(r0, r1) > 0
    if min_length > 0:
        keep &= np.linalg.norm(p1 - p0, axis=1) > min_length
    return p0[keep], p1[keep], r0[keep], r1[keep]


def rasterise_tubes(grid: Grid, p0: np.ndarray, p1: np.ndarray, r0: np.ndarray, r1: np.ndarray,
                    out: np.ndarray | None = None, max_len: float = 12.0) -> np.ndarray:
    """Add the voxel fractions filled by tapered, flat-ended cylinders to ``out`` (created if None).

    ``p0``, ``p1``: (n, 3) end points (x, y, z) in mm; ``r0``, ``r1``: (n,) radii in mm at each end.
    Flat ends mean consecutive pieces of one vessel tile without overlap, so the sum is exact along a
    vessel; where different tubes cross, the caller clips the sum at 1. Each slab is sampled on several
    planes across its thickness and averaged (partial volume along z); in-plane edges are anti-aliased.
    """
    if out is None:
        out = np.zeros(grid.shape, dtype=np.float32)
    # flat-ended pieces of zero length fill nothing
    p0, p1, r0, r1 = tube_arrays(p0, p1, r0, r1, min_length=1e-6)
    if len(p0) == 0:
        return out
    px, t = grid.pixel_mm, grid.slice_mm
    # short enough pieces that most boxes fit the batched path (<= 32 pixels a side)
    max_len = max(4 * px, min(max_len, 28 * px - 2 * float(np.max(np.maximum(r0, r1)))))
    p0, p1, r0, r1 = subdivide(p0, p1, r0, r1, max_len)
    x0, z0 = float(grid.x[0]), float(grid.z[0])
    n_sub = int(max(2, min(6, np.ceil(t / 1.5))))
    sub = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * t
    rmax = np.maximum(r0, r1)[:, None] + 0.5 * px
    lo = np.minimum(p0, p1) - rmax
    hi = np.maximum(p0, p1) + rmax
    ix0 = np.clip(np.floor((lo[:, 0] - x0) / px).astype(int), 0, grid.size)
    ix1 = np.clip(np.ceil((hi[:, 0] - x0) / px).astype(int) + 1, 0, grid.size)
    iy0 = np.clip(np.floor((lo[:, 1] - x0) / px).astype(int), 0, grid.size)
    iy1 = np.clip(np.ceil((hi[:, 1] - x0) / px).astype(int) + 1, 0, grid.size)
    iz0 = np.clip(np.floor((lo[:, 2] - z0) / t + 0.5).astype(int), 0, grid.depth)
    iz1 = np.clip(np.floor((hi[:, 2] - z0) / t + 0.5).astype(int) + 1, 0, grid.depth)
    nx, ny, nz = ix1 - ix0, iy1 - iy0, iz1 - iz0
    alive = (nx > 0) & (ny > 0) & (nz > 0)
    small = alive & (nz <= 4) & (nx <= 32) & (ny <= 32)
    big = np.flatnonzero(alive & ~small)
    small = np.flatnonzero(small)
    # batch similar-sized boxes together so that padding wastes little work
    small = small[np.lexsort((np.maximum(nx, ny)[small], nz[small]))]
    geo = (p0, p1, r0, r1, ix0, iy0, iz0)
    for start in range(0, len(small), 256):
        chunk = small[start:start + 256]
        shape = (int(nz[chunk].max()), int(ny[chunk].max()), int(nx[chunk].max()))
        _tubes_batch(grid, out, chunk, geo, ix1, iy1, iz1, sub, shape)
    for i in big:
        box = (slice(iz0[i], iz1[i]), slice(iy0[i], iy1[i]), slice(ix0[i], ix1[i]))
        xs = grid.x[box[2]][None, :]
        ys = grid.y[box[1]][None, :]
        zs = (grid.z[box[0], None] + sub[None, :]).reshape(1, -1)
        occ = _occupancy(p0[i:i + 1], p1[i:i + 1], r0[i:i + 1], r1[i:i + 1], xs, ys, zs, px)[0]
        out[box] += occ.reshape(nz[i], n_sub, ny[i], nx[i]).mean(axis=1)
    return out


def _occupancy(p0, p1, r0, r1, xs, ys, zs, px, capsule: bool = False):
    """Fraction of each sample point inside its tube: (n, nzs, ny, nx) for n tubes and per-tube coordinate
    rows ``xs`` (n, nx), ``ys`` (n, ny), ``zs`` (n, nzs). Flat ends, or round ends with ``capsule``."""
    f = np.float32
    v = (p1 - p0).astype(f)
    l2 = np.einsum("ij,ij->i", v, v).astype(f)[:, None, None, None]
    wx = (xs - p0[:, 0:1]).astype(f)[:, None, None, :]
    wy = (ys - p0[:, 1:2]).astype(f)[:, None, :, None]
    wz = (zs - p0[:, 2:3]).astype(f)[:, :, None, None]
    along = (wx * v[:, 0, None, None, None] + wy * v[:, 1, None, None, None] + wz * v[:, 2, None, None, None]) / l2
    ra = r0.astype(f)[:, None, None, None]
    rb = r1.astype(f)[:, None, None, None]
    if capsule:
        along = np.clip(along, 0, 1)
        dx = wx - along * v[:, 0, None, None, None]
        dy = wy - along * v[:, 1, None, None, None]
        dz = wz - along * v[:, 2, None, None, None]
        d2 = dx * dx + dy * dy + dz * dz
    else:
        d2 = wx * wx + wy * wy + wz * wz - along * along * l2
    radius = ra + (rb - ra) * np.clip(along, 0, 1)
    occ = np.clip((radius - np.sqrt(np.maximum(d2, 0))) / f(px) + f(0.5), 0, 1)
    if not capsule:
        occ *= (along >= 0) & (along < 1)
    return occ


def rasterise_path(grid: Grid, p0: np.ndarray, p1: np.ndarray, r0: np.ndarray, r1: np.ndarray,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Add the voxel fractions of ONE continuous tube (segments of a path) to ``out``.

    Unlike :func:`rasterise_tubes`, pieces get round ends and are merged by their maximum on the fine
    sub-planes before averaging each slab, so thick tubes that bend (the aortic arch, the great vessels)
    show neither gaps nor seams.
    """
    if out is None:
        out = np.zeros(grid.shape, dtype=np.float32)
    p0, p1, r0, r1 = tube_arrays(p0, p1, r0, r1)
    if len(p0) == 0:
        return out
    p0, p1, r0, r1 = subdivide(p0, p1, r0, r1, 12.0)
    box = tube_box(grid, p0, p1, r0, r1)
    if any(b.stop <= b.start for b in box):
        return out
    px, t = grid.pixel_mm, grid.slice_mm
    n_sub = int(max(2, min(6, np.ceil(t / 1.5))))
    sub = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * t
    zs_all = (grid.z[box[0], None] + sub[None, :]).ravel()
    ys_all, xs_all = grid.y[box[1]], grid.x[box[2]]
    fine = np.zeros((len(zs_all), len(ys_all), len(xs_all)), dtype=np.float32)
    rmax = (np.maximum(r0, r1) + px)[:, None]
    lo = np.minimum(p0, p1) - rmax
    hi = np.maximum(p0, p1) + rmax
    # per piece: index ranges into the fine (sub-plane) box
    ranges = [(np.searchsorted(axis, lo[:, d]), np.searchsorted(axis, hi[:, d], side="right"))
              for d, axis in ((2, zs_all), (1, ys_all), (0, xs_all))]
    extent = np.stack([b - a for a, b in ranges], axis=1)
    for i in np.flatnonzero((extent > 0).all(axis=1)):
        sl = tuple(slice(ranges[d][0][i], ranges[d][1][i]) for d in range(3))
        occ = _occupancy(p0[i:i + 1], p1[i:i + 1], r0[i:i + 1], r1[i:i + 1], xs_all[None, sl[2]],
                         ys_all[None, sl[1]], zs_all[None, sl[0]], px, capsule=True)[0]
        np.maximum(fine[sl], occ, out=fine[sl])
    out[box] += fine.reshape(-1, n_sub, len(ys_all), len(xs_all)).mean(axis=1)
    return out


def _tubes_batch(grid: Grid, out: np.ndarray, idx: np.ndarray, geo, ix1, iy1, iz1, sub,
                 shape: tuple[int, int, int]) -> None:
    """Rasterise many small tubes at once in padded boxes of ``shape``, then scatter-add the filled voxels."""
    p0, p1, r0, r1, ix0, iy0, iz0 = (a[idx] for a in geo)
    bz, by, bx = shape
    k = len(sub)
    xi = ix0[:, None] + np.arange(bx)[None, :]
    yi = iy0[:, None] + np.arange(by)[None, :]
    zi = iz0[:, None] + np.arange(bz)[None, :]
    xs = grid.x[np.minimum(xi, grid.size - 1)]
    ys = grid.y[np.minimum(yi, grid.size - 1)]
    zs = (grid.z[np.minimum(zi, grid.depth - 1)][:, :, None] + sub[None, None, :]).reshape(len(idx), -1)
    occ = _occupancy(p0, p1, r0, r1, xs, ys, zs, grid.pixel_mm)
    occ = occ.reshape(len(idx), bz, k, by, bx).mean(axis=2)
    occ *= (zi < iz1[idx][:, None])[:, :, None, None]
    occ *= (yi < iy1[idx][:, None])[:, None, :, None]
    occ *= (xi < ix1[idx][:, None])[:, None, None, :]
    n, z, y, x = np.nonzero(occ)
    flat = (zi[n, z] * grid.size + yi[n, y]) * grid.size + xi[n, x]
    np.add.at(out.reshape(-1), flat, occ[n, z, y, x])


def smooth_path(control: np.ndarray, step_mm: float = 4.0) -> np.ndarray:
    """A Catmull-Rom curve through ``control`` points (n, 3), sampled about every ``step_mm`` mm.

    Vessels and ribs are drawn along these so that bends are gradual and the flat-ended pieces meet
    without visible gaps.
    """
    c = np.asarray(control, dtype=np.float64)
    if len(c) < 3:
        return c
    ext = np.vstack([2 * c[0] - c[1], c, 2 * c[-1] - c[-2]])
    out = [c[:1]]
    for i in range(1, len(ext) - 2):
        q0, q1, q2, q3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        n = max(1, int(np.ceil(np.linalg.norm(q2 - q1) / step_mm)))
        t = (np.arange(1, n + 1) / n)[:, None]
        out.append(0.5 * ((2 * q1) + (-q0 + q2) * t + (2 * q0 - 5 * q1 + 4 * q2 - q3) * t ** 2
                          + (-q0 + 3 * q1 - 3 * q2 + q3) * t ** 3))
    return np.vstack(out)


def tube_box(grid: Grid, p0: np.ndarray, p1: np.ndarray, r0: np.ndarray, r1: np.ndarray) -> tuple[slice, slice, slice]:
    """The (z, y, x) index box that holds every voxel the tubes can touch (for working on a sub-volume)."""
    p0 = np.asarray(p0, dtype=np.float64).reshape(-1, 3)
    p1 = np.asarray(p1, dtype=np.float64).reshape(-1, 3)
    r = np.maximum(np.abs(np.asarray(r0, dtype=np.float64)), np.abs(np.asarray(r1, dtype=np.float64)))
    r = np.broadcast_to(r, (len(p0),))[:, None] + grid.pixel_mm
    lo = (np.minimum(p0, p1) - r).min(axis=0)
    hi = (np.maximum(p0, p1) + r).max(axis=0)
    x0, z0 = float(grid.x[0]), float(grid.z[0])
    xs = slice(int(np.clip(np.floor((lo[0] - x0) / grid.pixel_mm), 0, grid.size)),
               int(np.clip(np.ceil((hi[0] - x0) / grid.pixel_mm) + 1, 0, grid.size)))
    ys = slice(int(np.clip(np.floor((lo[1] - x0) / grid.pixel_mm), 0, grid.size)),
               int(np.clip(np.ceil((hi[1] - x0) / grid.pixel_mm) + 1, 0, grid.size)))
    zs = slice(int(np.clip(np.floor((lo[2] - z0) / grid.slice_mm + 0.5) - 1, 0, grid.depth)),
               int(np.clip(np.floor((hi[2] - z0) / grid.slice_mm + 0.5) + 2, 0, grid.depth)))
    return zs, ys, xs

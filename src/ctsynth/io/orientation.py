"""One canonical axial orientation for every volume that reaches ``prepare``.

Canonical means: array (z, y, x) with x towards the patient's left, y posterior and z superior (LPS), as an
axial DICOM series is stored, so that the lung-box crop, the resampling and the models always see axial
slices the same way up.

- :func:`reorient_to_lps` permutes and flips axes only: no voxel changes value or world position. A
  coronal or sagittal reformat, a NIfTI saved sagittally or with flipped axes, all become axial losslessly.
- :func:`to_canonical_axial` does that, and then, when the slices are still tilted by more than
  ``AXIS_TOL_DEG`` from the nearest axes (oblique acquisitions, gantry tilt), resamples the volume onto an
  axis-aligned grid (trilinear, same spacings, air outside the acquired volume) with a note, or refuses it
  beyond ``max_oblique_deg`` with a one-line problem.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..errors import CTSynthError
from ..volume import CTVolume

AXIS_TOL_DEG = 1.0  # directions within this of the axes are axis-aligned (scanners write 0.99999...)
MAX_OBLIQUE_DEG = 35.0
AIR_HU = -1024.0
_PLANE_OF_NORMAL = ("sagittal", "coronal", "axial")


def reorient_to_lps(volume: CTVolume) -> CTVolume:
    """Permute and flip the axes so the direction is as close to identity as axis swaps allow.

    Each index axis is matched to the world axis (L, P, S) it is most aligned with, and flipped where it
    points the opposite way; origin and direction are updated so every voxel keeps its world position.
    """
    direction = volume.direction
    # Greedy assignment of index axes (columns: x, y, z) to world axes (rows), most aligned first.
    weights = np.abs(direction)
    world_of_axis = [-1, -1, -1]
    used_world: set[int] = set()
    for flat in np.argsort(-weights, axis=None):
        world, axis = divmod(int(flat), 3)
        if world_of_axis[axis] == -1 and world not in used_world:
            world_of_axis[axis] = world
            used_world.add(world)
    # axis_for_world[w] = index axis (0=x, 1=y, 2=z) that becomes the new axis pointing along world w.
    axis_for_world = [world_of_axis.index(w) for w in range(3)]
    flips = [direction[w, axis_for_world[w]] < 0 for w in range(3)]
    if axis_for_world == [0, 1, 2] and not any(flips):
        return volume

    sz, sy, sx = volume.spacing_mm
    spacing_xyz = np.array([sx, sy, sz])
    old_affine = volume.index_to_lps()
    new_cols = []
    new_spacing_xyz = []
    origin = old_affine[:3, 3].copy()
    hu = volume.hu
    # Array axis of index axis a (x=0, y=1, z=2) in the (z, y, x) array.
    array_axis = {0: 2, 1: 1, 2: 0}
    for w in range(3):
        axis = axis_for_world[w]
        step = old_affine[:3, axis]
        n = volume.shape[array_axis[axis]]
        if flips[w]:
            origin = origin + step * (n - 1)
            step = -step
            hu = np.flip(hu, axis=array_axis[axis])
        new_cols.append(step / spacing_xyz[axis])
        new_spacing_xyz.append(spacing_xyz[axis])
    # New array order (z, y, x) = old index axes axis_for_world[2], [1], [0].
    hu = np.transpose(hu, [array_axis[axis_for_world[2]], array_axis[axis_for_world[1]], array_axis[axis_for_world[0]]])
    return CTVolume(
        hu=np.ascontiguousarray(hu),
        spacing_mm=(new_spacing_xyz[2], new_spacing_xyz[1], new_spacing_xyz[0]),
        origin_mm=tuple(origin),
        direction=np.stack(new_cols, axis=1) + 0.0,  # + 0.0 turns -0.0 into 0.0
        label=volume.label,
        source=volume.source,
        meta=dict(volume.meta),
    )


def slice_plane(direction: np.ndarray) -> str:
    """'axial', 'coronal' or 'sagittal': the plane of the array's slices (the axis nearest its z column)."""
    return _PLANE_OF_NORMAL[int(np.argmax(np.abs(np.asarray(direction)[:, 2])))]


def obliquity_deg(direction: np.ndarray) -> float:
    """The largest angle between an index axis and the world axis it is nearest to (0 = axis-aligned)."""
    cosines = np.max(np.abs(np.asarray(direction, dtype=np.float64)), axis=0)
    return float(math.degrees(math.acos(min(1.0, float(cosines.min())))))


def to_canonical_axial(volume: CTVolume, *, max_oblique_deg: float = MAX_OBLIQUE_DEG) -> CTVolume:
    """The volume in the canonical axial orientation (see the module docstring); notes say what was done."""
    plane = slice_plane(volume.direction)
    out = reorient_to_lps(volume)
    notes = list(out.meta.get("notes", []))
    if out is not volume and plane != "axial":
        notes.append(f"{plane} slices reoriented to axial (axes permuted and flipped; no voxel resampled)")
    angle = obliquity_deg(out.direction)
    if angle > AXIS_TOL_DEG:
        if angle > max_oblique_deg:
            raise CTSynthError(
                f"the slices are oblique, {angle:.1f} degrees from the nearest axial, coronal and sagittal axes "
                f"(ctsynth resamples up to {max_oblique_deg:g} degrees onto an axial grid)", volume.source or None,
                "reconstruct the series axially on the scanner console or PACS, or resample it axially first")
        out = _resample_axis_aligned(out)
        notes.append(f"oblique slices ({angle:.1f} degrees from the axes) resampled onto an axial grid "
                     "(trilinear, same spacings, air outside the acquired volume)")
    out.meta = {**out.meta, "notes": notes}
    return out


def _resample_axis_aligned(volume: CTVolume) -> CTVolume:
    """Resample onto the axis-aligned grid (identity direction) that covers every voxel, same spacings."""
    src = volume.index_to_lps()
    sz, sy, sx = volume.spacing_mm
    nz, ny, nx = volume.shape
    corners = np.array([[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
    world = (src @ corners.T)[:3].T
    lo, hi = world.min(axis=0), world.max(axis=0)
    spacing_xyz = np.array([sx, sy, sz])
    shape_xyz = np.floor((hi - lo) / spacing_xyz + 1e-6).astype(int) + 1
    dst = np.eye(4)
    dst[:3, :3] = np.diag(spacing_xyz)
    dst[:3, 3] = lo
    # output index (x, y, z) -> input index (x, y, z); then in (z, y, x) array order.
    m_xyz = np.linalg.inv(src) @ dst
    perm = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    m_zyx = perm @ m_xyz @ perm
    fill = AIR_HU
    hu = ndimage.affine_transform(volume.hu.astype(np.float32, copy=False), m_zyx[:3, :3], offset=m_zyx[:3, 3],
                                  output_shape=tuple(int(n) for n in shape_xyz[::-1]), order=1, mode="constant",
                                  cval=fill, output=np.float32)
    return CTVolume(hu=hu, spacing_mm=(float(sz), float(sy), float(sx)), origin_mm=tuple(lo), direction=np.eye(3),
                    label=volume.label, source=volume.source, meta=dict(volume.meta))

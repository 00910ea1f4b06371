"""The one definition of a plausible CT volume, shared by every reader.

A corrupt header can describe a voxel of 1e30 mm or 0 mm, a slice a kilometre from the table, a rotation
that is not a rotation, or values that become NaN once rescaled. None of that is CT, and each would flow
silently into resampling, training and the written outputs. Readers check what they parse against these
limits and refuse, naming the file, rather than pass such a volume on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import CTSynthError
from ..volume import CTVolume

SPACING_RANGE_MM = (0.05, 50.0)  # voxel sizes outside this are not a CT scan (micro-CT starts near 0.05 mm)
MAX_COORDINATE_MM = 1e5  # no patient position is 100 m from the scanner's origin
MAX_ABS_HU = 1e6  # CT spans about -1024..+30000 HU (metal); a million means the rescale or the scaling is wrong
ORTHONORMAL_TOL = 1e-2  # direction cosines: unit length and perpendicular to 1 % (rounded headers pass)


def spacing_problem(values: Iterable[float], what: str = "voxel size") -> str | None:
    """Why ``values`` (mm) are not plausible CT spacings, or None."""
    values = [float(v) for v in values]
    lo, hi = SPACING_RANGE_MM
    if not all(math.isfinite(v) for v in values):
        return f"{what} {values} mm is not finite"
    if any(v <= 0 for v in values):
        return f"{what} {values} mm is not positive"
    if any(v < lo or v > hi for v in values):
        return f"{what} {[float(f'{v:.6g}') for v in values]} mm is outside the plausible CT range {lo:g}-{hi:g} mm"
    return None


def direction_problem(columns: np.ndarray, what: str = "direction") -> str | None:
    """Why the unit-vector columns of ``columns`` are not (close to) orthonormal, or None."""
    columns = np.asarray(columns, dtype=np.float64)
    if not np.all(np.isfinite(columns)):
        return f"{what} is not finite"
    norms = np.linalg.norm(columns, axis=0)
    if np.any(np.abs(norms - 1) > ORTHONORMAL_TOL):
        return f"{what} vectors are not unit length (lengths {np.round(norms, 4).tolist()})"
    gram = columns.T @ columns
    if np.any(np.abs(gram - np.diag(np.diag(gram))) > ORTHONORMAL_TOL):
        return f"{what} vectors are not perpendicular"
    return None


def check_volume(volume: CTVolume, path: str | Path, fix: str) -> CTVolume:
    """Refuse a volume with implausible spacing, position or direction, or with NaN/inf HU."""
    problem = spacing_problem(volume.spacing_mm, "voxel size (z, y, x)")
    if problem is None and (not np.all(np.isfinite(volume.origin_mm))
                            or np.max(np.abs(volume.origin_mm)) > MAX_COORDINATE_MM):
        problem = f"origin {tuple(float(v) for v in volume.origin_mm)} mm is not a position in a scanner"
    if problem is None:
        problem = direction_problem(volume.direction)
    if problem is None and np.asarray(volume.hu).dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(volume.hu)))
        if bad:
            problem = f"{bad} voxels are NaN or infinite"
    if problem is None:
        problem = hu_range_problem(volume.hu)
    if problem is not None:
        raise CTSynthError(problem, path, fix)
    return volume


def hu_range_problem(hu: np.ndarray) -> str | None:
    """Why ``hu`` cannot be Hounsfield units (values beyond +-MAX_ABS_HU), or None. int16 always passes."""
    hu = np.asarray(hu)
    if hu.size == 0 or hu.dtype in (np.int16, np.uint8, np.int8):
        return None
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if lo < -MAX_ABS_HU or hi > MAX_ABS_HU:
        return f"values {lo:.4g}..{hi:.4g} are not Hounsfield units (beyond +-{MAX_ABS_HU:g})"
    return None


def check_finite_hu(hu: np.ndarray, path: str | Path) -> None:
    """Writers: refuse NaN or infinite HU before anything is written (int16 storage would turn them into
    0 or +-32767, values that look like tissue or metal)."""
    hu = np.asarray(hu)
    if hu.dtype.kind != "f":
        return
    bad = sum(int(np.count_nonzero(~np.isfinite(hu[k]))) for k in range(hu.shape[0]))  # no full-size mask
    if bad:
        raise CTSynthError(f"the volume holds {bad} NaN or infinite HU values; nothing was written", path,
                           "replace them (e.g. with -1024) before writing")

"""`CTVolume`: the one in-memory CT type everything up to the model boundary speaks.

Conventions (shared by every reader, writer and stage):

- ``hu`` is a 3D array indexed ``(z, y, x)`` in Hounsfield units (float32 or int16). ``z`` is the slice
  axis, ``y`` the image row, ``x`` the image column.
- ``spacing_mm`` is ``(z, y, x)`` in millimetres, matching the array axes.
- ``origin_mm`` is the centre of voxel ``[0, 0, 0]`` in DICOM patient coordinates (LPS: +x to the patient's
  left, +y posterior, +z superior), given as ``(x, y, z)`` like ImagePositionPatient.
- ``direction`` is a 3x3 matrix whose *columns* are the LPS unit vectors of the x (column), y (row) and z
  (slice) index axes, in that order: the same as SimpleITK's ``GetDirection()`` and DICOM's
  ImageOrientationPatient (column 0 = row cosine, column 1 = column cosine, column 2 = slice normal as the
  slices are stacked).
- ``meta`` holds only non-identifying fields (no names, IDs, dates, UIDs, institutions).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass
class CTVolume:
    """A CT volume in HU, indexed (z, y, x), with its geometry in mm (see the module docstring)."""

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    label: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3D (z, y, x), got shape {self.hu.shape}")
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        self.origin_mm = tuple(float(o) for o in self.origin_mm)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"CTVolume.spacing_mm must be three positive numbers, got {self.spacing_mm}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size (z, y, x) in mm covered by the voxels."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing_mm))  # type: ignore[return-value]

    def index_to_lps(self) -> np.ndarray:
        """4x4 affine mapping a homogeneous index (x, y, z, 1) to LPS millimetres."""
        sz, sy, sx = self.spacing_mm
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag([sx, sy, sz])
        affine[:3, 3] = self.origin_mm
        return affine

    def slice_positions_lps(self) -> np.ndarray:
        """(z, 3) array: the LPS position of the first voxel of each slice (DICOM ImagePositionPatient)."""
        affine = self.index_to_lps()
        k = np.arange(self.shape[0], dtype=np.float64)
        return affine[:3, 3][None, :] + k[:, None] * affine[:3, 2][None, :]

    def with_hu(self, hu: np.ndarray, spacing_mm: tuple[float, float, float] | None = None) -> "CTVolume":
        """A copy with new voxels (and optionally new spacing), keeping origin, direction, label and meta."""
        return replace(self, hu=hu, spacing_mm=spacing_mm or self.spacing_mm, meta=dict(self.meta))

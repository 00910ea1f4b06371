"""Where the slices of a series are, and whether they form a regular grid.

Slices are ordered by their position along the slice normal (the cross product of the two
ImageOrientationPatient cosines), never by InstanceNumber or file name. The positions then decide:

- equal positions (within 0.01 mm): duplicates, resolved after decoding by ``dicom_reader``;
- positions on a line with equal steps (every slice within 10 % of a step of the fitted grid): uniform;
  the z spacing is the actual step (first to last position / count), never SliceThickness;
- one or a few steps that are whole multiples (2x, 3x ...) of an otherwise uniform step: missing slices,
  refused (ctsynth does not invent anatomy to fill a gap);
- steps that vary but all stay within 0.5x..1.5x the median step: resampled onto a regular grid at the
  median step by linear interpolation between neighbouring slices, with a note;
- anything more irregular (e.g. two acquisitions joined, 4 mm then 7 mm): refused, naming the files of each
  evenly spaced run so the user can read them separately;
- ImagePositionPatient drifting sideways within the slice plane (gantry tilt: the slices are sheared):
  each slice is shifted back in-plane by its own offset (linear interpolation), which puts the stack on a
  regular grid orthogonal to the acquired planes without mixing neighbouring slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CTSynthError
from .dicom_headers import SliceHeader
from .dicom_series import name_files

DUPLICATE_TOL_MM = 0.01
UNIFORM_REL_TOL = 0.10
IRREGULAR_RESAMPLE_RANGE = (0.5, 1.5)


@dataclass
class StackPlan:
    """Sorted slices and what it takes to put them on a regular (z, y, x) grid."""

    headers: list[SliceHeader]  # sorted along the normal; duplicates included
    slots: list[list[int]]  # for each distinct position, the indices into headers found there
    positions: np.ndarray  # distinct positions along the normal, ascending (mm)
    direction: np.ndarray  # 3x3, columns = row cosine (x), column cosine (y), normal (z)
    spacing_yx: tuple[float, float]
    z_step: float
    origin: np.ndarray  # ImagePositionPatient of the first slice
    shifts_px: np.ndarray | None  # (n_positions, 2) in-plane (row, column) shift undoing gantry tilt
    tilt_deg: float
    resample_z: bool
    notes: list[str] = field(default_factory=list)


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _step_runs(steps: np.ndarray, headers: list[SliceHeader], firsts: list[int], root: Path) -> str:
    """'4.00 mm x13 (01.dcm..14.dcm), 1.08 mm x1 (14.dcm..15.dcm)' for messages about irregular spacing."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(steps) + 1):
        if i == len(steps) or abs(steps[i] - steps[start]) > max(0.01, UNIFORM_REL_TOL * steps[start]):
            runs.append((start, i))
            start = i
    parts = []
    for a, b in runs:
        first = name_files([headers[firsts[a]].path], root)
        last = name_files([headers[firsts[b]].path], root)
        parts.append(f"{_fmt(float(np.mean(steps[a:b])))} mm x{b - a} ({first}..{last})")
    return ", ".join(parts)


def _check_same_image_size(headers: list[SliceHeader], folder: Path) -> None:
    sizes: dict[tuple, list[Path]] = {}
    for h in headers:
        key = (h.rows, h.columns, round(h.pixel_spacing[0], 4), round(h.pixel_spacing[1], 4))
        sizes.setdefault(key, []).append(h.path)
    if len(sizes) > 1:
        desc = "; ".join(f"{k[0]}x{k[1]} at {k[2]}x{k[3]} mm: {name_files(v, folder, 3)}" for k, v in sizes.items())
        raise CTSynthError(f"the slices of one series differ in size or pixel spacing ({desc})", folder,
                           "re-export the series, or move the odd files out of the folder")


def plan_stack(headers: list[SliceHeader], folder: Path) -> StackPlan:
    """Sort ``headers`` along the slice normal and decide how they become a regular grid (or refuse)."""
    _check_same_image_size(headers, folder)
    iop = headers[0].orientation
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    direction = np.stack([row, col, normal], axis=1)
    sy, sx = headers[0].pixel_spacing
    if sy <= 0 or sx <= 0:
        raise CTSynthError(f"PixelSpacing {sy} x {sx} mm is not positive", headers[0].path,
                           "re-export the series with valid pixel spacing")
    notes: list[str] = []

    pos_of = {id(h): float(h.position @ normal) for h in headers}
    ordered = sorted(headers, key=lambda h: (pos_of[id(h)], h.instance_number or 0, str(h.path)))
    slots: list[list[int]] = []
    for i, h in enumerate(ordered):
        if slots and pos_of[id(h)] - pos_of[id(ordered[slots[-1][0]])] <= DUPLICATE_TOL_MM:
            slots[-1].append(i)
        else:
            slots.append([i])
    firsts = [s[0] for s in slots]
    positions = np.array([pos_of[id(ordered[i])] for i in firsts])
    origin = ordered[0].position.copy()
    n = len(slots)

    if n == 1:
        h = ordered[0]
        z_step = h.spacing_between_slices or h.slice_thickness or 1.0
        if z_step <= 0:
            z_step = 1.0
        notes.append(f"one slice only: z spacing {_fmt(z_step)} mm taken from "
                     f"{'SpacingBetweenSlices' if h.spacing_between_slices else 'SliceThickness' if h.slice_thickness else 'a 1 mm default'}")
        return StackPlan(ordered, slots, positions, direction, (sy, sx), float(z_step), origin, None, 0.0,
                         False, notes)

    # Gantry tilt: the part of each slice's offset from the first that lies within the image plane.
    offsets = np.array([ordered[i].position - origin for i in firsts])
    along = positions - positions[0]
    shear = offsets - along[:, None] * normal[None, :]
    shear_mm = np.linalg.norm(shear, axis=1)
    shifts = None
    tilt_deg = 0.0
    if shear_mm.max() > max(0.01, 0.05 * min(sy, sx)):
        tilt_deg = math.degrees(math.atan2(shear_mm[-1], along[-1]))
        shifts = np.stack([shear @ col / sy, shear @ row / sx], axis=1)
        stated = ordered[0].gantry_tilt
        notes.append(f"gantry tilt: slice positions are sheared by {tilt_deg:.1f} degrees"
                     + (f" (GantryDetectorTilt {stated:g})" if stated else "")
                     + "; each slice was shifted in-plane (up to "
                     f"{_fmt(float(shear_mm.max()))} mm, linear interpolation) onto a regular grid orthogonal "
                     "to the slice planes")

    steps = np.diff(positions)
    median = float(np.median(steps))
    k = np.arange(n)
    fit_step, fit_start = np.polyfit(k, positions, 1)
    residual = float(np.max(np.abs(positions - (fit_start + fit_step * k))))
    tilt_text = f" (and gantry tilt {tilt_deg:.1f} degrees)" if shifts is not None else ""
    if residual <= max(0.01, UNIFORM_REL_TOL * abs(fit_step)) and steps.min() > 0.5 * median:
        z_step = round(float((positions[-1] - positions[0]) / (n - 1)), 6)
        if residual > 0.01:
            notes.append(f"slice positions deviate up to {residual:.3f} mm from an even {_fmt(z_step)} mm grid "
                         "(rounded positions); treated as evenly spaced")
        return StackPlan(ordered, slots, positions, direction, (sy, sx), z_step, origin, shifts, tilt_deg,
                         False, notes)

    ratio = steps / median
    multiple = (ratio > 1.5) & (np.abs(ratio - np.round(ratio)) < 0.15)
    regular = np.abs(steps - median) <= max(0.01, UNIFORM_REL_TOL * median)
    if multiple.any() and np.all(multiple | regular):
        gaps = []
        for i in np.flatnonzero(multiple):
            missing = int(round(ratio[i])) - 1
            gaps.append(f"{missing} between {_fmt(positions[i])} and {_fmt(positions[i + 1])} mm "
                        f"({name_files([ordered[firsts[i]].path], folder)} and "
                        f"{name_files([ordered[firsts[i + 1]].path], folder)})")
        total = int(sum(int(round(r)) - 1 for r in ratio[multiple]))
        raise CTSynthError(
            f"{total} slice(s) missing from series: the step between slices is {_fmt(median)} mm, but "
            f"{'; '.join(gaps[:5])}{' ...' if len(gaps) > 5 else ''}{tilt_text}; ctsynth does not stack a series "
            "with gaps as if it were evenly spaced", folder,
            "re-export the complete series from the PACS (or copy the missing files in)")

    lo, hi = IRREGULAR_RESAMPLE_RANGE
    if steps.min() >= lo * median and steps.max() <= hi * median:
        notes.append(f"uneven slice steps ({_fmt(steps.min())} to {_fmt(steps.max())} mm): resampled onto an even "
                     f"{_fmt(median)} mm grid by linear interpolation between neighbouring slices")
        return StackPlan(ordered, slots, positions, direction, (sy, sx), median, origin, shifts, tilt_deg, True,
                         notes)

    raise CTSynthError(
        f"slice steps vary too much to be one evenly spaced stack: {_step_runs(steps, ordered, firsts, folder)}"
        f"{tilt_text}", folder,
        "read each evenly spaced part on its own (copy its files into a separate folder), or re-export the "
        "series as one evenly spaced reconstruction")

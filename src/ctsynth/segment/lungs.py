"""The lung mask from HU thresholds and connected components: cheap, dependency-free, good enough to crop
to the lungs and to measure lung HU/volume; not a clinical segmentation.

Method (:func:`lung_mask`; step 1 is :func:`ctsynth.segment.body.body_mask`):

2. **Air inside the body**: voxels below ``-320`` HU inside the body. Normally aerated lung is -900..-700
   and only solid tissue lies above -320; COVID ground glass (-700..-300) is partly above this and is put
   back by step 5.
3. **Components**: 3D connected components of that air, kept when they hold at least ``min_volume_ml``
   (default 20 mL, computed from the spacing) and at least 10% of the largest one; the stomach bubble and
   bowel gas in a chest CT's lower slices (typically 2-5% of the lungs' volume) are dropped. In an
   abdominal CT, where bowel gas can outweigh the lung bases, they are not: the mask is meant for chest CT.
4. **Trachea and main bronchi** (best effort): the airway lumen is nearly pure air (below ``-950`` HU
   after an in-plane mean over about 2 mm, ``AIRWAY_MEAN_MM``: 3x3 pixels at 0.6-1 mm, none at 1.3 mm or more,
   where a 3x3 mean would span a main bronchus and lose it below the carina and let the hilar tissue round it
   be taken in as lung) while lung parenchyma is denser. The airway is the component of such voxels
   that reaches the first or last lung slice near the body's left-right centre; it is removed (dilated by 1)
   if its volume is plausible for an airway (< 250 mL); otherwise (emphysema, where the lung itself is below
   -950, makes it leak into the lungs) nothing is removed. The threshold is then raised in steps to ``-900``
   HU (``AIRWAY_HU_STEPS``) while the airway stays plausible and grows by less than half
   (``AIRWAY_LEAK_RATIO``) over the -950 HU one: in thick slices a main bronchus partial-volumed with its
   wall reads -950..-900 where it leaves the mediastinum, and left as lung it takes the hilar tissue round it
   in (up to 0.7% of the lungs, read as consolidation); a lung as dark as -900 makes the airway leak and
   jump tens of times in volume, and the step before is kept. The removal is then widened by ``1.5`` mm in-plane
   within the air (``AIRWAY_RIM_MM``): the lumen's blurred rim (-950..-320 HU) would otherwise stay, keep
   the main bronchi attached to the lungs and let step 5 take the bronchi and the hilar fat round them back
   in (up to 3% of the lungs' volume). Inside a lung the widened airway is a hole, which step 5 fills again.
5. **Lesions**: each lung is closed slice-wise with a disk of ``close_mm`` (default 10 mm) and its holes are
   filled slice-wise, so vessels, nodules, ground glass and consolidation (up to about +50 HU) enclosed by
   lung are part of it, as are lesions in shallow bays of the lung surface. Voxels that the closing adds but
   that are above +200 HU (ribs, vertebrae) are left out; filled holes are kept whatever their HU
   (contrast-enhanced vessels), except a hole larger than ``150`` mm² (a 14 mm disk, ``OPEN_HOLE_MM2``) that
   connects in 3D, through voxels that are not lung, to what lies outside the lung: the dome of the liver in
   a slice just below its top, a hilar vessel or bronchus that the lung wraps round. Intrapulmonary vessels
   are smaller; a large lesion enclosed in its slice stays unless it is open to the outside in 3D.
6. and 7.: :mod:`ctsynth.segment.lung_border` (subpleural consolidation, partial volume at the border).

A field of view cropped into the body (a slice whose border is mostly not outside air) counts as body
wholly in that slice, so lungs that reach the image border are still found.

Left and right (``split_lungs``): the patient's left is +x in LPS. For the identity direction (the x index
axis pointing to the patient's left, as DICOM axial images are usually stored) the left lung is the one at
the larger x index; pass ``direction`` to handle flipped storage.

Accuracy and speed against the phantom's truth: docs/prepare.md.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..volume import CTVolume
from .body import BONE_HU, body_mask
from .lung_border import TRIM_MAX_PIXEL_MM, costal_consolidation, skin_depth, trim_partial_volume
from .morphology import (IN_PLANE, disk, fill_holes_slicewise, labelled_components, morph_factor, padded_box,
                         pool_any, upsample)

LUNG_HU = -320.0
AIRWAY_HU = -950.0
AIRWAY_HU_STEPS = (AIRWAY_HU, -925.0, -900.0)  # airway thresholds tried in turn (step 4)
AIRWAY_LEAK_RATIO = 1.5  # a raised threshold is kept while the airway grows less than this (step 4)
AIRWAY_MAX_ML = 250.0  # a larger "airway" has leaked into the lungs (step 4)
MIN_FRACTION_OF_LARGEST = 0.1
AIRWAY_MEAN_MM = 2.0  # the in-plane mean that tells airway lumen from lung spans about this (step 4)
AIRWAY_RIM_MM = 1.5  # the airway removal is widened by this, in-plane within the air (step 4)
OPEN_HOLE_MM2 = 150.0  # larger slice-wise holes open to the outside in 3D are not filled (step 5)


def lung_mask(volume: CTVolume, *, threshold: float = LUNG_HU, min_volume_ml: float = 20.0,
              close_mm: float = 10.0, remove_airways: bool = True, body: np.ndarray | None = None) -> np.ndarray:
    """Bool mask (z, y, x) of both lungs, lesions inside them included (see the module docstring).

    ``body``: a :func:`body_mask` already computed for this volume, to save computing it again.
    """
    hu = np.asarray(volume.hu, dtype=np.float32)
    sz, sy, sx = volume.spacing_mm
    voxel_ml = sz * sy * sx / 1000.0
    body = body_mask(hu, spacing_mm=volume.spacing_mm) if body is None else np.array(body, dtype=bool)
    truncated = _truncated_slices(hu)
    body[truncated] = True
    air = (hu < threshold) & body
    lungs = _lung_sized_components(air, voxel_ml, min_volume_ml)
    if remove_airways and lungs.any():
        airway = _airway(lungs, hu, body, volume.spacing_mm)
        if airway.any():
            steps = int(round(AIRWAY_RIM_MM / min(sy, sx)))
            if steps > 0:
                box = padded_box(airway, steps, steps)
                airway[box] = ndimage.binary_dilation(airway[box], structure=IN_PLANE, iterations=steps,
                                                      mask=lungs[box] | airway[box])
            lungs = _lung_sized_components(lungs & ~airway, voxel_ml, min_volume_ml)
    if not lungs.any():
        return lungs
    left, right = split_lungs(lungs, direction=volume.direction)
    f = morph_factor(volume.spacing_mm)
    radius = int(round(close_mm / max(f * min(sy, sx), 1e-6)))
    max_open_hole = OPEN_HOLE_MM2 / (sy * sx)
    depth = skin_depth(body, lungs.any(axis=(1, 2)) & ~truncated, volume.spacing_mm)
    ys, xs = np.flatnonzero(lungs.any(axis=(0, 2))), np.flatnonzero(lungs.any(axis=(0, 1)))
    centre = ((ys[0] + ys[-1]) / 2.0, (xs[0] + xs[-1]) / 2.0)
    out = np.zeros_like(lungs)
    for part in (left, right):
        if part.any():
            part = _close_and_fill(part, radius, f, body, hu, max_open_hole)
            out |= costal_consolidation(part, hu, body, depth, volume.spacing_mm, centre, threshold)
    if min(sy, sx) <= TRIM_MAX_PIXEL_MM:
        out = trim_partial_volume(out, hu, body, volume.spacing_mm)
    return out


def split_lungs(lung: np.ndarray, *, direction: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` lung masks (patient left/right; see the module docstring).

    The two largest 3D components when the second holds at least 20% of the first; otherwise (lungs fused
    at the anterior junction or through the airways) the mask is cut at the sagittal plane where the lung
    area, summed over the volume, is smallest within the middle third of the lungs' left-right extent.
    """
    lung = np.asarray(lung, dtype=bool)
    empty = np.zeros_like(lung)
    if not lung.any():
        return empty, empty.copy()
    labels, sizes = labelled_components(lung)
    order = np.argsort(sizes)[::-1]
    if len(order) > 2 and sizes[order[1]] >= 0.2 * sizes[order[0]]:
        a, b = labels == order[0], labels == order[1]
        # Smaller components (fragments of a lung) go to the nearer of the two in x.
        rest = lung & ~a & ~b
        ca, cb = (float(np.mean(np.nonzero(m)[2])) for m in (a, b))
        if rest.any():
            xs = np.nonzero(rest)
            to_a = np.abs(xs[2] - ca) <= np.abs(xs[2] - cb)
            a[tuple(c[to_a] for c in xs)] = True
            b[tuple(c[~to_a] for c in xs)] = True
        low_x, high_x = (a, b) if ca < cb else (b, a)
    else:
        profile = lung.sum(axis=(0, 1))
        xs = np.flatnonzero(profile)
        x0, x1 = xs[0], xs[-1]
        third = (x1 - x0) / 3.0
        lo, hi = int(np.floor(x0 + third)), int(np.ceil(x1 - third))
        cut = lo + int(np.argmin(profile[lo:hi + 1])) if hi > lo else (x0 + x1) // 2
        low_x, high_x = lung.copy(), lung.copy()
        low_x[:, :, cut:] = False
        high_x[:, :, :cut] = False
    left_is_high_x = True
    if direction is not None:
        left_is_high_x = float(np.asarray(direction, dtype=np.float64).reshape(3, 3)[0, 0]) >= 0.0
    return (high_x, low_x) if left_is_high_x else (low_x, high_x)


def _truncated_slices(hu: np.ndarray) -> np.ndarray:
    """Slices whose in-plane border is mostly not outside air (below -900 HU): a field of view cropped
    into the body, where the lungs may reach the border and hole filling cannot put them inside the body;
    there the whole slice counts as body."""
    border = np.concatenate([hu[:, 0, :], hu[:, -1, :], hu[:, :, 0], hu[:, :, -1]], axis=1)
    return np.mean(border < -900.0, axis=1) < 0.25


def _airway(air: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing_mm: tuple[float, float, float]
            ) -> np.ndarray:
    """The trachea/main-bronchi component (see the module docstring, step 4); empty when not found.

    At each threshold of ``AIRWAY_HU_STEPS`` the candidates are components of near-pure air inside ``air``
    that touch the first or last slice holding lung (the trachea enters the chest there; the slice order may
    be either way up) with their centre in the middle half of the body's left-right extent; the largest
    candidate wins. A higher threshold is kept only while its airway stays plausible (no leak).
    """
    zs = np.flatnonzero(air.any(axis=(1, 2)))
    if zs.size == 0:
        return np.zeros_like(air)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    ys, xs = np.flatnonzero(air.any(axis=(0, 2))), np.flatnonzero(air.any(axis=(0, 1)))
    box = (slice(None), slice(max(ys[0] - 1, 0), ys[-1] + 2), slice(max(xs[0] - 1, 0), xs[-1] + 2))
    k = 2 * max(int(np.floor((AIRWAY_MEAN_MM / min(spacing_mm[1:]) - 1.0) / 2.0 + 0.5)), 0) + 1  # odd
    mean = ndimage.uniform_filter(hu[box], size=(1, k, k))
    xs_body = np.flatnonzero(body.any(axis=(0, 1)))
    centre, half_width = (xs_body[0] + xs_body[-1]) / 2.0, max((xs_body[-1] - xs_body[0]) / 2.0, 1.0)
    airway, first_ml = np.zeros_like(air), 0.0
    for threshold in AIRWAY_HU_STEPS:
        dark = np.zeros_like(air)
        dark[box] = air[box] & (mean < threshold)
        found = _central_component(dark, zs, centre, half_width, voxel_ml)
        ml = float(found.sum()) * voxel_ml
        if ml == 0.0 or ml > AIRWAY_MAX_ML or (first_ml and ml > AIRWAY_LEAK_RATIO * first_ml):
            break
        airway, first_ml = found, first_ml or ml
    if not airway.any():
        return airway
    return ndimage.binary_dilation(airway, structure=disk(1))


def _central_component(dark: np.ndarray, zs: np.ndarray, centre: float, half_width: float,
                       voxel_ml: float) -> np.ndarray:
    """The largest component of ``dark`` of at least 1 mL that touches slice ``zs[0]`` or ``zs[-1]`` with its
    centre within half of ``half_width`` of the x index ``centre``; empty when there is none."""
    labels, sizes = labelled_components(dark)
    best = 0
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[index] * voxel_ml < 1.0 or sizes[index] <= sizes[best]:
            continue
        if not (sl[0].start <= zs[0] or sl[0].stop - 1 >= zs[-1]):
            continue
        xc = sl[2].start + float(np.mean(np.nonzero(labels[sl] == index)[2]))
        if abs(xc - centre) <= 0.5 * half_width:
            best = index
    return labels == best if best else np.zeros_like(dark)


def _lung_sized_components(mask: np.ndarray, voxel_ml: float, min_volume_ml: float) -> np.ndarray:
    """The 3D components of ``mask`` holding at least ``min_volume_ml`` and ``MIN_FRACTION_OF_LARGEST`` of
    the largest one (module docstring, step 3); empty when none is that large."""
    labels, sizes = labelled_components(mask)
    keep = (sizes * voxel_ml >= min_volume_ml) & (sizes >= MIN_FRACTION_OF_LARGEST * sizes.max(initial=1))
    return keep[labels]


def _close_and_fill(part: np.ndarray, radius: int, f: int, body: np.ndarray, hu: np.ndarray,
                    max_open_hole: float) -> np.ndarray:
    """Slice-wise closing (at ``f``-times coarser pixels, radius in those pixels) + hole filling of one lung,
    within its bounding box plus the closing's reach. Only coarse pixels holding no lung at all can be
    added by the closing, so the subsampling never puts a blocky rim around the lung. Holes of more than
    ``max_open_hole`` pixels that are open to the outside in 3D stay open (module docstring, step 5)."""
    pad = (radius + 1) * f
    box = padded_box(part, pad, pad)
    sub = part[box]
    closed = sub
    if radius > 0:
        pooled = pool_any(sub, f)
        p = radius + 1  # pad so that the closing is not clipped at the box (or image) edge
        padded = np.pad(pooled, ((0, 0), (p, p), (p, p)))
        added = ndimage.binary_closing(padded, structure=disk(radius))[:, p:-p, p:-p] & ~pooled
        closed = sub | (upsample(added, f, sub.shape) & body[box] & (hu[box] <= BONE_HU))
    out = np.zeros_like(part)
    out[box] = closed | _fillable_holes(closed, max_open_hole)
    return out


def _fillable_holes(mask: np.ndarray, max_open_hole: float) -> np.ndarray:
    """The slice-wise holes of ``mask`` less those of more than ``max_open_hole`` pixels whose voxels connect
    in 3D (through voxels not in ``mask``) to the faces of the array: a liver dome or hilar vessel cut by
    the slice, not lung. Vessels inside the lung are smaller than that, so the costly 3D labelling runs only
    when a large hole is found."""
    holes = fill_holes_slicewise(mask) & ~mask
    labels, n = ndimage.label(holes, structure=IN_PLANE)
    if n == 0:
        return holes
    large = np.bincount(labels.ravel(), minlength=n + 1) > max_open_hole
    large[0] = False
    if not large.any():
        return holes
    outside, m = ndimage.label(~mask)
    faces = [outside[0], outside[-1], outside[:, 0], outside[:, -1], outside[:, :, 0], outside[:, :, -1]]
    is_open = np.zeros(m + 1, dtype=bool)
    is_open[np.unique(np.concatenate([face.ravel() for face in faces]))] = True
    is_open[0] = False
    dropped = np.zeros(n + 1, dtype=bool)
    dropped[np.unique(labels[large[labels] & is_open[outside]])] = True
    dropped[0] = False
    return holes & ~dropped[labels]

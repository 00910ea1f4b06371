"""The body mask: the patient, without the scanner table and the air around (step 1 of the lung mask).

Voxels above ``-500`` HU (soft tissue, fat and bone are above -200; lung parenchyma and air are below
-700), holes filled slice by slice (which puts lungs and airways inside the body), opened slice-wise with a
4 mm disk so that the scanner table and thin blanket or tube strands come loose, and the largest 3D
connected component kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .morphology import disk, fill_holes_slicewise, labelled_components, morph_factor, upsample

BONE_HU = 200.0  # above this inside the body: bone (the lung steps never take it in)
BODY_HU = -500.0


def body_mask(hu: np.ndarray, *, spacing_mm: tuple[float, float, float] | None = None,
              threshold: float = BODY_HU, open_mm: float = 4.0) -> np.ndarray:
    """Bool mask (z, y, x) of the patient's body: lungs and airways inside it; outside air and table out.

    Holes are filled slice-wise first (so that a thin chest wall around the lungs is not thin any more),
    then a slice-wise opening with a disk of ``open_mm`` (2 voxels when ``spacing_mm`` is not given)
    detaches the scanner table, the largest 3D component is kept, and the rim the opening shaved off is
    given back where the tissue was.
    """
    hu = np.asarray(hu)
    dense = fill_holes_slicewise(hu > threshold)
    if not dense.any():
        return dense
    f = morph_factor(spacing_mm)
    coarse = dense[:, ::f, ::f]
    radius = 2 if spacing_mm is None else int(round(open_mm / max(f * min(spacing_mm[1:]), 1e-6)))
    opened = ndimage.binary_opening(coarse, structure=disk(radius)) if radius > 0 else coarse
    if not opened.any():
        opened = coarse
    labels, sizes = labelled_components(opened)
    body = labels == int(np.argmax(sizes))
    grow = radius + (1 if f > 1 else 0)  # one more coarse pixel covers the subsampling's offset
    if grow > 0:
        body = ndimage.binary_dilation(body, structure=disk(grow))
    return fill_holes_slicewise(upsample(body, f, dense.shape) & dense)

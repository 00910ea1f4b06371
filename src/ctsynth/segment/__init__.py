"""Masks from HU: body, lungs (left and right), pulmonary vessels and lesions. Threshold and shape
methods, cheap and dependency-free; good enough to crop to the lungs and to measure a chest, not a clinical
segmentation. One module per mask, shared morphology in :mod:`.morphology`; prepare crops with
:func:`lung_mask`, the evaluation measures with all of them.
"""

from .body import body_mask
from .lesions import lesion_masks
from .lungs import lung_mask, split_lungs
from .vessels import vessel_voxels

__all__ = ["body_mask", "lung_mask", "split_lungs", "lesion_masks", "vessel_voxels"]

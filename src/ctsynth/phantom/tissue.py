"""Tissue classes of the phantom and the Hounsfield-unit ranges each case draws its values from.

The ranges and their sources are tabulated in docs/phantom.md. Each case draws one value per tissue
uniformly from the range (scanner calibration, hydration and inspiration differ between patients), so a
cohort covers the range instead of repeating one number.
"""

from __future__ import annotations

import numpy as np

# Tissue codes of PhantomCase.tissue_labels (uint8). The names are the keys of PhantomCase.tissue_masks.
TISSUES: dict[str, int] = {
    "air": 0,             # outside the body, stomach gas
    "fat": 1,             # subcutaneous, mediastinal, pericardial
    "muscle": 2,          # skin, chest-wall and back muscles, diaphragm, oesophagus, airway walls
    "lung": 3,            # lung parenchyma (lesions keep this code; see PhantomCase.lesion_mask)
    "blood": 4,           # heart, aorta, great vessels, central pulmonary vessels (non-contrast)
    "lung_vessel": 5,     # intrapulmonary vessels (voxels at least half filled)
    "airway": 6,          # air in the trachea and bronchi
    "cortical_bone": 7,   # rib, sternal and vertebral cortex, posterior vertebral elements
    "trabecular_bone": 8, # vertebral body, rib and sternal marrow space
    "liver": 9,           # upper abdomen below the diaphragm (liver, spleen, stomach wall)
    "cartilage": 10,      # costal cartilage
    "disc": 11,           # intervertebral discs
    "csf": 12,            # spinal canal
    "gland": 13,          # fibroglandular breast tissue
}

# (low, high) HU per tissue; each case draws a value uniformly in the range.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "fat": (-110.0, -85.0),
    "muscle": (40.0, 55.0),
    "lung": (-890.0, -830.0),
    "blood": (38.0, 52.0),
    "lung_vessel": (38.0, 52.0),
    "airway": (-1000.0, -990.0),
    "cortical_bone": (900.0, 1300.0),
    "trabecular_bone": (160.0, 280.0),
    "liver": (50.0, 65.0),
    "cartilage": (90.0, 160.0),
    "disc": (70.0, 100.0),
    "csf": (5.0, 20.0),
    "gland": (10.0, 40.0),
}

# COVID-19 lesion ranges (docs/phantom.md): ground glass and consolidation.
GGO_HU = (-680.0, -350.0)
CONSOLIDATION_HU = (-80.0, 40.0)


def sample_tissue_hu(rng: np.random.Generator) -> dict[str, float]:
    """One HU value per tissue for one case, drawn from HU_RANGES in a fixed order."""
    values = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in HU_RANGES.items()}
    values["lung_vessel"] = values["blood"]
    return values

"""Scanner effects: partial-volume blur (the system's point-spread function) and image noise.

The blur is a Gaussian whose width is given in mm and converted to pixels with the case's spacing, so a
small test matrix is not smeared more than a 512 one. Noise is Gaussian with a per-case standard
deviation (10-25 HU, typical of routine-dose chest CT) and part of its power in-plane correlated over
about a millimetre, like the grain of filtered back-projection images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .geometry import Grid

HU_FLOOR = -1024.0   # what scanners store for air below the calibration range
HU_CEIL = 3071.0


def apply_scanner(hu: np.ndarray, grid: Grid, scanner: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Blurred, noisy copy of ``hu`` (float32), clipped to the scanner's stored range."""
    sigma_px = scanner["blur_mm"] / grid.pixel_mm
    out = ndimage.gaussian_filter(hu, (scanner["blur_z_slices"], sigma_px, sigma_px), mode="nearest", truncate=3.0)
    # Noise = white part + in-plane smoothed copy of the same draw (one draw: a linear filter of white
    # noise), scaled so its standard deviation is the case's sigma.
    c = scanner["noise_correlated"]
    corr_px = scanner["noise_corr_mm"] / grid.pixel_mm
    white = rng.standard_normal(hu.shape, dtype=np.float32)
    grain = ndimage.gaussian_filter(white, (0.0, corr_px, corr_px), mode="wrap", truncate=3.0)
    grain_gain = np.float32(np.sqrt(c) / max(float(grain[:, ::4, ::4].std()), 1e-6))
    white *= np.float32(np.sqrt(1.0 - c))
    white += grain_gain * grain
    del grain
    white *= np.float32(scanner["noise_sigma"] / max(float(white[:, ::4, ::4].std()), 1e-6))
    out += white
    np.clip(out, HU_FLOOR, HU_CEIL, out=out)
    return out

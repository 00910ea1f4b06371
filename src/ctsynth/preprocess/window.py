"""The model boundary: HU <-> [-1, 1] with the config's HU window.

The window is saved with every cache and checkpoint, so a generated volume always comes back in HU.
"""

from __future__ import annotations

import numpy as np


def clip_fraction(hu: np.ndarray, window: tuple[float, float]) -> float:
    """Fraction of voxels outside the window (metal, contrast, padding): logged, then clipped."""
    lo, hi = window
    return float(np.mean((hu < lo) | (hu > hi)))


def normalise(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to ``window`` and map it linearly to [-1, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    x = (np.asarray(hu, dtype=np.float32) - lo) * (2.0 / (hi - lo)) - 1.0
    return np.clip(x, -1.0, 1.0, out=x)


def denormalise(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map [-1, 1] back to HU (float32); values outside [-1, 1] are clipped first."""
    lo, hi = float(window[0]), float(window[1])
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    return (x + 1.0) * ((hi - lo) / 2.0) + lo

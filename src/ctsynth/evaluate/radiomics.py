"""Weight-free, radiomics-style features of one volume: HU statistics and texture inside body and lungs.

No network and no weights: these features mean the same on every machine, so they are the reference
feature space that a trained encoder is checked against. pyradiomics is not used (not installable
reliably here); the features below follow its first-order and GLCM definitions in spirit:

- first order, inside the body and inside the lungs: mean, std, 5/25/50/75/95th percentiles, skewness,
  excess kurtosis of HU;
- gradient magnitude (HU per mm, central differences) mean and std inside body and lungs;
- a grey-level co-occurrence matrix of the lungs (16 levels over -1000..+200 HU, offsets of one voxel
  along z, y and x, symmetric, averaged): contrast, homogeneity, energy, entropy, correlation.
"""

from __future__ import annotations

import numpy as np

FIRST_ORDER = ("mean", "std", "p05", "p25", "p50", "p75", "p95", "skewness", "kurtosis")
GLCM = ("contrast", "homogeneity", "energy", "entropy", "correlation")
GLCM_LEVELS = 16
GLCM_RANGE = (-1000.0, 200.0)

FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"body_{n}" for n in FIRST_ORDER)
    + tuple(f"lung_{n}" for n in FIRST_ORDER)
    + ("body_gradient_mean", "body_gradient_std", "lung_gradient_mean", "lung_gradient_std")
    + tuple(f"lung_glcm_{n}" for n in GLCM)
)


def first_order(values: np.ndarray) -> list[float]:
    """Mean, std, percentiles, skewness and excess kurtosis of a 1D sample (zeros when it is empty)."""
    if values.size == 0:
        return [0.0] * len(FIRST_ORDER)
    v = values.astype(np.float64)
    mean = v.mean()
    std = v.std()
    pct = np.percentile(v, [5, 25, 50, 75, 95])
    if std > 0:
        z = (v - mean) / std
        skew = float(np.mean(z ** 3))
        kurt = float(np.mean(z ** 4) - 3.0)
    else:
        skew = kurt = 0.0
    return [float(mean), float(std), *map(float, pct), skew, kurt]


def gradient_magnitude(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """|grad HU| in HU/mm (float32), central differences with the voxel spacing."""
    gz, gy, gx = np.gradient(hu.astype(np.float32), *spacing_mm)
    return np.sqrt(gz * gz + gy * gy + gx * gx)


def glcm_features(hu: np.ndarray, mask: np.ndarray) -> list[float]:
    """Co-occurrence texture of HU inside ``mask`` (pairs one voxel apart along each axis, both inside)."""
    lo, hi = GLCM_RANGE
    levels = np.clip(((hu - lo) * (GLCM_LEVELS / (hi - lo))).astype(np.int64), 0, GLCM_LEVELS - 1)
    counts = np.zeros(GLCM_LEVELS * GLCM_LEVELS, dtype=np.float64)
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis] = slice(0, -1)
        b[axis] = slice(1, None)
        both = mask[tuple(a)] & mask[tuple(b)]
        i = levels[tuple(a)][both]
        j = levels[tuple(b)][both]
        counts += np.bincount(i * GLCM_LEVELS + j, minlength=GLCM_LEVELS ** 2)
        counts += np.bincount(j * GLCM_LEVELS + i, minlength=GLCM_LEVELS ** 2)
    total = counts.sum()
    if total == 0:
        return [0.0] * len(GLCM)
    p = (counts / total).reshape(GLCM_LEVELS, GLCM_LEVELS)
    i, j = np.indices(p.shape)
    contrast = float(np.sum(p * (i - j) ** 2))
    homogeneity = float(np.sum(p / (1.0 + np.abs(i - j))))
    energy = float(np.sum(p * p))
    nz = p[p > 0]
    entropy = float(-np.sum(nz * np.log2(nz)))
    mu = float(np.sum(i * p))
    var = float(np.sum(p * (i - mu) ** 2))
    correlation = float(np.sum(p * (i - mu) * (j - mu)) / var) if var > 0 else 1.0
    return [contrast, homogeneity, energy, entropy, correlation]


def radiomics_features(hu: np.ndarray, spacing_mm: tuple[float, float, float], body: np.ndarray,
                       lung: np.ndarray) -> np.ndarray:
    """The feature vector named by :data:`FEATURE_NAMES` (float64)."""
    grad = gradient_magnitude(hu, spacing_mm)
    values = first_order(hu[body]) + first_order(hu[lung])
    for mask in (body, lung):
        g = grad[mask]
        values += [float(g.mean()), float(g.std())] if g.size else [0.0, 0.0]
    values += glcm_features(hu, lung)
    return np.asarray(values, dtype=np.float64)

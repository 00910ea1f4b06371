"""Fidelity in a feature space: Frechet distance (MONAI ``FIDMetric``), kernel MMD, precision / recall /
density / coverage (the ``prdc`` package).

Features are standardised with the real training set's mean and standard deviation first (radiomics
features mix HU, HU/mm and unitless texture numbers). MMD is the biased (V-statistic, never negative) squared MMD with a Gaussian
kernel whose bandwidth is the median pairwise distance within the reference set (the "median
heuristic"); MONAI's ``MMDMetric`` compares images voxel by voxel, not feature distributions, so it is not
the right tool here.

Both the Frechet distance and MMD are biased by sample size, so a comparison is only fair between sets of
equal size: :func:`matched_scores` draws equal-sized subsets (seeded) of the candidate set, and the
real-vs-real baseline uses the same size (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable

import numpy as np


def standardiser(reference: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return lambda x: (np.asarray(x, dtype=np.float64) - mean) / std


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature matrices (rows = samples)."""
    import torch
    from monai.metrics import FIDMetric

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # MONAI prints, and scipy warns, when the covariance product is singular (fewer samples than
        # features); the distance is still defined and is what is reported.
        warnings.simplefilter("ignore")
        value = FIDMetric()(torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64)))
    return max(float(value), 0.0)


def frechet_terms(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The Frechet distance's two terms: the squared distance of the means, and the covariance term
    ``tr(Ca + Cb - 2 (Ca Cb)^1/2)``. Their sum is :func:`frechet_distance`; the split says whether a set
    sits in the wrong place or has the wrong spread (benchmarks/screen_radiomics.py)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # singular with fewer samples than features, as in frechet_distance
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(ca @ cb)
    return mean, float(np.trace(ca + cb - 2.0 * np.real(root)))


def median_bandwidth(reference: np.ndarray) -> float:
    d = np.sqrt(np.maximum(_sq_dists(reference, reference), 0.0))
    off = d[~np.eye(len(d), dtype=bool)]
    med = float(np.median(off)) if off.size else 1.0
    return med if med > 0 else 1.0


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T


def mmd_rbf(a: np.ndarray, b: np.ndarray, bandwidth: float) -> float:
    """Squared MMD (biased V-statistic, so never negative) with a Gaussian kernel exp(-|x-y|^2 / (2 bw^2))."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("MMD needs at least two samples per set")
    gamma = 1.0 / (2.0 * bandwidth ** 2)
    kaa = np.exp(-gamma * np.maximum(_sq_dists(a, a), 0.0)).mean()
    kbb = np.exp(-gamma * np.maximum(_sq_dists(b, b), 0.0)).mean()
    kab = np.exp(-gamma * np.maximum(_sq_dists(a, b), 0.0)).mean()
    return max(float(kaa + kbb - 2.0 * kab), 0.0)


def prdc_scores(reference: np.ndarray, candidate: np.ndarray, nearest_k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage (Naeem et al. 2020) of ``candidate`` against ``reference``."""
    from prdc import compute_prdc

    k = min(nearest_k, len(reference) - 2, len(candidate) - 2)  # prdc needs k + 1 < set size
    if k < 1:
        return {name: float("nan") for name in ("precision", "recall", "density", "coverage")}
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the sample counts
        scores = compute_prdc(real_features=np.asarray(reference, np.float32),
                              fake_features=np.asarray(candidate, np.float32), nearest_k=k)
    return {name: float(value) for name, value in scores.items()}


def set_scores(reference: np.ndarray, candidate: np.ndarray, bandwidth: float) -> dict[str, float]:
    out = {"frechet_distance": frechet_distance(candidate, reference),
           "mmd": mmd_rbf(candidate, reference, bandwidth)}
    out.update(prdc_scores(reference, candidate))
    return out


def matched_scores(reference: np.ndarray, candidate: np.ndarray, size: int, *, draws: int = 10,
                   seed: int = 0, bandwidth: float | None = None) -> dict[str, float]:
    """Scores of ``candidate`` vs ``reference`` averaged over seeded subsets of ``size`` candidate rows.

    When the candidate has exactly ``size`` rows this is one evaluation on all of them.
    """
    if bandwidth is None:
        bandwidth = median_bandwidth(reference)
    rng = np.random.default_rng(seed)
    size = min(size, len(candidate))
    n_draws = 1 if size == len(candidate) else draws
    rows = [set_scores(reference, candidate[rng.choice(len(candidate), size, replace=False)]
                       if n_draws > 1 else candidate, bandwidth) for _ in range(n_draws)]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}

"""Diversity: mean pairwise MS-SSIM (MONAI ``MultiScaleSSIMMetric``, 3D) within a set of thumbnails.

A set of near-copies (mode collapse) has a mean pairwise MS-SSIM near 1; real patients differ, so the real
set's own mean pairwise MS-SSIM is the reference. Thumbnails (at most 16x48x64) are mapped from HU to [0, 1]
with the window -1024..600 HU (data range 1). Three scales with a 3-voxel Gaussian window are used: MONAI
requires each side // 4 > kernel - 1 for three scales, which a 16-slice thumbnail meets (five scales would
need 16 * 4 slices). The scale weights are the first three of Wang et al.'s five, renormalised.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..preprocess.window import normalise
from .encoder import ENCODER_WINDOW

MS_SSIM_WEIGHTS = tuple(w / (0.0448 + 0.2856 + 0.3001) for w in (0.0448, 0.2856, 0.3001))
KERNEL_SIZE = 3


def pairs_to_score(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """All pairs when there are at most ``max_pairs``, else a seeded random sample of distinct pairs."""
    all_pairs = list(itertools.combinations(range(n), 2))
    if len(all_pairs) <= max_pairs:
        return all_pairs
    rng = np.random.default_rng(seed)
    return [all_pairs[i] for i in sorted(rng.choice(len(all_pairs), max_pairs, replace=False))]


def mean_pairwise_ms_ssim(thumbs: np.ndarray, *, max_pairs: int = 300, seed: int = 0,
                          batch: int = 32) -> float:
    """Mean MS-SSIM over pairs of volumes in ``thumbs`` (N, z, y, x) HU; needs N >= 2."""
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    if len(thumbs) < 2:
        raise ValueError("diversity needs at least two volumes")
    x = torch.from_numpy((normalise(thumbs, ENCODER_WINDOW) + 1.0) / 2.0)[:, None]
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=KERNEL_SIZE,
                                  weights=MS_SSIM_WEIGHTS)
    pairs = pairs_to_score(len(thumbs), max_pairs, seed)
    values = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            a = x[[i for i, _ in chunk]]
            b = x[[j for _, j in chunk]]
            values.append(metric(a, b).reshape(-1).numpy())
    return float(np.mean(np.concatenate(values)))

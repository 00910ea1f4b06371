"""The voxel spacing of a generated volume: drawn per sample from the training crops' spacings, and a condition
of the cascade's base model (``diffusion.spacing_condition``).

Why: ``ctsynth prepare`` resamples each study's lung box (or field of view) to one shape, so the crops share a
grid but not a spacing: in the benchmark's cohort the in-plane spacing runs from 1.6 to 2.2 mm and the slice
spacing from 6.7 to 8.9 mm. The physical size of a chest lives in that spacing, and so does every feature per
mm: the spacing alone explains 62% of the variance of the body's mean gradient across the real crops (HU per
mm; r = -0.79). A generator that writes every volume at the median spacing makes chests of one size, and
gradients that spread half as widely as the real ones; with their spacings set to the median, the real
training crops themselves sit 1.5 to 2 further from the held-out crops in radiomics Frechet distance
(docs/quality.md). So each sample draws a spacing, and the base model is told it (its anatomy in voxels, such
as the chest wall's thickness, then matches it).

The draw: per class, a Gaussian on the log spacings (mean and covariance of the training crops', so axes that
always agree, like y and x, stay equal), clamped to the training range. Only these moments are kept, as
buffers of the weights, not any crop's spacing. The condition: the log spacing standardised with the whole
training set's mean and standard deviation, one constant input channel per axis.

The limit: on very few crops the spacing nearly names a crop, and the base model can follow the one it names
(the demo's 12 crops: 1 of 8 samples flagged as a near-copy with it, none without; 160 crops: none flagged).
"""

from __future__ import annotations

import torch

AXES = 3


class SpacingPrior(torch.nn.Module):
    """Per-class moments of the training crops' log spacings ``(z, y, x)`` in mm (buffers); unfitted, every draw
    is 1 mm and every condition 0."""

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_labels, AXES, dtype=torch.float64))
        self.register_buffer("root", torch.zeros(n_labels, AXES, AXES, dtype=torch.float64))  # covariance = R R^T
        self.register_buffer("low", torch.zeros(AXES, dtype=torch.float64))
        self.register_buffer("high", torch.zeros(AXES, dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(AXES, dtype=torch.float64))  # the condition's standardisation
        self.register_buffer("scale", torch.ones(AXES, dtype=torch.float64))

    @torch.no_grad()
    def fit(self, spacing_mm: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit on the training crops' spacings ``(n, 3)`` (mm, positive) and their class indices ``(n,)``; a class
        without crops takes the whole set's moments."""
        log = torch.as_tensor(spacing_mm, dtype=torch.float64).log()
        labels = torch.as_tensor(labels)
        self.low.copy_(log.min(0).values)
        self.high.copy_(log.max(0).values)
        self.shift.copy_(log.mean(0))
        sd = log.std(0, unbiased=False)
        self.scale.copy_(torch.where(sd > 1e-9, 1.0 / sd, torch.ones_like(sd)))
        for c in range(self.mean.shape[0]):
            part = log[labels == c] if bool((labels == c).any()) else log
            centred = part - part.mean(0)
            cov = centred.T @ centred / max(1, part.shape[0])
            values, vectors = torch.linalg.eigh(cov)  # a square root that a singular covariance (y = x) allows
            values = torch.where(values > 1e-9 * values.max().clamp(min=1e-30), values, torch.zeros_like(values))
            self.mean[c] = part.mean(0)
            self.root[c] = vectors * values.sqrt()

    def draw(self, generators: list[torch.Generator], labels: torch.Tensor) -> torch.Tensor:
        """``(b, 3)`` spacings in mm, sample ``i``'s from ``generators[i]`` (three normal numbers, drawn first)."""
        eps = torch.stack([torch.randn(AXES, generator=g, dtype=torch.float64) for g in generators])
        cls = labels.long().cpu()
        log = self.mean[cls].cpu() + torch.einsum("bij,bj->bi", self.root[cls].cpu(), eps)
        return log.clamp(self.low.cpu(), self.high.cpu()).exp()

    def condition(self, spacing_mm: torch.Tensor) -> torch.Tensor:
        """``(b, 3)`` spacings in mm -> their standardised logs ``(b, 3)`` (float32): the base model's input."""
        log = torch.as_tensor(spacing_mm, dtype=torch.float64).log()
        return ((log - self.shift.to(log.device)) * self.scale.to(log.device)).float()

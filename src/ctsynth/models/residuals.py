"""What the regression details leave out, drawn back in: a bank of the detail model's residuals on the training
volumes, binned by what the model knows at a block, from which sampling draws one residual per block
(``diffusion.detail_residuals``; a conditional residual bootstrap).

Why: a detail model trained by regression predicts each 2 x 2 x 2 block's conditional mean. Where the band
below does not decide the detail, such as a thin vessel's place inside its block, the mean smears it. The
finest level's prediction carries about 60% of the bands' energy (rms 0.77 against 0.99 in standardised
units on the benchmark's crops; the residual's rms is 0.70). The result is lungs without their voxel-scale
texture: GLCM contrast and gradients 2-3 sd below the training crops' (docs/quality.md). Noise of the right
variance was tried and is wrong in kind. Gaussian noise, per voxel or with the residual's power spectrum,
roughens everything, while real residuals are sparse: most blocks need almost nothing and a few need a vessel's
edge. The bank keeps the residuals as they were, seven bands of one block together, so a draw has the
shape and the sparsity of a real block's missing detail. Blocks are drawn independently: a vessel's
continuity from one block to the next is not modelled. A sampled detail model would model it, but at CPU
budgets every one tried was noise.

The condition of a draw is two numbers per block, binned at the training blocks' quantiles: the band's own
value (tissue: air, lung, soft tissue, bone), and the log energy of the model's prediction (a flat region, or
an edge). A draw comes from the same bin. The bank is fitted after training on the EMA model and the training
volumes. It keeps at most ``per_bin`` residual blocks a bin, chosen at random (seeded), without their
positions or their patient, as buffers of the weights.
"""

from __future__ import annotations

import torch

from .calibration import strided_values

VALUE_BINS = 16  # the band's value: quantile bins (tissue)
ENERGY_BINS = 4  # the predicted bands' log mean square: quantile bins (flat .. edge)
PER_BIN = 2048  # residual blocks kept per bin (7 floats each: 3.7 MB a level)
QUANTILE_VALUES = 4_000_000  # values (evenly strided) behind the edges: torch.quantile refuses very many
_TINY = 1e-8


def block_energy(mean: torch.Tensor) -> torch.Tensor:
    """``(b, c, *grid) -> (b, *grid)``: the log mean square of the predicted bands of each block."""
    return mean.float().pow(2).mean(dim=1).add(_TINY).log()


class ResidualBank(torch.nn.Module):
    """Residual blocks ``(bins, per_bin, channels)`` with their bins' edges (buffers: saved with the weights).
    Unfitted, :meth:`draw` gives zeros."""

    def __init__(self, channels: int, per_bin: int = PER_BIN) -> None:
        super().__init__()
        bins = VALUE_BINS * ENERGY_BINS
        self.register_buffer("value_edges", torch.zeros(VALUE_BINS - 1))
        self.register_buffer("energy_edges", torch.zeros(ENERGY_BINS - 1))
        self.register_buffer("residuals", torch.zeros(bins, per_bin, channels))
        self.register_buffer("counts", torch.zeros(bins, dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def bins(self, cond: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Each block's bin ``(b, *grid)`` from the band ``cond`` ``(b, 1, *grid)`` and the prediction ``mean``
        ``(b, channels, *grid)``; blocks listed flat (``(n, 1)`` and ``(n, channels)``) give ``(n,)``."""
        v = torch.bucketize(cond[:, 0].float().contiguous(), self.value_edges.float())
        e = torch.bucketize(block_energy(mean).contiguous(), self.energy_edges.float())
        return v * ENERGY_BINS + e

    @torch.no_grad()
    def fit(self, cond: torch.Tensor, mean: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> None:
        """Fit on training blocks: their band ``cond`` ``(n, 1, *grid)``, the model's prediction ``mean`` and the
        true bands ``target`` (``(n, channels, *grid)`` both; or flat, ``(blocks, 1)`` and ``(blocks, channels)``).
        Edges at the quantiles of the blocks' values and energies; then at most ``per_bin`` residuals
        ``target - mean`` of each bin, a random choice."""
        per_bin, channels = self.residuals.shape[1:]
        cond, mean, target = (t.to(self.residuals.device) for t in (cond, mean, target))
        levels = lambda k: torch.linspace(0, 1, k + 1)[1:-1]
        for edges, values, k in ((self.value_edges, cond[:, 0], VALUE_BINS),
                                 (self.energy_edges, block_energy(mean), ENERGY_BINS)):
            edges.copy_(torch.quantile(strided_values(values, QUANTILE_VALUES), levels(k)))
        b = self.bins(cond, mean).reshape(-1)
        res = (target - mean).float().movedim(1, -1).reshape(-1, channels)
        order = torch.randperm(b.numel(), generator=generator).to(b.device)  # a random choice in each bin ...
        order = order[torch.argsort(b[order], stable=True)]      # ... grouped by bin
        counts = torch.bincount(b, minlength=self.counts.numel())
        starts = torch.cumsum(counts, 0) - counts
        self.residuals.zero_()
        for k in range(self.counts.numel()):
            n = min(int(counts[k]), per_bin)
            self.residuals[k, :n] = res[order[starts[k]:starts[k] + n]]
        self.counts.copy_(counts.clamp(max=per_bin))
        self.fitted.fill_(True)

    def draw(self, cond: torch.Tensor, mean: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """One residual per block, ``mean``'s shape, drawn from the block's bin; sample ``i`` draws its uniforms
        from ``generators[i]`` (CPU), so it does not depend on its batch. A bin without residuals gives zeros."""
        if not bool(self.fitted):
            return torch.zeros_like(mean)
        b = self.bins(cond, mean)
        u = torch.stack([torch.rand(b.shape[1:], generator=g) for g in generators]).to(b.device)
        n = self.counts[b]
        pick = (u * n).long().clamp(max=(n - 1).clamp(min=0))
        out = self.residuals[b, pick] * (n > 0).unsqueeze(-1)
        return out.movedim(-1, 1).to(mean.dtype)


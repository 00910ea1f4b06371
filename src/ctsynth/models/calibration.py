"""A fixed intensity transfer curve fitted after training: the model's pooled intensity quantiles mapped onto
the training set's (``diffusion.calibration_samples``; quantile mapping, as model output statistics correct a
forecast model's bias).

Why: a detail model that predicts a conditional mean (or median) smooths what the band below does not decide.
Smoothing keeps the block means but not the histogram: thin bright vessels smeared into the dark parenchyma
raise its median (+25 HU of the +32 HU the lungs of the benchmark run before it were off), soft tissue and bone
blur into each other (docs/quality.md). One monotone curve, the same for every volume and class, puts each
intensity quantile of the model's output back where the training set has it. It moves no edge and adds no
texture; it changes only which value a voxel of a given rank takes, so a volume's anatomy, its class and its
differences from other volumes stay the model's. It is fitted on the model's own samples (fixed seeds) against
the training volumes only, never against held-out or evaluation data, and saved with the weights.
"""

from __future__ import annotations

import torch

# 0.1% steps: millions of voxels pin each one down, and 1% steps were too coarse where the histogram has a gap
# (outside air below -980 HU, lungs above -920: knots at 3% and 4% straddled it, and the samples' border voxels
# were spread across it, darkening the lungs' tail; docs/quality.md)
QUANTILES = 1001
MAX_VALUES = 8_000_000  # values drawn (evenly strided) from each side for its quantiles


def strided_values(x: torch.Tensor, limit: int = MAX_VALUES) -> torch.Tensor:
    """At most ``limit`` of ``x``'s values, every ``k``-th of the flattened tensor (deterministic), float32."""
    flat = x.detach().reshape(-1)
    step = max(1, -(-flat.numel() // limit))
    return flat[::step].float().cpu()


def quantiles(values: torch.Tensor, n: int = QUANTILES) -> torch.Tensor:
    """The ``n`` quantiles at ``0, 1/(n-1), .., 1`` of ``values`` (linear interpolation, as numpy's default)."""
    v = values.sort().values
    pos = torch.linspace(0, 1, n, dtype=torch.float64) * (v.numel() - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    w = (pos - lo).float()
    return v[lo] * (1 - w) + v[hi] * w


class QuantileMap(torch.nn.Module):
    """A monotone piecewise-linear map ``source quantiles -> target quantiles`` (buffers: saved with the model's
    weights). Unfitted, it is the identity; values beyond the ends map to the ends' targets, like
    ``numpy.interp``."""

    def __init__(self, n: int = QUANTILES) -> None:
        super().__init__()
        self.register_buffer("source", torch.linspace(-1, 1, n))
        self.register_buffer("target", torch.linspace(-1, 1, n))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, made: torch.Tensor, reference: torch.Tensor, made_mask: torch.Tensor | None = None,
            reference_mask: torch.Tensor | None = None) -> None:
        """Fit on the model's output ``made`` and the training data ``reference`` (any shapes, same units), or on
        their voxels inside ``made_mask`` and ``reference_mask`` (bool, their shapes) where given."""
        n = self.source.numel()
        self.source.copy_(quantiles(strided_values(made if made_mask is None else made[made_mask]), n))
        self.target.copy_(quantiles(strided_values(reference if reference_mask is None else reference[reference_mask]),
                                    n))
        self.fitted.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # weights saved before the calibration existed load unfitted (the identity), not as an error
        for name, buffer in QuantileMap(self.source.numel())._buffers.items():
            state_dict.setdefault(prefix + name, buffer)
        # a curve saved with another number of knots (101 before 2026-12-05) loads as it was fitted
        for name in ("source", "target"):
            saved = state_dict[prefix + name]
            if saved.shape != self._buffers[name].shape:
                self._buffers[name] = torch.empty_like(saved, device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            return x
        src, dst = self.source.to(x), self.target.to(x)
        flat = x.reshape(-1).contiguous()
        i = torch.searchsorted(src, flat).clamp(1, src.numel() - 1)  # src[i - 1] < value <= src[i] inside
        x0, x1, y0, y1 = src[i - 1], src[i], dst[i - 1], dst[i]
        w = ((flat - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
        return (y0 + w * (y1 - y0)).reshape(x.shape)

"""The 3D Haar wavelet transform as a fixed, lossless "autoencoder" (WDM, Friedrich et al. 2024).

One level splits every 2x2x2 block of voxels into 8 coefficients (one low-pass, seven detail bands) with the
orthonormal Haar matrix, so the volume becomes 8 channels at half the size per axis, and the inverse gives
the volume back to float rounding. ``levels`` applies it again to every channel (a full wavelet packet):
two levels give 64 channels at a quarter of the size, the same grid as a 4x-downsampling autoencoder.

Why it replaces the KL autoencoder on small data: the diffusion model works on the same small grid, but the
representation loses nothing (no reconstruction blur, no training stage to pay for), which is what capped
the sharpness of the samples (held-out PSNR 24 dB, see docs/quality.md). The coefficients are standardised
per channel before diffusion (``ctsynth.train.diffusion``), so the detail bands, mostly noise and edges,
are as loud as the low-pass band for the model.

It has the interface of MONAI's ``AutoencoderKL`` that ctsynth uses: ``encode(x) -> (mean, sigma)`` and
``decode(z)``; it has no parameters, so there is nothing to train or to load.
"""

from __future__ import annotations

import torch


def _haar_matrix() -> torch.Tensor:
    """(8, 8) orthonormal 3D Haar matrix: row k is the filter of band k over the flattened 2x2x2 block."""
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / 2.0 ** 0.5
    return torch.kron(torch.kron(h, h), h)


class HaarTransform(torch.nn.Module):
    """``levels`` of the 3D Haar packet transform: ``(b, c, z, y, x) -> (b, c * 8**levels, z/f, y/f, x/f)``,
    ``f = 2**levels``; every axis must be a multiple of ``f`` (``ctsynth.models.autoencoder.encode_volume``
    pads)."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.levels = levels
        self.register_buffer("matrix", _haar_matrix().float(), persistent=False)

    def _forward_level(self, x: torch.Tensor) -> torch.Tensor:
        b, c, z, y, w = x.shape
        blocks = x.reshape(b, c, z // 2, 2, y // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
        blocks = blocks.reshape(b, c, 8, z // 2, y // 2, w // 2)
        out = torch.einsum("kj,bcjzyx->bckzyx", self.matrix.to(x.dtype), blocks)
        return out.reshape(b, c * 8, z // 2, y // 2, w // 2)

    def _inverse_level(self, x: torch.Tensor) -> torch.Tensor:
        b, c8, z, y, w = x.shape
        coeffs = x.reshape(b, c8 // 8, 8, z, y, w)
        blocks = torch.einsum("kj,bckzyx->bcjzyx", self.matrix.to(x.dtype), coeffs)
        blocks = blocks.reshape(b, c8 // 8, 2, 2, 2, z, y, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return blocks.reshape(b, c8 // 8, z * 2, y * 2, w * 2)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(self.levels):
            x = self._forward_level(x)
        return x, torch.zeros_like(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for _ in range(self.levels):
            z = self._inverse_level(z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])

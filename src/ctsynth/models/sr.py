"""3D CT super-resolution (``model: sr``): Georgescu et al. (2020) with 3D convolutions, one network per axis.

Georgescu, Ionescu and Verga, "Convolutional Neural Networks with Intermediate Loss for 3D Super-Resolution
of CT and MRI Scans" (IEEE Access 2020): ten convolutions, the upscaling by a sub-pixel (pixel shuffle) layer
after the sixth, and a loss at that intermediate point as well as at the output; one network upscales
in-plane (y and x), another in depth (z), applied one after the other. Here every convolution is 3D (3^3
kernels, ReLU between them), so each network sees the neighbouring slices too; the in-plane network shuffles
``f x f`` channels into y and x, the depth network ``f`` channels into z.

Both outputs (the intermediate one, a 1^3 convolution read out of the shuffled features, and the final one)
are *residuals over trilinear interpolation* of the input: the network starts (its read-outs initialised to
zero) exactly at trilinear and learns only what trilinear misses. So a half-trained network is no worse
than interpolation, and :func:`ctsynth.upscale.upscale_volume` can add the correction to a trilinear
resampling of the HU volume itself, keeping values outside the model's HU window.

The degradation the networks learn to undo is the scanner's, not plain subsampling (which would make the
task artificially easy and overstate the gain): :func:`thick_slices` averages ``f`` consecutive thin slices
into one thick slice (a slab, as reconstructing thicker slices does), and :func:`blur_downsample` blurs
in-plane with a Gaussian (the scanner's point-spread function, sigma ``f / 4`` fine pixels) and then averages
``f x f`` pixels (the detector cell). Both keep the edge-aligned grid of :mod:`ctsynth.preprocess.resample`:
coarse voxel ``i`` covers fine voxels ``[i f, (i + 1) f)``, which is also ``align_corners=False``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CTSynthError

AXES = ("inplane", "depth")
FACTORS = (1, 2, 4)
N_CONVS = 10
SHUFFLE_AFTER = 6  # the sub-pixel upscaling follows the sixth convolution


def check_factor(axis: str, factor: int) -> None:
    if axis not in AXES:
        raise CTSynthError(f"unknown super-resolution axis '{axis}'", fix=f"use one of {list(AXES)}")
    if factor not in FACTORS:
        raise CTSynthError(f"sr.{axis}_factor must be one of {list(FACTORS)}, got {factor}",
                           fix="use 2 or 4 (1: no network for that axis)")


def scale_of(axis: str, factor: int) -> tuple[int, int, int]:
    """The (z, y, x) scale of a network: ``(1, f, f)`` in-plane, ``(f, 1, 1)`` in depth."""
    return (1, factor, factor) if axis == "inplane" else (factor, 1, 1)


def shuffle(x: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """Sub-pixel upscaling: ``(b, c * sz * sy * sx, z, y, x) -> (b, c, z * sz, y * sy, x * sx)``."""
    b, c, z, y, w = x.shape
    sz, sy, sx = scale
    c_out = c // (sz * sy * sx)
    x = x.reshape(b, c_out, sz, sy, sx, z, y, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c_out, z * sz, y * sy, w * sx)


def trilinear(x: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """Edge-aligned trilinear upscaling (the baseline, and the skip of :class:`SuperResolution3D`)."""
    return F.interpolate(x, scale_factor=scale, mode="trilinear", align_corners=False)


class SuperResolution3D(nn.Module):
    """``x (b, 1, z, y, x) -> (intermediate, output)``, both ``(b, 1, *shape * scale)``, in the input's units.

    Convolutions 1-6 work on the coarse grid (``channels`` each; the sixth makes ``channels * prod(scale)``
    for the shuffle), 7-10 on the fine one (the tenth makes the output residual). ``receptive_radius`` is the
    number of coarse voxels an output voxel depends on in each direction beyond its own (tiling's halo).
    """

    def __init__(self, axis: str, factor: int, channels: int = 32) -> None:
        super().__init__()
        check_factor(axis, factor)
        if channels < 1:
            raise CTSynthError(f"sr.channels must be positive, got {channels}", fix="use e.g. 32 (8 on a CPU)")
        self.axis, self.factor, self.scale = axis, factor, scale_of(axis, factor)
        up = math.prod(self.scale)

        def conv(a: int, b: int) -> nn.Conv3d:
            return nn.Conv3d(a, b, 3, padding=1)

        coarse = [conv(1, channels)] + [conv(channels, channels) for _ in range(SHUFFLE_AFTER - 2)]
        self.coarse = nn.ModuleList(coarse + [conv(channels, channels * up)])
        self.fine = nn.ModuleList([conv(channels, channels) for _ in range(N_CONVS - SHUFFLE_AFTER - 1)]
                                  + [conv(channels, 1)])
        self.intermediate = nn.Conv3d(channels, 1, 1)
        for layer in [*self.coarse, *self.fine[:-1]]:  # He initialisation: ten ReLU layers keep their scale
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        for head in (self.intermediate, self.fine[-1]):  # start at trilinear interpolation exactly
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def receptive_radius(self) -> int:
        # nine 3^3 convolutions (the tenth's neighbours included) reach at most nine coarse voxels along an
        # axis that is not upscaled, the trilinear skip one more; one spare
        return N_CONVS + 1

    def corrections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the network adds to trilinear interpolation: ``(intermediate, output)`` residuals."""
        h = x
        for layer in self.coarse:
            h = F.relu(layer(h))
        h = shuffle(h, self.scale)
        mid = self.intermediate(h)
        for layer in self.fine[:-1]:
            h = F.relu(layer(h))
        return mid, self.fine[-1](h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = trilinear(x, self.scale)
        mid, out = self.corrections(x)
        return base + mid, base + out


def thick_slices(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(b, c, z, y, x) -> (b, c, z // f, y, x)``: each thick slice the mean of ``f`` thin ones (a slab)."""
    return F.avg_pool3d(x, (factor, 1, 1)) if factor > 1 else x


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def blur_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(b, c, z, y, x) -> (b, c, z, y // f, x // f)``: in-plane Gaussian blur (sigma ``f / 4`` fine pixels,
    the border replicated) then the mean of each ``f x f`` cell."""
    if factor == 1:
        return x
    k = gaussian_kernel(factor / 4).to(x)
    r = k.numel() // 2
    b, c = x.shape[:2]
    h = x.reshape(b * c, 1, *x.shape[2:])
    h = F.conv3d(F.pad(h, (0, 0, r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1, 1))
    h = F.conv3d(F.pad(h, (r, r, 0, 0, 0, 0), mode="replicate"), k.view(1, 1, 1, 1, -1))
    return F.avg_pool3d(h, (1, factor, factor)).reshape(b, c, x.shape[2], x.shape[3] // factor, x.shape[4] // factor)


def degrade(x: torch.Tensor, axis: str, factor: int) -> torch.Tensor:
    """What a scanner makes of ``x`` at ``factor`` times coarser sampling along ``axis`` (see the module docstring)."""
    return blur_downsample(x, factor) if axis == "inplane" else thick_slices(x, factor)


def build_sr(config, axis: str) -> SuperResolution3D:
    """The network of ``axis`` for a :class:`ctsynth.config.Config` with ``model: sr``."""
    cfg = config.sr
    return SuperResolution3D(axis, cfg.inplane_factor if axis == "inplane" else cfg.depth_factor, cfg.channels)

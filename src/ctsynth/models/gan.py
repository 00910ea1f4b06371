"""The 3D-GAN of Wu et al. (NeurIPS 2016), the seed report's own system, as a baseline (``model: gan``).

As published: ``z`` of 200 numbers drawn from U[0, 1]; a generator of five transposed convolutions with 4^3
kernels, 512-256-128-64-1 channels and strides 1, 2, 2, 2, 2 (a 64^3 volume from a 1^3 input), BatchNorm and
ReLU after each but the last, a sigmoid at the output; a discriminator that mirrors it (convolutions, strides
2, 2, 2, 2, 1, BatchNorm and LeakyReLU 0.2, one logit out); binary cross-entropy. Training (Adam with beta1
0.5, learning rates 2.5e-3 and 1e-5, batch 100, the discriminator updated only while its accuracy is at most
80%) is :mod:`ctsynth.train.gan`.

What is ours, on top: the sigmoid's [0, 1] is mapped to the model's [-1, 1] HU window (``2 sigmoid - 1``);
the report's target shapes (48 slices, 128 x 128 or 240 x 360) by adapting the first layer, whose kernel is
``ceil(shape / 16)`` per axis (4^3 for 64^3, as published; 3 x 8 x 8 for 48 x 128 x 128) so that the four
stride-2 layers reach 16 x that kernel, cropped to the shape (and real volumes padded to it for the
discriminator); class conditioning (COVID-19 / normal) as the report wanted, by a one-hot label appended to
``z`` and given to the discriminator as constant input channels (a conditional GAN, Mirza and Osindero 2014);
and ``width``, a multiplier of every hidden channel count, so that the network trains on a CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CTSynthError

CHANNELS = (512, 256, 128, 64)  # hidden channels of the generator (the discriminator mirrors them)
UPSAMPLING = 16  # four stride-2 layers


def first_kernel(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The first layer's kernel for an output ``shape`` (z, y, x): 4^3 for 64^3, as in the paper."""
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise CTSynthError(f"the GAN needs a 3D shape, got {tuple(shape)}", fix="set data.shape to [z, y, x]")
    return tuple(math.ceil(n / UPSAMPLING) for n in shape)  # type: ignore[return-value]


def hidden_channels(width: float) -> tuple[int, ...]:
    if not width > 0:
        raise CTSynthError(f"gan.width must be positive, got {width}",
                           fix="use 1 (as published) or e.g. 0.0625 on a CPU")
    return tuple(max(1, round(c * width)) for c in CHANNELS)


class Generator3D(nn.Module):
    """``(z (b, z_dim), labels (b,) or None) -> volume (b, 1, *16 * first_kernel)`` in [-1, 1]."""

    def __init__(self, shape: tuple[int, int, int], z_dim: int = 200, n_labels: int = 0, width: float = 1.0) -> None:
        super().__init__()
        self.z_dim, self.n_labels = z_dim, n_labels
        c = hidden_channels(width)
        layers: list[nn.Module] = [nn.ConvTranspose3d(z_dim + n_labels, c[0], first_kernel(shape), 1, 0, bias=False),
                                   nn.BatchNorm3d(c[0]), nn.ReLU(True)]
        for a, b in zip(c, c[1:]):
            layers += [nn.ConvTranspose3d(a, b, 4, 2, 1, bias=False), nn.BatchNorm3d(b), nn.ReLU(True)]
        layers.append(nn.ConvTranspose3d(c[-1], 1, 4, 2, 1, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_labels:
            z = torch.cat([z, F.one_hot(labels, self.n_labels).to(z.dtype)], dim=1)
        return 2.0 * torch.sigmoid(self.net(z[:, :, None, None, None])) - 1.0


class Discriminator3D(nn.Module):
    """``(volume (b, 1, *16 * first_kernel), labels) -> logit (b,)``: the generator mirrored."""

    def __init__(self, shape: tuple[int, int, int], n_labels: int = 0, width: float = 1.0) -> None:
        super().__init__()
        self.n_labels = n_labels
        c = hidden_channels(width)[::-1]
        layers: list[nn.Module] = []
        for a, b in zip((1 + n_labels,) + c, c):
            layers += [nn.Conv3d(a, b, 4, 2, 1, bias=False), nn.BatchNorm3d(b), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv3d(c[-1], 1, first_kernel(shape), 1, 0, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_labels:
            maps = F.one_hot(labels, self.n_labels).to(x.dtype)[:, :, None, None, None]
            x = torch.cat([x, maps.expand(-1, -1, *x.shape[2:])], dim=1)
        return self.net(x).flatten()


def padded_shape(shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The generator's output grid for ``shape``: 16 x the first kernel (the shape itself when divisible)."""
    return tuple(UPSAMPLING * k for k in first_kernel(shape))


def crop(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    return x[..., :shape[0], :shape[1], :shape[2]]


def pad_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Replicate the border of ``(b, c, z, y, x)`` at the ends up to ``shape`` (real volumes, for the discriminator)."""
    pads = [t - n for t, n in zip(shape, x.shape[-3:])]
    if not any(pads):
        return x
    return F.pad(x, [0, pads[2], 0, pads[1], 0, pads[0]], mode="replicate")


def latent_noise(generators: list[torch.Generator], z_dim: int) -> torch.Tensor:
    """``z ~ U[0, 1]``, one row per generator (one generator per sample: reproducible, batch-independent)."""
    return torch.stack([torch.rand(z_dim, generator=g) for g in generators])


def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> float:
    """Fraction of a batch the discriminator classifies right (real: logit > 0, generated: logit < 0)."""
    right = (real_logits > 0).sum() + (fake_logits < 0).sum()
    return float(right) / float(real_logits.numel() + fake_logits.numel())


def build_gan(config) -> tuple[Generator3D, Discriminator3D]:
    """The generator and discriminator of a :class:`ctsynth.config.Config` with ``model: gan``."""
    cfg, shape = config.gan, tuple(config.data.shape)
    n_labels = len(config.data.labels) if cfg.conditional else 0
    return (Generator3D(shape, cfg.z_dim, n_labels, cfg.width), Discriminator3D(shape, n_labels, cfg.width))

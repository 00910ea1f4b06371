"""Stage 1: the diffusion model's space. ``kind: haar``: the fixed Haar wavelet packet (``wavelet.py``);
``kind: kl``: MONAI ``AutoencoderKL`` (3D, 4x downsampling) + MONAI ``PatchDiscriminator``.

Losses: L1 reconstruction + KL (weighted by ``kl_weight``) + least-squares adversarial loss (MONAI
``PatchAdversarialLoss``) after ``adv_start_step``. No perceptual loss: MONAI's needs downloaded weights.
The autoencoder is trained on random patches; whole volumes are encoded/decoded at the end, padded to a
multiple of the downsampling factor per axis and cropped back, so the user-facing shape never changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from ..config import AutoencoderConfig
from ..errors import CTSynthError
from . import check_levels
from .wavelet import HaarTransform

KINDS = ("haar", "kl")


def downsampling_factor(cfg: AutoencoderConfig) -> int:
    """Each Haar level, or each autoencoder level after the first, halves every axis."""
    return 2 ** (cfg.haar_levels if cfg.kind == "haar" else len(cfg.channels) - 1)


def latent_channels(cfg: AutoencoderConfig) -> int:
    return 8 ** cfg.haar_levels if cfg.kind == "haar" else cfg.latent_channels


def is_trained(cfg: AutoencoderConfig) -> bool:
    """Whether stage 1 has weights to train (the Haar transform has none)."""
    return cfg.kind == "kl"


def build_autoencoder(cfg: AutoencoderConfig, grad_checkpointing: bool = False) -> AutoencoderKL | HaarTransform:
    if cfg.kind not in KINDS:
        raise CTSynthError(f"unknown autoencoder.kind '{cfg.kind}'", fix=f"use one of {list(KINDS)}")
    if cfg.kind == "haar":
        if not 1 <= cfg.haar_levels <= 3:
            raise CTSynthError(f"autoencoder.haar_levels must be 1, 2 or 3, got {cfg.haar_levels}",
                               fix="use 2 (64 channels at a quarter of the size per axis)")
        return HaarTransform(cfg.haar_levels)
    check_levels("autoencoder", cfg.channels, cfg.attention_levels, cfg.norm_num_groups)
    return AutoencoderKL(
        spatial_dims=3, in_channels=1, out_channels=1, channels=cfg.channels,
        latent_channels=cfg.latent_channels, num_res_blocks=cfg.num_res_blocks,
        attention_levels=cfg.attention_levels, norm_num_groups=cfg.norm_num_groups,
        with_encoder_nonlocal_attn=cfg.nonlocal_attn, with_decoder_nonlocal_attn=cfg.nonlocal_attn,
        use_checkpoint=grad_checkpointing,
    )


def build_discriminator(cfg: AutoencoderConfig) -> PatchDiscriminator:
    return PatchDiscriminator(spatial_dims=3, channels=cfg.disc_channels, in_channels=1, out_channels=1,
                              num_layers_d=cfg.disc_layers, norm="INSTANCE")


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), summed over latent voxels, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float | None = None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the last three axes at their ends up to a multiple of ``multiple``; returns (padded, original shape).

    ``value=None`` replicates the border (images); a number pads with that constant (latents).
    """
    shape = tuple(x.shape[-3:])
    pads = [(-n) % multiple for n in shape]
    if not any(pads):
        return x, shape
    spec = [0, pads[2], 0, pads[1], 0, pads[0]]
    x = F.pad(x, spec, mode="replicate") if value is None else F.pad(x, spec, value=value)
    return x, shape


def crop_to(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x[..., : shape[0], : shape[1], : shape[2]]


def latent_shape(cfg: AutoencoderConfig, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Latent spatial shape of a whole volume (after the encoder's internal padding)."""
    f = downsampling_factor(cfg)
    return tuple(-(-n // f) for n in image_shape)  # type: ignore[return-value]


@torch.no_grad()
def encode_volume(ae: AutoencoderKL, x: torch.Tensor, factor: int) -> torch.Tensor:
    """Latent mean of whole volumes ``(b, 1, z, y, x)`` -> ``(b, c, ceil(z/f), ceil(y/f), ceil(x/f))``."""
    padded, _ = pad_to_multiple(x, factor)
    z_mu, _ = ae.encode(padded)
    return z_mu


@torch.no_grad()
def decode_latent(ae: AutoencoderKL, z: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Decode latents and crop back to the user-facing ``image_shape``."""
    return crop_to(ae.decode(z), image_shape)

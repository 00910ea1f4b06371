"""The networks: a 3D KL autoencoder (stage 1) and a class-conditional latent diffusion UNet (stage 2), from MONAI."""

from __future__ import annotations

from ..errors import CTSynthError


def check_levels(section: str, channels: tuple[int, ...], attention_levels: tuple[bool, ...],
                 norm_num_groups: int) -> None:
    """Config checks MONAI would otherwise fail on deep inside a constructor, as one-line errors."""
    if any(c % norm_num_groups for c in channels):
        raise CTSynthError(f"{section}.channels {channels} must all be multiples of "
                           f"{section}.norm_num_groups ({norm_num_groups})", fix="change one of them")
    if len(attention_levels) != len(channels):
        raise CTSynthError(f"{section}.attention_levels must have one entry per {section}.channels entry")


def build_diffusion_model(config):
    """Stage 2's trainable module for a :class:`ctsynth.config.Config`: the wavelet cascade
    (``diffusion.cascade``) or one UNet on stage 1's latents. Training and generation both build it here."""
    from .autoencoder import latent_channels
    from .cascade import WaveletCascade
    from .diffusion import build_unet

    n_labels = len(config.data.labels)
    if config.diffusion.cascade:
        if config.autoencoder.kind != "haar":
            raise CTSynthError("diffusion.cascade needs autoencoder.kind: haar",
                               fix="set autoencoder.kind: haar (and haar_levels) or diffusion.cascade: false")
        return WaveletCascade(config.diffusion, config.autoencoder.haar_levels, n_labels)
    return build_unet(config.diffusion, latent_channels(config.autoencoder), n_labels)

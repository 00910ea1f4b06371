"""Stage 2: a class-conditional MONAI ``DiffusionModelUNet`` (3D) on the frozen autoencoder's latents.

Conditioning: ``num_class_embeds = len(labels) + 1``; the extra last class is the "null" label used for
classifier-free guidance (labels are replaced by it with probability ``label_dropout`` in training, and the
guided prediction is ``uncond + g * (cond - uncond)`` at sampling).

Schedulers (``diffusion.scheduler``):
- ``"ddim"``: trained with the DDPM noise schedule (``beta_schedule``) and v-prediction, sampled with MONAI
  ``DDIMScheduler`` (``eta = 0``: deterministic given the initial noise).
- ``"rflow"``: MONAI ``RFlowScheduler`` (rectified flow, velocity ``x0 - noise``), Euler steps.

Latents are padded (with zeros) to the UNet's divisibility inside training and sampling and cropped back.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler

from ..config import DiffusionConfig
from ..errors import CTSynthError
from . import check_levels
from .autoencoder import crop_to, pad_to_multiple

SCHEDULERS = ("rflow", "ddim")


def unet_multiple(cfg: DiffusionConfig) -> int:
    return 2 ** (len(cfg.channels) - 1)


def build_unet(cfg: DiffusionConfig, latent_channels: int, n_labels: int, extra_inputs: int = 0) -> DiffusionModelUNet:
    """The class-conditional UNet; ``extra_inputs`` condition channels join its input (the cascade's spacing)."""
    check_levels("diffusion", cfg.channels, cfg.attention_levels, cfg.norm_num_groups)
    return DiffusionModelUNet(
        spatial_dims=3, in_channels=latent_channels + extra_inputs, out_channels=latent_channels,
        channels=cfg.channels,
        attention_levels=cfg.attention_levels, num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels, norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=n_labels + 1, use_flash_attention=cfg.use_flash_attention,
    )


def build_scheduler(cfg: DiffusionConfig) -> DDIMScheduler | RFlowScheduler:
    if cfg.scheduler == "ddim":
        return DDIMScheduler(num_train_timesteps=cfg.train_timesteps, schedule=cfg.beta_schedule,
                             clip_sample=False, prediction_type="v_prediction")
    if cfg.scheduler == "rflow":
        return RFlowScheduler(num_train_timesteps=cfg.train_timesteps, use_discrete_timesteps=True,
                              sample_method=cfg.rflow_timestep_sampling)
    raise CTSynthError(f"unknown diffusion.scheduler '{cfg.scheduler}'", fix=f"use one of {list(SCHEDULERS)}")


def sample_generator(seed: int, g: int, device: torch.device | str = "cpu", stream: int = 0) -> torch.Generator:
    """The generator of global training sample ``g``'s draws (see :func:`training_draws`); ``stream`` > 0 is
    another model's independent stream of the same sample."""
    # torch's CPU generator keeps 32 bits of its seed: mix (seed, g) into them rather than shift seed out
    return torch.Generator(device=device).manual_seed(
        int(np.random.SeedSequence([int(seed), int(g)] + ([int(stream)] if stream else [])).generate_state(1)[0]))


def training_draws(sample_ids: list[int], seed: int, shape: tuple[int, ...], scheduler, label_dropout: float,
                   device: torch.device | str = "cpu",
                   stream: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample's noise, timestep and label dropout, from its own generator seeded by ``(seed, g)`` where
    ``g`` is its global sample number (``ctsynth.train.common.sample_ids``).

    So a step's randomness does not depend on how its samples are split into micro-batches or ranks: batch 2
    with accumulation 1 and batch 1 with accumulation 2 compute the same gradient, and a resumed run draws
    what an uninterrupted one would. Timesteps follow the scheduler's training distribution (rectified flow:
    uniform or logit-normal on [0, T), as MONAI's ``RFlowScheduler.sample_timesteps``; DDPM: uniform integers).
    Returns ``noise (b, *shape)``, ``t (b,)`` and ``drop (b,)`` (bool: train this sample unconditionally),
    drawn on ``device`` (the noise of a full-size latent is not made on the CPU and copied every step; a CUDA
    generator gives other numbers than a CPU one for the same seed, deterministically). ``stream`` > 0 gives
    another model of the same sample its own independent draws (``ctsynth.models.cascade``).
    """
    noises, ts, drops = [], [], []
    T = scheduler.num_train_timesteps
    for g in sample_ids:
        gen = sample_generator(seed, g, device, stream)
        if isinstance(scheduler, RFlowScheduler):
            if scheduler.sample_method == "logit-normal":
                u = torch.sigmoid(torch.randn((), generator=gen, device=device))
            else:
                u = torch.rand((), generator=gen, device=device)
            t = (u * T).long() if scheduler.use_discrete_timesteps else u * T
        else:
            t = torch.randint(0, T, (), generator=gen, device=device)
        ts.append(t)
        drops.append(torch.rand((), generator=gen, device=device) < label_dropout)
        noises.append(torch.randn(shape, generator=gen, device=device))
    return torch.stack(noises), torch.stack(ts), torch.stack(drops)


def training_loss(unet: torch.nn.Module, scheduler, z0: torch.Tensor, labels: torch.Tensor, null_label: int,
                  noise: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """One denoising loss on clean (standardised, padded) latents ``z0`` with the draws of :func:`training_draws`:
    rectified flow regresses the velocity ``z0 - noise``, DDPM the v-prediction."""
    return training_loss_per_sample(unet, scheduler, z0, labels, null_label, noise, t, drop).mean()


def training_loss_per_sample(unet: torch.nn.Module, scheduler, z0: torch.Tensor, labels: torch.Tensor,
                             null_label: int, noise: torch.Tensor, t: torch.Tensor,
                             drop: torch.Tensor) -> torch.Tensor:
    """:func:`training_loss` of each sample, ``(b,)``."""
    labels = torch.where(drop, torch.full_like(labels, null_label), labels)
    if isinstance(scheduler, RFlowScheduler):
        target = z0 - noise
    else:
        target = scheduler.get_velocity(z0, noise, t)
    noisy = scheduler.add_noise(original_samples=z0, noise=noise, timesteps=t)
    return per_sample_mse(unet(noisy, timesteps=t, class_labels=labels), target)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample, ``(b,)``, in float32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def guided_prediction(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, null_label: int,
                      guidance: float) -> torch.Tensor:
    """Classifier-free guidance, ``uncond + g * (cond - uncond)``: with ``g = 1`` exactly the conditional
    pass (and only that pass is run)."""
    if guidance == 1.0:
        return unet(x, timesteps=t, class_labels=labels).float()
    both = unet(torch.cat([x, x]), timesteps=torch.cat([t, t]),
                class_labels=torch.cat([labels, torch.full_like(labels, null_label)])).float()
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample_latents(unet: torch.nn.Module, scheduler, noise: torch.Tensor, labels: torch.Tensor, null_label: int,
                   guidance: float, steps: int, latent_shape: tuple[int, int, int], eta: float = 0.0,
                   generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Denoise ``noise`` (already padded to the UNet's multiple) into latents cropped to ``latent_shape``.

    Rectified flow: Euler steps from t = T (pure noise) to 0, each ``x += v * (t - t_next) / T``, so the
    steps' lengths add up to exactly 1. Every source of randomness is per sample (``generators[i]`` for DDIM
    with ``eta > 0``), so a sample does not depend on what else is in its batch.
    """
    x = noise
    scheduler.set_timesteps(num_inference_steps=steps, device=x.device)
    timesteps = scheduler.timesteps
    rflow = isinstance(scheduler, RFlowScheduler)
    nexts = (torch.cat([timesteps[1:], torch.zeros(1, dtype=timesteps.dtype, device=timesteps.device)]) if rflow
             else [None] * len(timesteps))
    for t, t_next in zip(timesteps, nexts):
        tt = torch.full((x.shape[0],), float(t) if rflow else int(t), device=x.device)
        pred = guided_prediction(unet, x, tt, labels, null_label, guidance)
        if rflow:
            x, _ = scheduler.step(pred, t, x, t_next)
        elif eta > 0 and generators is not None:
            x = torch.cat([scheduler.step(pred[i:i + 1], int(t), x[i:i + 1], eta=eta, generator=g)[0]
                           for i, g in enumerate(generators)])
        else:
            x, _ = scheduler.step(pred, int(t), x)
    return crop_to(x, latent_shape)


def pad_latents(z: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    return pad_to_multiple(z, unet_multiple(cfg), value=0.0)[0]


def standardise(latents: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-channel ``(z - shift) * scale`` of ``(n, c, z, y, x)`` latents; :func:`unstandardise` inverts it."""
    view = (1, -1, 1, 1, 1)
    return (latents - shift.view(view).to(latents)) * scale.view(view).to(latents)


def unstandardise(z: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    view = (1, -1, 1, 1, 1)
    return z / scale.view(view).to(z) + shift.view(view).to(z)


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA's decay after optimizer step ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))``.

    Without the warm-up, the EMA of a short run is mostly its random initialisation (0.995 ** 170 = 43% of
    the weights after 170 steps), which is what a time-budgeted CPU run or an early curve point samples from
    (docs/quality.md); with it the first steps are averaged as they come."""
    return min(float(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, parameters; buffers are copied."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)

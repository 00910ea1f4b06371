"""The wavelet cascade: a volume generated coarse to fine, one Haar level at a time (``diffusion.cascade``).

A Mallat pyramid of ``L = autoencoder.haar_levels`` levels splits the volume ``x = LL_0`` into the low-pass
band ``LL_L`` (``2**L`` times smaller per axis) and, per level ``l``, seven detail bands ``D_l`` on the grid of
``LL_l``, with ``LL_{l-1} = merge(LL_l, D_l)`` exact (:class:`~ctsynth.models.wavelet.HaarTransform`, one
level). Generation follows it down:

1. the *base* UNet (the ``diffusion`` section's network, class-conditional with classifier-free guidance)
   samples ``LL_L``: the layout, body and lungs, and the class, on a grid small enough to learn in minutes.
   With ``base_details`` it samples ``D_L`` with it (8 channels on that grid, merged into ``LL_{L-1}``): the
   coarsest level's structure (vessels a few voxels wide, lesion texture) is then drawn, where a regression
   detail model can only give its mean given ``LL_L``, and detail models remain for levels ``L-1 .. 1``;
2. per level, from coarse to fine, a *detail* UNet (``diffusion.detail_channels``, no attention) makes
   ``D_l`` given ``LL_l`` (concatenated as an input channel) and the label, and the level is merged. With
   ``detail_objective: regression`` (default) it predicts the bands' conditional mean in one pass (a learnt
   super-resolution, one level at a time); with ``gaussian`` it also predicts each voxel's variance around
   that mean and sampling adds that much Gaussian noise (one pass still: the texture the mean lacks); with
   ``energy`` it maps Gaussian noise (fed where the regression gets zeros) to the bands in one pass, trained
   with the energy score of two draws per sample (Gneiting & Raftery 2007; "engression", Shen & Meinshausen
   2024): a proper scoring rule, so the draws learn the bands' conditional distribution (placed vessels and
   texture, jointly over the patch) rather than their mean, for twice a regression's cost; with ``flow`` it
   samples them by rectified flow like the base.
   With ``detail_adv_weight > 0`` (regression only) a conditional patch critic per level (pix2pix; SRGAN for
   super-resolution) judges bands given the band below, and its least-squares adversarial loss joins the
   regression's: the conditional mean smears what the band below does not decide (small vessels, texture),
   and the critic pushes the one pass towards bands that look drawn from the data instead.

Why (docs/quality.md): diffusing all 64 channels of the 2-level Haar packet jointly on 2 CPU cores gave
voxel noise and no class after 45 minutes; its errors in the detail bands show at full strength. Here each
model has an easy task: the base one a tiny grid, the detail ones a nearly local one (edges and vessels
given the band below), which is why they are fully convolutional and trained on random patches
(``diffusion.detail_patch``): their training cost does not grow with the volume, so the finest level of a
48 x 512 x 512 scan trains like that of a crop. It is cascaded diffusion (Ho et al. 2021) in wavelet space
(WDM, Friedrich et al. 2024), and the seed report's "generate small, then super-resolve", learnt per level.

Each band is standardised per channel with the training set's statistics (buffers of the module, saved
with its weights). The condition of a detail model is jittered with Gaussian noise in training
(``detail_cond_noise``, standardised units) so it tolerates the base model's errors at sampling.

Everything random in training is drawn per sample from ``(seed, global sample number, model)``
(:func:`ctsynth.models.diffusion.training_draws`), so a step's gradient does not depend on its split into
micro-batches; each model's loss is a per-sample mean squared error summed over the micro-batch and divided
by its size, and detail models see only the samples whose number is a multiple of ``detail_every`` (their
step costs several times the base model's).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet, PatchDiscriminator

from ..config import DiffusionConfig
from ..errors import CTSynthError
from . import check_levels
from .autoencoder import crop_to, pad_to_multiple
from .calibration import QuantileMap
from .diffusion import (build_unet, per_sample_mse, sample_latents, standardise, training_draws,
                        training_loss_per_sample, unstandardise)
from .residuals import ResidualBank
from .spacing import AXES, SpacingPrior
from .wavelet import HaarTransform

DETAIL_BANDS = 7
RESIDUAL_VOLUMES = 64  # training volumes behind a residual bank (evenly spaced)
DETAIL_OBJECTIVES = ("regression", "gaussian", "energy", "flow")
CALIBRATION_REGIONS = ("all", "body")  # the voxels the output curve is fitted on (train/diffusion.py body_region)
LOGVAR_RANGE = (-12.0, 4.0)  # the gaussian details' log-variance (standardised units), clamped for stability


def split_level(x: torch.Tensor, haar: HaarTransform) -> tuple[torch.Tensor, torch.Tensor]:
    """One Haar level: ``(b, 1, z, y, x) -> (low (b, 1, z/2, y/2, x/2), details (b, 7, z/2, y/2, x/2))``."""
    coeffs = haar.encode(x)[0]
    return coeffs[:, :1], coeffs[:, 1:]


def merge_level(low: torch.Tensor, details: torch.Tensor, haar: HaarTransform) -> torch.Tensor:
    return haar.decode(torch.cat([low, details], dim=1))


def neighbourhood_floor(low: torch.Tensor, haar: HaarTransform) -> torch.Tensor:
    """``(b, 1, *grid)`` band -> ``(b, 1, *2 grid)``: each voxel's floor under ``diffusion.detail_floor``, the
    lowest value of the band's 3^3 neighbourhood around its block, in the merged level's units (the block mean
    that value stands for).

    Why: next to a bright wall, regression details plus a drawn residual undershoot the band below: a dark
    rim along the pleura that no real crop has. The darkest lung voxels were then the rim's in every sample,
    so the lungs' 5th HU percentile no longer followed their density. The floor is an anti-ringing clamp, as
    image resamplers clamp to the source's local range. Only its lower side: an upper one flattens vessels
    brighter than every block around them. It trims real texture a little too: 8-10% of a real crop's voxels
    lie below this floor, 1-2% by more than 20 HU (docs/quality.md)."""
    lowest = -torch.nn.functional.max_pool3d(-low, 3, stride=1, padding=1)  # padding is -inf: the edge's own
    return merge_level(lowest, torch.zeros(low.shape[0], DETAIL_BANDS, *low.shape[2:], device=low.device,
                                           dtype=low.dtype), haar)


def pyramid(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``x`` (every axis a multiple of ``2**levels``) -> ``(LL_L, [LL_1 .. LL_L], [D_1 .. D_L])``: index
    ``l - 1`` of the lists is level ``l``; ``lows[l - 1]`` is the band that ``details[l - 1]`` refines."""
    haar = HaarTransform(1).to(x.device)
    lows, details, low = [], [], x
    for _ in range(levels):
        low, d = split_level(low, haar)
        lows.append(low)
        details.append(d)
    return low, lows, details


def gaussian_detail_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample loss of the ``gaussian`` objective, ``(b,)``: the mean's squared error plus the Gaussian
    negative log-likelihood (up to a constant) of the log-variance given that mean's *detached* residual,
    so the variance head learns the residual's size without pulling the mean away from the least-squares
    one (which stays exactly what ``regression`` learns)."""
    mean, logvar = out[:, :DETAIL_BANDS], out[:, DETAIL_BANDS:].clamp(*LOGVAR_RANGE)
    residual2 = (target.float() - mean.float()).pow(2)
    nll = logvar + residual2.detach() * torch.exp(-logvar)
    return residual2.flatten(1).mean(1) + 0.5 * nll.flatten(1).mean(1)


def gaussian_detail_sample(out: torch.Tensor, eps: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The bands drawn from the ``gaussian`` objective's output: ``mean + scale * exp(logvar / 2) * eps``."""
    mean, logvar = out[:, :DETAIL_BANDS], out[:, DETAIL_BANDS:].clamp(*LOGVAR_RANGE)
    return mean + scale * torch.exp(0.5 * logvar) * eps


def energy_score(draws: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Per-sample energy score of two draws ``X, X'`` against ``y``, ``(b,)``: ``(|X - y| + |X' - y|) / 2 -
    |X - X'| / 2`` with ``|.|`` the Euclidean norm over a sample's whole patch divided by the square root of its
    size (an RMS: the score's minimiser does not change with the scale). Its expectation is smallest, among all
    distributions of the draws, exactly when they follow ``y``'s distribution (strictly proper), where the
    first term alone (a regression) is smallest at a point."""
    def rms(a: torch.Tensor) -> torch.Tensor:
        return a.float().pow(2).flatten(1).mean(1).add(1e-12).sqrt()

    x1, x2 = draws
    return 0.5 * (rms(x1 - target) + rms(x2 - target)) - 0.5 * rms(x1 - x2)


def in_graph(module: torch.nn.Module) -> torch.Tensor:
    """A zero loss term that still reaches every parameter of ``module``: a model with nothing to learn from a
    micro-batch stays in the step's graph with a zero gradient, as DDP requires of every parameter."""
    return 0.0 * sum(p.sum() for p in module.parameters())


def least_squares_scores(scores: torch.Tensor, target: float) -> torch.Tensor:
    """Per-sample least-squares GAN loss (Mao et al. 2017; MONAI's ``PatchAdversarialLoss`` criterion
    ``least_squares``), ``(b,)``: the mean of ``(score - target)^2`` over a sample's patch scores. Per sample,
    so a step's gradient does not depend on its split into micro-batches."""
    return (scores.float() - target).pow(2).flatten(1).mean(1)


class DetailCritics(torch.nn.Module):
    """One conditional patch critic per level (``detail_adv_weight``): the seven standardised bands and their
    condition in, a grid of real-or-made scores out. Trained by the diffusion stage beside the cascade, not
    saved with the generator (sampling does not need them).

    ``forward(batches)`` is the critics' loss on the bands the last :meth:`WaveletCascade.forward` made
    (``critic_batches``), summed over the samples (divide by the micro-batch size): real ``(cond, target)``
    towards 1, made ``(cond, pred)`` towards 0, half each. A module call, so that DDP's hooks run."""

    def __init__(self, cfg: DiffusionConfig, levels: int) -> None:
        super().__init__()
        self.critics = torch.nn.ModuleList(
            PatchDiscriminator(spatial_dims=3, channels=cfg.detail_critic_channels, in_channels=DETAIL_BANDS + 1,
                               out_channels=1, num_layers_d=2, kernel_size=3, norm="INSTANCE")
            for _ in range(levels))

    def score(self, level: int, cond: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
        return self.critics[level - 1](torch.cat([cond, bands], 1))[-1]

    def forward(self, batches: dict[int, tuple[torch.Tensor, ...]]) -> torch.Tensor:
        total = in_graph(self)
        for level, (cond, pred, target) in batches.items():
            total = total + 0.5 * (least_squares_scores(self.score(level, cond, target), 1.0)
                                   + least_squares_scores(self.score(level, cond, pred), 0.0)).sum()
        return total


def per_sample_noise(generators: list[torch.Generator], channels: int, shape: list[int],
                     device: torch.device) -> torch.Tensor:
    """``(b, channels, *shape)`` standard normal noise, sample ``i``'s from ``generators[i]``: a sample's draws
    do not depend on its batch (the base band first, then each detail level, in that order)."""
    return torch.cat([torch.randn((1, channels, *shape), generator=g, device=g.device).to(device) for g in generators])


def calibration_generators(seed: int, label: int, indices) -> list[torch.Generator]:
    """The generators of :meth:`WaveletCascade.fit_calibration`'s samples ``indices`` of class ``label``: seeded
    from ``(seed, label, index)``, apart from the seeds ``ctsynth generate`` uses (``seed + index``)."""
    return [torch.Generator().manual_seed(int(seed) * 1_000_003 + 10_007 * int(label) + int(i)) for i in indices]


def _of_level(values: tuple[float, ...], level: int, default: float) -> float:
    """A per-level option's value at ``level`` (the list starts at level 1, the finest), ``default`` past its end."""
    return values[level - 1] if level <= len(values) else default


def _padded(shape: list[int], m: int) -> list[int]:
    return [-(-n // m) * m for n in shape]


class _Conditioned(torch.nn.Module):
    """A detail UNet with its condition fixed, called like an unconditional-input UNet by the sampler."""

    def __init__(self, unet: torch.nn.Module, cond: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.cond = unet, cond

    def forward(self, x, timesteps, class_labels):
        cond = self.cond  # a guided pass (the base model's) doubles the batch: the condition follows it
        if x.shape[0] != cond.shape[0]:
            cond = cond.repeat(x.shape[0] // cond.shape[0], *([1] * (cond.dim() - 1)))
        return self.unet(torch.cat([x, cond], dim=1), timesteps=timesteps, class_labels=class_labels)


def build_detail_unet(cfg: DiffusionConfig, n_labels: int) -> DiffusionModelUNet:
    """The detail UNet: bands + condition in; the bands (and, for ``gaussian``, their log-variance) out."""
    levels = tuple(False for _ in cfg.detail_channels)
    check_levels("diffusion (detail_channels)", cfg.detail_channels, levels, cfg.norm_num_groups)
    out = 2 * DETAIL_BANDS if cfg.detail_objective == "gaussian" else DETAIL_BANDS
    return DiffusionModelUNet(
        spatial_dims=3, in_channels=DETAIL_BANDS + 1, out_channels=out, channels=cfg.detail_channels,
        attention_levels=levels, num_res_blocks=cfg.num_res_blocks, norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=n_labels + 1,
    )


class WaveletCascade(torch.nn.Module):
    """The base UNet, one detail UNet per level, and the bands' statistics (buffers).

    ``forward(images, labels, ids, seed, scheduler)`` is the training loss of a micro-batch (so that DDP's
    hooks run); :meth:`sample` generates.
    """

    def __init__(self, cfg: DiffusionConfig, levels: int, n_labels: int) -> None:
        super().__init__()
        for name, known in (("detail_objective", DETAIL_OBJECTIVES), ("calibration_region", CALIBRATION_REGIONS)):
            if getattr(cfg, name) not in known:
                raise CTSynthError(f"unknown diffusion.{name} '{getattr(cfg, name)}'", fix=f"use one of {list(known)}")
        for name, on in (("detail_adv_weight", cfg.detail_adv_weight > 0), ("detail_gain", bool(cfg.detail_gain)),
                         ("detail_residuals", any(cfg.detail_residuals))):
            if on and cfg.detail_objective != "regression":  # options of the conditional mean: not silently ignored
                raise CTSynthError(f"diffusion.{name} works with detail_objective: regression, got "
                                   f"'{cfg.detail_objective}'",
                                   fix=f"leave {name} out or use detail_objective: regression")
        for name, values, ok, kind, fix in (
                ("detail_gain", cfg.detail_gain, lambda g: g > 0, "positive numbers",
                 "e.g. detail_gain: [1.3, 1.0], or leave it out (1 everywhere)"),
                ("detail_residuals", cfg.detail_residuals, lambda r: r >= 0, "numbers >= 0",
                 "e.g. detail_residuals: [0.6], or leave it out (none)")):
            if len(values) > levels or not all(ok(v) for v in values):
                raise CTSynthError(f"diffusion.{name} must hold at most {levels} {kind} (one per Haar level, the "
                                   f"finest first), got {list(values)}", fix=fix)
        if cfg.detail_residual_patch < 1:
            raise CTSynthError(f"diffusion.detail_residual_patch must be at least 1 (blocks per axis), got "
                               f"{cfg.detail_residual_patch}", fix="use 4, or 1 for block-by-block draws")
        if not 1 <= levels <= 3:
            raise CTSynthError(f"diffusion.cascade needs autoencoder.haar_levels between 1 and 3, got {levels}",
                               fix="use 2 or 3 (the base grid is 1/4 or 1/8 of the volume per axis)")
        if cfg.spacing_condition and cfg.augment_zoom > 0:  # a zoomed crop's spacing is not its recorded one
            raise CTSynthError("diffusion.spacing_condition and diffusion.augment_zoom do not go together",
                               fix="set augment_zoom: 0, or spacing_condition: false")
        self.cfg, self.levels, self.null_label = cfg, levels, n_labels
        # Samples numbered from this on do not train the base model (diffusion.base_max_epochs x the training
        # set, set by the training stage; None: no bound). Not saved: the stage sets it again on resume.
        self.base_sample_limit: int | None = None
        # levels whose details a detail UNet makes: all, or all but the coarsest (base_details)
        self.detail_levels = levels - 1 if cfg.base_details else levels
        # the voxel spacing: drawn per sample and given to the base model (diffusion.spacing_condition; fitted
        # with the statistics): models/spacing.py
        self.spacing = SpacingPrior(n_labels) if cfg.spacing_condition else None
        self.base = build_unet(cfg, self._base_channels, n_labels, extra_inputs=AXES if self.spacing else 0)
        self.details = torch.nn.ModuleList(build_detail_unet(cfg, n_labels) for _ in range(self.detail_levels))
        # (shift, scale) of LL_1 .. LL_L (one channel each) and of D_1 .. D_L (seven channels each)
        self.register_buffer("low_stats", torch.stack([torch.zeros(levels, 1), torch.ones(levels, 1)]))
        self.register_buffer("detail_stats", torch.stack([torch.zeros(levels, DETAIL_BANDS),
                                                          torch.ones(levels, DETAIL_BANDS)]))
        # the output's intensity transfer curve (diffusion.calibration_samples; fitted after training, else the
        # identity): models/calibration.py
        self.calibration = QuantileMap()
        # the residual banks of the levels with diffusion.detail_residuals > 0 (fitted after training, else they
        # draw zeros): models/residuals.py
        self.residual_banks = torch.nn.ModuleDict({str(level): ResidualBank(DETAIL_BANDS, cfg.detail_residual_patch)
                                                   for level in range(1, self.detail_levels + 1)
                                                   if self.detail_residual(level) > 0})

    @property
    def multiple(self) -> int:
        """Every axis of an image must be a multiple of this (the Haar levels)."""
        return 2 ** self.levels

    @property
    def _base_channels(self) -> int:
        return 1 + DETAIL_BANDS if self.cfg.base_details else 1

    def _base_band(self, low: torch.Tensor, coarsest: torch.Tensor) -> torch.Tensor:
        """What the base model learns to generate from a volume's ``LL_L`` and ``D_L`` (``coarsest``): ``LL_L``
        (with ``base_details``, ``LL_L`` and ``D_L`` along the channels), standardised."""
        band = self._low(low, self.levels)
        if self.cfg.base_details:
            band = torch.cat([band, self._detail(coarsest, self.levels)], dim=1)
        return band

    def _from_base_band(self, band: torch.Tensor) -> torch.Tensor:
        """The base model's output back to the band the detail models start from (unstandardised): ``LL_L``,
        or with ``base_details`` ``LL_{L-1}`` (``LL_L`` and ``D_L`` merged)."""
        low = self._low(band[:, :1], self.levels, inverse=True)
        if not self.cfg.base_details:
            return low
        details = self._detail(band[:, 1:], self.levels, inverse=True)
        return merge_level(low, details, HaarTransform(1).to(band.device))

    def _base_multiple(self) -> int:
        return 2 ** (len(self.cfg.channels) - 1)

    def _detail_multiple(self) -> int:
        return 2 ** (len(self.cfg.detail_channels) - 1)

    @torch.no_grad()
    def set_statistics(self, images: torch.Tensor, spacing_mm: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None) -> None:
        """Per-channel mean and 1 / std of every band over ``images`` (the training set); with
        ``spacing_condition``, the spacing prior from their spacings ``(n, 3)`` and ``labels``."""
        if self.spacing is not None:
            if spacing_mm is None or labels is None:
                raise ValueError("diffusion.spacing_condition: set_statistics needs the spacings and labels")
            self.spacing.fit(spacing_mm, labels)
        _, lows, details = pyramid(images.double(), self.levels)
        for i, (low, d) in enumerate(zip(lows, details)):
            for stats, band in ((self.low_stats, low), (self.detail_stats, d)):
                s = band.std(dim=(0, 2, 3, 4))
                stats[0, i] = band.mean(dim=(0, 2, 3, 4)).float()
                stats[1, i] = torch.where(s > 0, 1.0 / s, torch.ones_like(s)).float()

    def _low(self, band: torch.Tensor, level: int, inverse: bool = False) -> torch.Tensor:
        f = unstandardise if inverse else standardise
        return f(band, self.low_stats[0, level - 1], self.low_stats[1, level - 1])

    def _detail(self, band: torch.Tensor, level: int, inverse: bool = False) -> torch.Tensor:
        f = unstandardise if inverse else standardise
        return f(band, self.detail_stats[0, level - 1], self.detail_stats[1, level - 1])

    def _base_model(self, spacing_mm: torch.Tensor | None, like: torch.Tensor) -> torch.nn.Module:
        """The base UNet, with ``spacing_condition`` its inputs joined by the spacings' condition (one constant
        channel per axis on the grid of ``like``)."""
        if self.spacing is None:
            return self.base
        if spacing_mm is None:
            raise ValueError("diffusion.spacing_condition: the base model needs each sample's spacing")
        cond = self.spacing.condition(spacing_mm).to(like.device, like.dtype)
        return _Conditioned(self.base, cond[:, :, None, None, None].expand(-1, -1, *like.shape[2:]))

    def _patch_size(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(n if p <= 0 else min(p, n) for n, p in zip(grid, self.cfg.detail_patch))

    def forward(self, images: torch.Tensor, labels: torch.Tensor, ids: list[int], seed: int,
                scheduler, base_images: torch.Tensor | None = None,
                critics: DetailCritics | None = None, spacing_mm: torch.Tensor | None = None) -> torch.Tensor:
        """The micro-batch's loss: the base model's on ``LL_L`` (samples ``g`` below ``base_sample_limit``)
        plus every detail model's on a patch of its level (samples ``g`` with ``g % detail_every == 0``), each a
        per-sample MSE summed / batch size. ``base_images`` (``diffusion.augment_zoom``): the base model's band
        comes from these instead (the same samples, augmented for it alone). ``critics``
        (``detail_adv_weight``; frozen by the caller): their adversarial loss joins the detail models', and
        ``critic_batches`` keeps each level's ``(condition, made bands, real bands)``, detached, for
        :class:`DetailCritics`' own loss. ``spacing_mm`` ``(b, 3)``: the samples' spacings
        (``spacing_condition``)."""
        self.critic_batches: dict[int, tuple[torch.Tensor, ...]] = {}
        b = images.shape[0]
        low, lows, details = pyramid(images, self.levels)
        coarsest = details[-1]
        if base_images is not None:
            low, _, base_details = pyramid(base_images, self.levels)
            coarsest = base_details[-1]
        z0 = pad_to_multiple(self._base_band(low, coarsest), self._base_multiple(), 0.0)[0]
        limit = self.base_sample_limit
        based = [k for k, g in enumerate(ids) if limit is None or g < limit]
        if based:
            sel = torch.tensor(based, device=images.device)
            noise, t, drop = training_draws([ids[k] for k in based], seed, tuple(z0.shape[1:]), scheduler,
                                            self.cfg.label_dropout, images.device)
            base = self._base_model(None if spacing_mm is None else spacing_mm[sel.cpu()], z0[sel])
            loss = training_loss_per_sample(base, scheduler, z0[sel], labels[sel], self.null_label, noise, t,
                                            drop).sum()
        else:  # past base_max_epochs: the base model is done; it stays in the graph with a zero gradient
            loss = in_graph(self.base)
        chosen = [k for k, g in enumerate(ids) if g % max(1, self.cfg.detail_every) == 0]
        if chosen:
            sel = torch.tensor(chosen, device=images.device)
            for level in range(1, self.detail_levels + 1):
                loss = loss + self._detail_loss(level, lows[level - 1][sel], details[level - 1][sel], labels[sel],
                                                [ids[k] for k in chosen], seed, scheduler, critics).sum()
        else:  # every parameter takes part in every step's graph (DDP requires it)
            loss = loss + in_graph(self.details)
        return loss / b

    def _detail_loss(self, level: int, low: torch.Tensor, details: torch.Tensor, labels: torch.Tensor,
                     ids: list[int], seed: int, scheduler, critics: DetailCritics | None = None) -> torch.Tensor:
        """Per-sample loss of level ``level``'s detail model on one random patch per sample, its condition
        jittered; the patch corner and the jitter come from ``(seed, sample, level)``."""
        grid = tuple(low.shape[-3:])
        size = self._patch_size(grid)
        energy = self.cfg.detail_objective == "energy"
        conds, targets, draws = [], [], []
        for v, d, g in zip(low, details, ids):
            rng = np.random.default_rng([int(seed), int(g), 1000 + level])
            c = [int(rng.integers(0, n - p + 1)) for n, p in zip(grid, size)]
            window = (slice(None), *(slice(o, o + p) for o, p in zip(c, size)))
            jitter = torch.from_numpy(rng.standard_normal((1, *size), dtype=np.float32)).to(v)
            conds.append(self._low(v[window][None], level)[0] + self.cfg.detail_cond_noise * jitter)
            targets.append(self._detail(d[window][None], level)[0])
            if energy:  # the two draws' noise, after the jitter
                draws.append(torch.from_numpy(rng.standard_normal((2, DETAIL_BANDS, *size), dtype=np.float32)).to(v))
        m = self._detail_multiple()
        cond = pad_to_multiple(torch.stack(conds), m, 0.0)[0]
        target = pad_to_multiple(torch.stack(targets), m, 0.0)[0]
        if energy:
            inside = (slice(None), slice(None), *(slice(0, p) for p in size))  # the score ignores the padding
            eps = pad_to_multiple(torch.cat([e[k:k + 1] for k in (0, 1) for e in draws]), m, 0.0)[0]
            made = self._regress(level, cond.repeat(2, 1, 1, 1, 1), labels.repeat(2), eps)[inside]
            return energy_score(made.chunk(2), target[inside])
        if self.cfg.detail_objective == "regression":
            pred = self._regress(level, cond, labels)
            loss = per_sample_mse(pred, target)
            if critics is None or self.cfg.detail_adv_weight <= 0:
                return loss
            window = (slice(None), slice(None), *(slice(0, p) for p in size))  # the padding is not the critic's
            cond, pred, target = cond[window], pred[window], target[window]
            self.critic_batches[level] = (cond.detach(), pred.detach(), target.detach())
            return loss + self.cfg.detail_adv_weight * least_squares_scores(critics.score(level, cond, pred), 1.0)
        if self.cfg.detail_objective == "gaussian":
            return gaussian_detail_loss(self._regress(level, cond, labels), target)
        noise, t, drop = training_draws(ids, seed, tuple(target.shape[1:]), scheduler, 0.0, target.device,
                                        stream=level)
        return training_loss_per_sample(_Conditioned(self.details[level - 1], cond), scheduler, target, labels,
                                        self.null_label, noise, t, drop)

    def detail_gain(self, level: int) -> float:
        """``diffusion.detail_gain`` of ``level`` (1 where the list stops): the regression's bands are scaled by
        it at sampling, in standardised units (the bands' means are about 0, so the scale is of the bands)."""
        return _of_level(self.cfg.detail_gain, level, 1.0)

    def detail_residual(self, level: int) -> float:
        """``diffusion.detail_residuals`` of ``level`` (0 where the list stops): the scale of the residual drawn
        from the level's bank, in standardised units."""
        return _of_level(self.cfg.detail_residuals, level, 0.0)

    @torch.no_grad()
    def fit_residuals(self, images: torch.Tensor, labels: torch.Tensor, seed: int, batch_size: int = 4) -> None:
        """Fit the residual bank of every level with ``detail_residuals`` > 0 on the training volumes ``images``
        ``(n, 1, z, y, x)`` (every axis a multiple of :attr:`multiple`) and their ``labels``: the level's model
        predicts each volume's bands from its true band below, as sampling would, and the bank keeps patches of
        the residuals with the band under them. At most :data:`RESIDUAL_VOLUMES` volumes (evenly spaced) take
        part, and an equal share of the bank's capacity from each (a seeded random choice), so memory stays
        bounded at any volume size."""
        keep = torch.linspace(0, images.shape[0] - 1, min(images.shape[0], RESIDUAL_VOLUMES)).round().long()
        device = self.low_stats.device
        for name, bank in self.residual_banks.items():
            level = int(name)
            gen = torch.Generator().manual_seed(seed + level)
            share = -(-bank.capacity // len(keep))
            found = []  # (keys, values, labels) of the chosen patches
            for k in range(0, len(keep), batch_size):
                idx = keep[k:k + batch_size]
                _, lows, details = pyramid(images[idx].to(device), level)
                cond = self._low(lows[level - 1], level)
                mean = crop_to(self._regress(level, pad_to_multiple(cond, self._detail_multiple(), 0.0)[0],
                                             labels[idx].to(device)), tuple(cond.shape[-3:]))
                patches = bank.patches(cond, self._detail(details[level - 1], level) - mean, gen)
                for (keys, values), label in zip(patches, labels[idx]):
                    pick = torch.randperm(keys.shape[0], generator=gen)[:share].to(device)
                    found.append((keys[pick], values[pick], label.expand(len(pick))))
            bank.fit(*(torch.cat(parts) for parts in zip(*found)), gen)

    def _regress(self, level: int, cond: torch.Tensor, labels: torch.Tensor,
                 eps: torch.Tensor | None = None) -> torch.Tensor:
        """The one-pass objectives: the detail UNet at t = 0 with zeros for its noisy input (the bands' mean,
        then for ``gaussian`` their log-variance, along the channels), or for ``energy`` the noise ``eps`` (a
        draw of the bands)."""
        x = torch.zeros(cond.shape[0], DETAIL_BANDS, *cond.shape[2:], device=cond.device, dtype=cond.dtype) \
            if eps is None else eps
        t = torch.zeros(cond.shape[0], device=cond.device)
        return self.details[level - 1](torch.cat([x, cond], dim=1), timesteps=t, class_labels=labels).float()

    @torch.no_grad()
    def sample(self, scheduler, generators: list[torch.Generator], labels: torch.Tensor, guidance: float,
               steps: int, image_shape: tuple[int, int, int], spacing_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Volumes ``(b, 1, *image_shape)`` in the [-1, 1] window: ``LL_L`` (and ``D_L``) by the base model
        (guided), then every level's details given the band below (conditional pass only). Sample ``i`` draws all its
        noise from ``generators[i]``, in a fixed order, so it does not depend on its batch. With
        ``spacing_condition``, ``spacing_mm`` ``(b, 3)`` is what the base model is told (the caller's draw from
        :attr:`spacing`, which it writes with the volume); ``None`` draws it here, first."""
        if self.spacing is not None and spacing_mm is None:
            spacing_mm = self.spacing.draw(generators, labels)
        grid = [-(-n // self.multiple) for n in image_shape]
        start = per_sample_noise(generators, self._base_channels, _padded(grid, self._base_multiple()),
                                 labels.device)
        band = sample_latents(self._base_model(spacing_mm, start), scheduler, start, labels, self.null_label,
                              guidance, steps, tuple(grid))
        low = self._from_base_band(band)
        made = crop_to(self.add_details(low, self.detail_levels, scheduler, generators, labels, steps), image_shape)
        return self.calibration(made)

    @torch.no_grad()
    def fit_calibration(self, images: torch.Tensor, per_class: int, n_labels: int, scheduler, guidance: float,
                        steps: int, seed: int, batch_size: int = 4, region=None) -> None:
        """Fit :attr:`calibration` on ``per_class`` volumes of each of the ``n_labels`` classes, sampled as
        :meth:`sample` does (uncalibrated; sample ``i`` of class ``c`` seeded from ``(seed, c, i)``), against the
        training volumes ``images`` ``(n, 1, z, y, x)``, cropped to the sampled shape. ``region`` (volumes -> bool
        masks of their shape): the curve is fitted on the voxels inside it, on both sides."""
        self.calibration.fitted.fill_(False)
        shape = tuple(images.shape[-3:])
        device = self.low_stats.device
        made = []
        for c in range(n_labels):
            for start in range(0, per_class, batch_size):
                idx = range(start, min(per_class, start + batch_size))
                gens = calibration_generators(seed, c, idx)
                labels = torch.full((len(idx),), c, dtype=torch.long, device=device)
                made.append(self.sample(scheduler, gens, labels, guidance, steps, shape).cpu())
        made = torch.cat(made)
        masks = (None, None) if region is None else (region(made), region(images))
        self.calibration.fit(made, images, *masks)

    @torch.no_grad()
    def add_details(self, low: torch.Tensor, level: int, scheduler, generators: list[torch.Generator],
                    labels: torch.Tensor, steps: int) -> torch.Tensor:
        """From the band ``LL_level`` (unstandardised) down to the full grid: each level's details by its
        model, merged (with ``detail_floor``, raised to :func:`neighbourhood_floor` of the band below).
        Sampling calls it with the base model's band; the benchmark's diagnosis calls it with a real volume's
        band, to tell the base model's errors from the detail models'."""
        device = labels.device
        haar = HaarTransform(1).to(device)
        m = self._detail_multiple()
        for level in range(level, 0, -1):
            grid = list(low.shape[-3:])
            cond = pad_to_multiple(self._low(low, level), m, 0.0)[0]
            if self.cfg.detail_objective == "regression":
                z = crop_to(self._regress(level, cond, labels) * self.detail_gain(level), tuple(grid))
                if self.detail_residual(level) > 0:
                    z = z + self.detail_residual(level) * self.residual_banks[str(level)].draw(
                        crop_to(cond, tuple(grid)), labels, generators)
            else:
                eps = per_sample_noise(generators, DETAIL_BANDS, _padded(grid, m), device)
                if self.cfg.detail_objective == "energy":
                    z = crop_to(self._regress(level, cond, labels, self.cfg.detail_noise * eps), tuple(grid))
                elif self.cfg.detail_objective == "gaussian":
                    z = crop_to(gaussian_detail_sample(self._regress(level, cond, labels), eps, self.cfg.detail_noise),
                                tuple(grid))
                else:
                    z = sample_latents(_Conditioned(self.details[level - 1], cond), scheduler, eps, labels,
                                       self.null_label, 1.0, steps, tuple(grid))
            merged = merge_level(low, self._detail(z, level, inverse=True), haar)
            low = torch.maximum(merged, neighbourhood_floor(low, haar)) if self.cfg.detail_floor else merged
        return low

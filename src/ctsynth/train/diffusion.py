"""Stage 2: the class-conditional latent diffusion UNet on the frozen autoencoder's latents.

First the training studies are encoded once (Haar coefficients or latent means, whole volumes; rank 0) into
``RUN/diffusion/latents.safetensors`` with their per-channel mean (``shift``) and ``1 / std`` (``scale``):
the UNet sees every channel standardised, so the Haar detail bands are as loud as the low-pass band. Each
step draws latents in the deterministic order of :mod:`ctsynth.train.common`, standardises and pads them,
and takes one denoising loss (DDPM/v-prediction for DDIM sampling, or rectified flow) with per-sample noise
(:func:`ctsynth.models.diffusion.training_draws`); the EMA copy of the UNet is what sampling uses. The loop
around a step (resume, NaN guard, logs, stopping, time budget, checkpoints) is
:func:`ctsynth.train.runner.run_stage`'s. Outputs in ``RUN/diffusion/``: checkpoints, ``log.jsonl``,
``model.safetensors`` (``unet`` and ``ema``) and, last, ``done.json`` (latent scale and shape, labels).

With ``diffusion.cascade`` the stage trains a :class:`ctsynth.models.cascade.WaveletCascade` instead: the
training volumes themselves are held in memory (padded to the Haar levels' multiple), the module computes
their bands and its own loss, and its band statistics are buffers saved with its weights.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..checkpoint import save_weights, write_safetensors
from ..config import Config, DiffusionConfig, TrainConfig
from ..errors import CTSynthError
from ..models.autoencoder import crop_to, downsampling_factor, encode_volume, pad_to_multiple
from ..models import build_diffusion_model
from ..models.cascade import DetailCritics
from ..models.diffusion import (build_scheduler, pad_latents, standardise, training_draws, training_loss,
                                ema_decay_at, update_ema)
from ..data import CacheVolumes, random_flips, random_shifts, random_zooms
from ..preprocess.window import denormalise
from ..runs import load_frozen_autoencoder
from ..segment.body import body_mask
from .common import frozen, label_indices, sample_ids, study_for_sample, write_json
from .runner import Clip, Stage

STAGE = "diffusion"


def encode_training_set(fabric, config: Config, prep_dir: Path, run_dir: Path, entries: list[dict]) -> dict:
    """Latents of the training studies + labels + per-channel ``shift`` (mean) and ``scale`` (1 / std), cached
    in ``latents.safetensors``."""
    path = run_dir / STAGE / "latents.safetensors"
    if fabric.global_rank == 0 and not path.is_file():
        ae = load_frozen_autoencoder(run_dir, config, fabric.device)
        factor = downsampling_factor(config.autoencoder)
        mus = []
        volumes = CacheVolumes(prep_dir, entries=entries)
        for k in range(len(volumes)):
            with fabric.autocast():
                mus.append(encode_volume(ae, volumes[k]["image"][None].to(fabric.device), factor).float().cpu())
        latents = torch.cat(mus)
        shift = latents.double().mean(dim=(0, 2, 3, 4))
        std = latents.double().std(dim=(0, 2, 3, 4))
        scale = torch.where(std > 0, 1.0 / std, torch.ones_like(std))
        labels = torch.tensor(label_indices(entries, config.data.labels, prep_dir), dtype=torch.int64)
        write_safetensors(path, {"latents": latents.contiguous(), "labels": labels, "shift": shift.float(),
                                 "scale": scale.float()})
    fabric.barrier()
    data = load_file(str(path))
    if data["latents"].shape[0] != len(entries) or "shift" not in data:
        raise CTSynthError("latents.safetensors does not match the cache's training studies", path,
                           "delete it and resume: it is recomputed")
    return data


def training_images(config: Config, prep_dir: Path, entries: list[dict]) -> dict:
    """The cascade's training data: the volumes ``(n, 1, z, y, x)`` in [-1, 1], padded (replicating the border)
    to a multiple of ``2**haar_levels``, their labels and their spacings ``(n, 3)`` in mm."""
    volumes = CacheVolumes(prep_dir, entries=entries)
    m = 2 ** config.autoencoder.haar_levels
    images = torch.cat([pad_to_multiple(volumes[k]["image"][None], m)[0] for k in range(len(volumes))])
    labels = torch.tensor(label_indices(entries, config.data.labels, prep_dir), dtype=torch.int64)
    spacing = torch.tensor([e["spacing_mm"] for e in entries], dtype=torch.float64)
    return {"latents": images.float(), "labels": labels, "spacing_mm": spacing}


def body_region(hu_window: tuple[float, float]):
    """``volumes (n, 1, z, y, x)`` in [-1, 1] -> their body masks (bool, same shape): ``diffusion.calibration_region:
    body``."""
    def region(volumes: torch.Tensor) -> torch.Tensor:
        hu = denormalise(volumes.detach().float().cpu().numpy(), hu_window)
        return torch.from_numpy(np.stack([body_mask(v[0])[None] for v in hu]))
    return region


def fit_after_training(model, config: Config, data: dict) -> None:
    """What a cascade fits after training, on the weights that sample (the EMA's) and the training data ``data``
    (as :func:`training_images` gives it): first the residual banks (``diffusion.detail_residuals``, on the
    training volumes), then the output calibration (``diffusion.calibration_samples`` volumes per class, the
    config's guidance and steps, seeded by ``train.seed``; its samples draw from the banks). The training stage
    calls it at its end, the quality benchmark for an earlier checkpoint's weights."""
    cfg = config.diffusion
    if any(cfg.detail_residuals):
        model.fit_residuals(data["latents"], data["labels"], config.train.seed)
    if cfg.calibration_samples > 0:
        model.fit_calibration(crop_to(data["latents"], tuple(config.data.shape)), cfg.calibration_samples,
                              len(config.data.labels), build_scheduler(cfg), cfg.guidance, cfg.sample_steps,
                              config.train.seed,
                              region=body_region(config.data.hu_window) if cfg.calibration_region == "body" else None)


def accumulate_gradients(fabric, unet, scheduler, latents: torch.Tensor, labels: torch.Tensor, step: int,
                         cfg: DiffusionConfig, tcfg: TrainConfig, null_label: int, poison: bool = False,
                         critics=None, spacing_mm: torch.Tensor | None = None) -> float:
    """Forward and backward of one optimizer step's ``grad_accum`` micro-batches (standardised, unpadded
    ``latents`` of the whole training set); returns the step's mean loss (NaN when ``poison``: tests of the NaN
    guard). DDP synchronises on the last only. ``critics`` (the cascade's ``detail_adv_weight``): frozen in the
    cascade's pass, whose adversarial loss reaches only the detail models, then trained on the bands it made.
    ``spacing_mm`` ``(n, 3)``: the training volumes' spacings (the cascade's ``spacing_condition``)."""
    total = 0.0
    n = latents.shape[0]
    for micro in range(tcfg.grad_accum):
        ids = sample_ids(step, micro, tcfg.grad_accum, fabric.global_rank, fabric.world_size, cfg.batch_size)
        idx = torch.tensor([study_for_sample(k, n, tcfg.seed) for k in ids])
        with fabric.no_backward_sync(unet, enabled=micro < tcfg.grad_accum - 1):
            if cfg.cascade:
                volumes = random_shifts(latents[idx], ids, tcfg.seed, cfg.augment_shift)
                base = random_zooms(volumes, ids, tcfg.seed, cfg.augment_zoom)  # each returns its input when off
                detail = random_flips(volumes, ids, tcfg.seed, cfg.augment_detail_flip)
                with frozen(critics.module) if critics is not None else nullcontext() as raw:
                    loss = unet(detail.to(fabric.device), labels[idx].to(fabric.device), ids, tcfg.seed, scheduler,
                                None if base is detail else base.to(fabric.device), raw,
                                None if spacing_mm is None else spacing_mm[idx])
            else:
                z0 = pad_latents(latents[idx], cfg).to(fabric.device)
                noise, t, drop = training_draws(ids, tcfg.seed, tuple(z0.shape[1:]), scheduler, cfg.label_dropout,
                                                fabric.device)
                loss = training_loss(unet, scheduler, z0, labels[idx].to(fabric.device), null_label, noise, t, drop)
            if poison:
                loss = loss * float("nan")
            fabric.backward(loss / tcfg.grad_accum)
        if critics is not None:
            with fabric.no_backward_sync(critics, enabled=micro < tcfg.grad_accum - 1):
                fabric.backward(critics(unet.module.critic_batches) / (len(ids) * tcfg.grad_accum))
        total += float(loss.detach()) / tcfg.grad_accum
    return total


class DiffusionStage(Stage):
    """Stage 2 for :func:`ctsynth.train.runner.run_stage`: what is its own (see the module docstring)."""

    name = STAGE

    def __init__(self, fabric, config: Config, prep_dir: Path, run_dir: Path, entries: dict[str, list]) -> None:
        self.fabric, self.config, self.prep_dir, self.run_dir, self.entries = fabric, config, prep_dir, run_dir, entries
        self.cfg, self.tcfg = config.diffusion, config.train
        self.steps, self.lr = self.cfg.steps, self.cfg.lr
        self.null_label = len(config.data.labels)
        if self.cfg.calibration_samples < 0:
            raise CTSynthError(f"diffusion.calibration_samples must be at least 0, got {self.cfg.calibration_samples}",
                               fix="set it to 0, or to a few volumes per class (e.g. 8)")
        for name, on in (("calibration_samples", self.cfg.calibration_samples > 0),
                         ("detail_residuals", any(self.cfg.detail_residuals)),
                         ("detail_floor", self.cfg.detail_floor),
                         ("spacing_condition", self.cfg.spacing_condition)):
            if on and not self.cfg.cascade:  # the cascade's alone: not silently ignored
                raise CTSynthError(f"diffusion.{name} ({getattr(self.cfg, name)}) needs diffusion.cascade: true",
                                   fix=f"leave {name} out, or use the cascade")
        for level, scale in enumerate(self.cfg.detail_residuals, start=1):
            grid = [n // 2 ** level for n in config.data.shape]  # the level's band: the bank's patches must fit
            if scale > 0 and min(grid) < self.cfg.detail_residual_patch:
                raise CTSynthError(f"diffusion.detail_residual_patch ({self.cfg.detail_residual_patch}) is larger than "
                                   f"Haar level {level}'s grid {grid} (data.shape / 2^{level})",
                                   fix=f"use detail_residual_patch: {min(grid)} or less, or a residual scale of 0 at "
                                       f"level {level}")

    def load_data(self, fabric) -> None:
        if self.cfg.cascade:
            data = training_images(self.config, self.prep_dir, self.entries["train"])
            self.latents, self.labels, self.spacing_mm = data["latents"], data["labels"], data["spacing_mm"]
            self.shift = self.scale = torch.zeros(0)
        else:
            data = encode_training_set(fabric, self.config, self.prep_dir, self.run_dir, self.entries["train"])
            self.shift, self.scale = data["shift"], data["scale"]
            self.latents, self.labels = standardise(data["latents"], self.shift, self.scale), data["labels"]
            self.spacing_mm = None

    def build(self, fabric) -> None:
        unet = build_diffusion_model(self.config)  # after seeding: its initial weights come from the seed
        if self.cfg.cascade:
            unet.set_statistics(self.latents, self.spacing_mm, self.labels)
            if self.cfg.base_max_epochs > 0:
                unet.base_sample_limit = int(round(self.cfg.base_max_epochs * len(self.latents)))
        ema = copy.deepcopy(unet).requires_grad_(False)
        opt = torch.optim.AdamW(unet.parameters(), lr=self.cfg.lr, weight_decay=self.tcfg.weight_decay)
        self.unet, self.opt = fabric.setup(unet, opt)
        self.ema = ema.to(fabric.device)
        self.scheduler = build_scheduler(self.cfg)
        self.modules, self.optimizers = {"unet": self.unet, "ema": self.ema}, {"opt": self.opt}
        self.critics = self.opt_critics = None
        if self.cfg.cascade and self.cfg.detail_adv_weight > 0:
            critics = DetailCritics(self.cfg, unet.detail_levels)
            opt_c = torch.optim.AdamW(critics.parameters(), lr=self.cfg.lr, weight_decay=self.tcfg.weight_decay)
            self.critics, self.opt_critics = fabric.setup(critics, opt_c)
            self.modules["critics"], self.optimizers["opt_critics"] = self.critics, self.opt_critics

    def accumulate(self, step: int, poison: bool) -> tuple[dict[str, float], list[Clip]]:
        loss = accumulate_gradients(self.fabric, self.unet, self.scheduler, self.latents, self.labels, step, self.cfg,
                                    self.tcfg, self.null_label, poison, self.critics, self.spacing_mm)
        clip = [(self.unet, self.opt, self.tcfg.max_grad_norm)]
        return {"loss": loss}, clip + ([(self.critics, self.opt_critics, 0.0)] if self.critics is not None else [])

    def update(self, step: int) -> None:
        decay = ema_decay_at(self.cfg.ema_decay, step)
        model = self.unet.module
        if self.opt_critics is not None:
            self.opt_critics.step()
        if self.cfg.cascade and self._base_done(step):
            # Past diffusion.base_max_epochs the base model and its EMA stay exactly as they were: AdamW skips a
            # parameter without a gradient (no momentum, no weight decay), and only the details' EMA moves.
            for p in model.base.parameters():
                p.grad = None
            self.opt.step()
            update_ema(self.ema.details, model.details, decay)
            return
        self.opt.step()
        update_ema(self.ema, model, decay)

    def _base_done(self, steps_done: int) -> bool:
        """Whether every sample of the step just done (number ``steps_done - 1``: the runner calls
        :meth:`update` with the count of steps done) is past the base model's bound (``base_sample_limit``)."""
        limit = self.unet.module.base_sample_limit
        first = sample_ids(steps_done - 1, 0, self.tcfg.grad_accum, 0, self.fabric.world_size, self.cfg.batch_size)[0]
        return limit is not None and first >= limit

    def finish(self, step: int, train_seconds: float) -> None:
        stage_dir = self.run_dir / STAGE
        if self.cfg.cascade:  # the EMA weights are what sampling uses
            fit_after_training(self.ema, self.config, {"latents": self.latents, "labels": self.labels})
        save_weights(stage_dir / "model.safetensors", {"unet": self.unet.module.state_dict(),
                                                       "ema": self.ema.state_dict()})
        write_json(stage_dir / "done.json", {
            "stage": STAGE, "step": step, "weights": "model.safetensors", "config_hash": self.config.hash(),
            "train_seconds": round(train_seconds, 1), "latent_shift": self.shift.tolist(),
            "latent_scale": self.scale.tolist(), "latent_shape": list(self.latents.shape[1:]),
            "labels": list(self.config.data.labels), "null_label": self.null_label,
            "scheduler": self.cfg.scheduler, "cascade": self.cfg.cascade})

"""Stage 1: the KL autoencoder + patch discriminator on random patches, then held-out PSNR/SSIM.
With ``autoencoder.kind: haar`` there is nothing to train: the stage only measures the transform's
round trip on the held-out studies and writes ``done.json``.

Per step (``grad_accum`` micro-batches each): generator loss = L1 + kl_weight * KL (+ adv_weight * LSGAN
generator loss once ``step >= adv_start_step``), then the discriminator's LSGAN loss on real vs detached
reconstructions. The loop around a step (resume, NaN guard, logs, stopping, checkpoints) is
:func:`ctsynth.train.runner.run_stage`'s. Outputs in ``RUN/autoencoder/``: checkpoints, ``log.jsonl``,
``model.safetensors``, ``metrics.json`` (held-out reconstruction PSNR/SSIM) and, last, ``done.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import save_weights
from ..config import Config
from ..models.autoencoder import (build_autoencoder, build_discriminator, decode_latent, downsampling_factor,
                                  encode_volume, is_trained, kl_loss)
from ..data import Augment, CachePatchDataset, CacheVolumes
from .common import StepSampler, frozen, write_json
from .runner import Clip, Stage

STAGE = "autoencoder"


class AutoencoderStage(Stage):
    """Stage 1 for :func:`ctsynth.train.runner.run_stage`: what is its own (see the module docstring)."""

    name = STAGE
    honours_time_budget = False  # stage 2 trains on its latents: it runs its whole schedule

    def __init__(self, fabric, config: Config, prep_dir: Path, run_dir: Path, entries: dict[str, list]) -> None:
        self.fabric, self.config, self.prep_dir, self.entries = fabric, config, prep_dir, entries
        self.stage_dir = run_dir / STAGE
        self.cfg, self.tcfg = config.autoencoder, config.train
        self.steps, self.lr = self.cfg.steps, self.cfg.lr
        self.ae: Any = None

    def trains(self) -> bool:
        return is_trained(self.cfg)

    def load_data(self, fabric) -> None:
        self.dataset = CachePatchDataset(self.prep_dir, patch=self.cfg.patch, entries=self.entries["train"],
                                         seed=self.tcfg.seed, augment=Augment() if self.tcfg.augment else None)

    def build(self, fabric) -> None:
        from monai.losses import PatchAdversarialLoss

        cfg, tcfg = self.cfg, self.tcfg
        ae = build_autoencoder(cfg, tcfg.grad_checkpointing)
        disc = build_discriminator(cfg)
        opt_g = torch.optim.Adam(ae.parameters(), lr=cfg.lr, weight_decay=tcfg.weight_decay)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, weight_decay=tcfg.weight_decay)
        self.ae, self.opt_g = fabric.setup(ae, opt_g)
        self.disc, self.opt_d = fabric.setup(disc, opt_d)
        self.modules = {"autoencoder": self.ae, "discriminator": self.disc}
        self.optimizers = {"opt_g": self.opt_g, "opt_d": self.opt_d}
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares")

    def start(self, step: int) -> None:
        cfg, tcfg, fabric = self.cfg, self.tcfg, self.fabric
        sampler = StepSampler(step, tcfg.grad_accum, fabric.global_rank, fabric.world_size, cfg.batch_size,
                              len(self.entries["train"]), tcfg.seed)
        # its own generator: starting an iterator must not draw from the global RNG (exact resume)
        loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=tcfg.num_workers,
                            generator=torch.Generator().manual_seed(tcfg.seed))
        self.batches = iter(fabric.setup_dataloaders(loader, use_distributed_sampler=False))

    def uses_adversary(self, step: int) -> bool:
        return self.cfg.adv_weight > 0 and step >= self.cfg.adv_start_step

    def accumulate(self, step: int, poison: bool) -> tuple[dict[str, float], list[Clip]]:
        cfg, accum, fabric = self.cfg, self.tcfg.grad_accum, self.fabric
        ae, disc, adv_loss = self.ae, self.disc, self.adv_loss
        use_adv = self.uses_adversary(step)
        totals = {"loss": 0.0, "l1": 0.0, "kl": 0.0, "adv_g": 0.0, "disc": 0.0}
        for micro in range(accum):
            x = next(self.batches)["image"]
            last = micro == accum - 1
            with fabric.no_backward_sync(ae, enabled=not last):
                recon, z_mu, z_sigma = ae(x)
                l1 = (recon.float() - x.float()).abs().mean()
                kl = kl_loss(z_mu.float(), z_sigma.float())
                loss = l1 + cfg.kl_weight * kl
                if use_adv:
                    with frozen(disc.module) as raw_disc, fabric.autocast():
                        adv_g = adv_loss(raw_disc(recon)[-1], target_is_real=True, for_discriminator=False)
                    loss = loss + cfg.adv_weight * adv_g
                    totals["adv_g"] += float(adv_g.detach()) / accum
                if poison:
                    loss = loss * float("nan")
                fabric.backward(loss / accum)
            if use_adv:
                with fabric.no_backward_sync(disc, enabled=not last):
                    d_loss = 0.5 * (adv_loss(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                                    + adv_loss(disc(x)[-1], target_is_real=True, for_discriminator=True))
                    fabric.backward(d_loss / accum)
                totals["disc"] += float(d_loss.detach()) / accum
            totals["loss"] += float(loss.detach()) / accum
            totals["l1"] += float(l1.detach()) / accum
            totals["kl"] += float(kl.detach()) / accum
        clip = [(ae, self.opt_g, self.tcfg.max_grad_norm)] + ([(disc, self.opt_d, 0.0)] if use_adv else [])
        return totals, clip

    def update(self, step: int) -> None:
        self.opt_g.step()
        if self.uses_adversary(step - 1):
            self.opt_d.step()

    def finish(self, step: int, train_seconds: float) -> None:
        ae = self.ae.module if self.ae is not None else build_autoencoder(self.cfg).to(self.fabric.device)
        finish_autoencoder(ae, self.config, self.prep_dir, self.stage_dir, self.entries, step)


def finish_autoencoder(ae: torch.nn.Module, config: Config, prep_dir: Path, stage_dir: Path,
                       entries: dict[str, list], step: int) -> None:
    """Final weights, held-out reconstruction metrics, then ``done.json`` (written last: the stage's marker)."""
    trained = is_trained(config.autoencoder)
    if trained:
        save_weights(stage_dir / "model.safetensors", {"autoencoder": ae.state_dict()})
    split = "held_out" if entries["held_out"] else "train"
    eval_entries = (entries["held_out"] or entries["train"])[: config.autoencoder.eval_studies]
    metrics = reconstruction_metrics(ae, config, prep_dir, eval_entries)
    metrics["split"] = split
    if split == "train":
        metrics["note"] = "the cache has no held-out studies: measured on training studies (optimistic)"
    write_json(stage_dir / "metrics.json", metrics)
    write_json(stage_dir / "done.json", {"stage": STAGE, "step": step, "kind": config.autoencoder.kind,
                                         "weights": "model.safetensors" if trained else None,
                                         "config_hash": config.hash()})


@torch.no_grad()
def reconstruction_metrics(ae: torch.nn.Module, config: Config, prep_dir: Path,
                           eval_entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-volume reconstruction PSNR (dB) and SSIM on [-1, 1] images (data range 2), MONAI metrics, and the
    largest absolute error. An exact round trip has an infinite PSNR, recorded as None (JSON has no infinity)."""
    from monai.metrics import PSNRMetric, SSIMMetric

    ae.eval()
    device = next(ae.parameters(), next(ae.buffers(), torch.zeros(()))).device
    factor = downsampling_factor(config.autoencoder)
    psnr = PSNRMetric(max_val=2.0)
    shape = config.data.shape
    ssim = SSIMMetric(spatial_dims=3, data_range=2.0, win_size=min(7, *[n - (n + 1) % 2 for n in shape]))
    per_study = []
    volumes = CacheVolumes(prep_dir, entries=eval_entries) if eval_entries else []
    for k, entry in enumerate(eval_entries):
        x = volumes[k]["image"][None].to(device)
        recon = decode_latent(ae, encode_volume(ae, x, factor), tuple(x.shape[-3:])).float().clamp(-1, 1)
        p, s = float(psnr(recon, x).mean()), float(ssim(recon, x).mean())
        per_study.append({"id": entry["id"], "psnr_db": p if math.isfinite(p) else None, "ssim": s,
                          "max_abs_error": float((recon - x.float()).abs().max())})
    ae.train()
    finite = [r["psnr_db"] for r in per_study if r["psnr_db"] is not None]
    return {"psnr_db": float(np.mean(finite)) if finite else None,
            "max_abs_error": max((r["max_abs_error"] for r in per_study), default=None),
            "ssim": float(np.mean([r["ssim"] for r in per_study])) if per_study else None,
            "n_studies": len(per_study), "per_study": per_study}

"""Stage 1 loop: the KL autoencoder + patch discriminator on random patches, then held-out PSNR/SSIM.
With ``autoencoder.kind: haar`` there is nothing to train: the stage only measures the transform's
round trip on the held-out studies and writes ``done.json``.

Per step (``grad_accum`` micro-batches each): generator loss = L1 + kl_weight * KL (+ adv_weight * LSGAN
generator loss once ``step >= adv_start_step``), then the discriminator's LSGAN loss on real vs detached
reconstructions. Outputs in ``RUN/autoencoder/``: checkpoints, ``log.jsonl``, ``model.safetensors``,
``metrics.json`` (held-out reconstruction PSNR/SSIM) and, last, ``done.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import save_weights
from ..config import Config
from ..models.autoencoder import (build_autoencoder, build_discriminator, decode_latent, downsampling_factor,
                                  encode_volume, is_trained, kl_loss)
from ..data import Augment, CachePatchDataset, CacheVolumes
from .common import JsonlLog, StepSampler, StopFlag, now, progress_bar, skip_reason, write_json
from .state import check_fresh_or_resume, load_stage, restore_after_non_finite, save_stage, set_lr, warn

STAGE = "autoencoder"


def train_autoencoder(fabric, config: Config, prep_dir: Path, run_dir: Path, entries: dict[str, list],
                      resume: bool = False, stop_after: int | None = None,
                      fault: Callable[[int], bool] | None = None) -> str:
    """Train stage 1 into ``run_dir/autoencoder``. Returns "done", "stopped" (signal or ``stop_after``).

    ``fault(step) -> True`` poisons that step's loss with NaN (tests of the non-finite guard).
    """
    from monai.losses import PatchAdversarialLoss

    cfg, tcfg = config.autoencoder, config.train
    stage_dir = run_dir / STAGE
    if (stage_dir / "done.json").is_file():
        return "done"
    check_fresh_or_resume(stage_dir, resume)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not is_trained(cfg):
        if fabric.global_rank == 0:
            finish_autoencoder(build_autoencoder(cfg).to(fabric.device), config, prep_dir, stage_dir, entries, 0)
        fabric.barrier()
        return "done"
    fabric.seed_everything(tcfg.seed + fabric.global_rank, verbose=False)

    ae = build_autoencoder(cfg, tcfg.grad_checkpointing)
    disc = build_discriminator(cfg)
    opt_g = torch.optim.Adam(ae.parameters(), lr=cfg.lr, weight_decay=tcfg.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, weight_decay=tcfg.weight_decay)
    ae, opt_g = fabric.setup(ae, opt_g)
    disc, opt_d = fabric.setup(disc, opt_d)
    modules, optimizers = {"autoencoder": ae, "discriminator": disc}, {"opt_g": opt_g, "opt_d": opt_d}
    adv_loss = PatchAdversarialLoss(criterion="least_squares")

    step, lr_scale = 0, 1.0
    state = load_stage(fabric, stage_dir, modules, optimizers, restore_rng=True) if resume else None
    if state is not None:
        step, lr_scale = state["step"], state.get("lr_scale", 1.0)
        warn(fabric, f"resuming {STAGE} from step {step} ({state['path']})")
    set_lr(optimizers, cfg.lr, lr_scale)

    dataset = CachePatchDataset(prep_dir, patch=cfg.patch, entries=entries["train"], seed=tcfg.seed,
                                augment=Augment() if tcfg.augment else None)

    def make_loader(start: int):
        sampler = StepSampler(start, tcfg.grad_accum, fabric.global_rank, fabric.world_size, cfg.batch_size,
                              len(entries["train"]), tcfg.seed)
        # its own generator: starting an iterator must not draw from the global RNG (exact resume)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=tcfg.num_workers,
                            generator=torch.Generator().manual_seed(tcfg.seed))
        return iter(fabric.setup_dataloaders(loader, use_distributed_sampler=False))

    batches = make_loader(step)
    log = JsonlLog(stage_dir / "log.jsonl", fabric.global_rank == 0)
    bar = progress_bar(fabric.global_rank == 0, cfg.steps, step, STAGE)
    bad_in_a_row, status, t0 = 0, "done", now()
    with StopFlag() as stop:
        while step < cfg.steps:
            use_adv = cfg.adv_weight > 0 and step >= cfg.adv_start_step
            totals = {"loss": 0.0, "l1": 0.0, "kl": 0.0, "adv_g": 0.0, "disc": 0.0}
            for micro in range(tcfg.grad_accum):
                x = next(batches)["image"]
                last = micro == tcfg.grad_accum - 1
                with fabric.no_backward_sync(ae, enabled=not last):
                    recon, z_mu, z_sigma = ae(x)
                    l1 = (recon.float() - x.float()).abs().mean()
                    kl = kl_loss(z_mu.float(), z_sigma.float())
                    loss = l1 + cfg.kl_weight * kl
                    if use_adv:
                        # the raw discriminator (no DDP hooks, frozen): gradients reach only the autoencoder
                        raw_disc = disc.module.requires_grad_(False)
                        with fabric.autocast():
                            adv_g = adv_loss(raw_disc(recon)[-1], target_is_real=True, for_discriminator=False)
                        raw_disc.requires_grad_(True)
                        loss = loss + cfg.adv_weight * adv_g
                        totals["adv_g"] += float(adv_g.detach()) / tcfg.grad_accum
                    if fault is not None and fault(step):
                        loss = loss * float("nan")
                    fabric.backward(loss / tcfg.grad_accum)
                if use_adv:
                    with fabric.no_backward_sync(disc, enabled=not last):
                        d_loss = 0.5 * (adv_loss(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                                        + adv_loss(disc(x)[-1], target_is_real=True, for_discriminator=True))
                        fabric.backward(d_loss / tcfg.grad_accum)
                    totals["disc"] += float(d_loss.detach()) / tcfg.grad_accum
                totals["loss"] += float(loss.detach()) / tcfg.grad_accum
                totals["l1"] += float(l1.detach()) / tcfg.grad_accum
                totals["kl"] += float(kl.detach()) / tcfg.grad_accum

            clip = [(ae, opt_g, tcfg.max_grad_norm)] + ([(disc, opt_d, 0.0)] if use_adv else [])
            skipped = skip_reason(fabric, all(math.isfinite(v) for v in totals.values()), clip)
            if skipped:
                opt_g.zero_grad(set_to_none=True)
                opt_d.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                log.write({"step": step, "skipped": skipped, **{k: str(v) for k, v in totals.items()}})
                if bad_in_a_row >= tcfg.nan_patience:
                    restored, lr_scale = restore_after_non_finite(fabric, stage_dir, modules, optimizers, cfg.lr,
                                                                  lr_scale, bad_in_a_row)
                    if restored is not None:
                        step = restored
                        batches = make_loader(step)
                    bad_in_a_row = 0
                    bar.n = step
                continue
            bad_in_a_row = 0
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            if use_adv:
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{totals['loss']:.4f}", l1=f"{totals['l1']:.4f}")
            if step % tcfg.log_every == 0 or step == cfg.steps:
                log.write({"step": step, **totals, "lr": cfg.lr * lr_scale, "time_s": round(now() - t0, 3)})
            stopping = fabric.strategy.reduce_boolean_decision(
                stop.requested or (stop_after is not None and step >= stop_after), all=False)
            if step % tcfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                save_stage(fabric, stage_dir, step, modules, optimizers, config, {"stage": STAGE, "lr_scale": lr_scale})
            if stopping and step < cfg.steps:
                status = "stopped"
                break
    bar.close()
    log.close()
    if status == "done" and fabric.global_rank == 0:
        finish_autoencoder(ae.module, config, prep_dir, stage_dir, entries, step)
    fabric.barrier()
    return status


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

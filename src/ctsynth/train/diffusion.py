"""Stage 2 loop: the class-conditional latent diffusion UNet on the frozen autoencoder's latents.

First the training studies are encoded once (Haar coefficients or latent means, whole volumes; rank 0) into
``RUN/diffusion/latents.safetensors`` with their per-channel mean (``shift``) and ``1 / std`` (``scale``):
the UNet sees every channel standardised, so the Haar detail bands are as loud as the low-pass band. Each
step draws latents in the deterministic order of :mod:`ctsynth.train.common`, standardises and pads them,
and takes one denoising loss (DDPM/v-prediction for DDIM sampling, or rectified flow) with per-sample noise
(:func:`ctsynth.models.diffusion.training_draws`); the EMA copy of the UNet is what sampling uses.
Outputs in ``RUN/diffusion/``: checkpoints, ``log.jsonl``, ``model.safetensors`` (``unet`` and ``ema``),
and, last, ``done.json`` (latent scale and shape, labels).

With ``diffusion.cascade`` the stage trains a :class:`ctsynth.models.cascade.WaveletCascade` instead: the
training volumes themselves are held in memory (padded to the Haar levels' multiple), the module computes
their bands and its own loss, and its band statistics are buffers saved with its weights.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint import load_weights, save_weights
from ..config import Config, DiffusionConfig, TrainConfig
from ..errors import CTSynthError
from ..io.atomic import atomic_file
from ..models.autoencoder import (build_autoencoder, downsampling_factor, encode_volume, is_trained,
                                  pad_to_multiple)
from ..models import build_diffusion_model
from ..models.diffusion import (build_scheduler, pad_latents, standardise, training_draws, training_loss,
                                ema_decay_at, update_ema)
from ..data import CacheVolumes
from .common import (JsonlLog, StopFlag, label_indices, now, progress_bar, sample_ids, skip_reason, study_for_sample,
                     write_json)
from .state import check_fresh_or_resume, load_stage, restore_after_non_finite, save_stage, set_lr, warn

STAGE = "diffusion"


def load_frozen_autoencoder(run_dir: Path, config: Config, device: torch.device | str = "cpu") -> torch.nn.Module:
    done = run_dir / "autoencoder" / "done.json"
    if not done.is_file():
        raise CTSynthError("the autoencoder stage has not finished", run_dir / "autoencoder",
                           "run `ctsynth train` (with --resume) until stage 1 is done")
    ae = build_autoencoder(config.autoencoder)
    if not is_trained(config.autoencoder):
        return ae.to(device).eval()
    try:
        ae.load_state_dict(load_weights(run_dir / "autoencoder" / "model.safetensors")["autoencoder"])
    except (KeyError, RuntimeError) as exc:
        raise CTSynthError(f"autoencoder weights do not match the config ({exc})",
                           run_dir / "autoencoder" / "model.safetensors", "re-train stage 1") from exc
    return ae.to(device).eval().requires_grad_(False)


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
        with atomic_file(path) as tmp:
            save_file({"latents": latents.contiguous(), "labels": labels, "shift": shift.float(),
                       "scale": scale.float()}, str(tmp))
    fabric.barrier()
    data = load_file(str(path))
    if data["latents"].shape[0] != len(entries) or "shift" not in data:
        raise CTSynthError("latents.safetensors does not match the cache's training studies", path,
                           "delete it and resume: it is recomputed")
    return data


def training_images(config: Config, prep_dir: Path, entries: list[dict]) -> dict:
    """The cascade's training data: the volumes ``(n, 1, z, y, x)`` in [-1, 1], padded (replicating the border)
    to a multiple of ``2**haar_levels``, and their labels."""
    volumes = CacheVolumes(prep_dir, entries=entries)
    m = 2 ** config.autoencoder.haar_levels
    images = torch.cat([pad_to_multiple(volumes[k]["image"][None], m)[0] for k in range(len(volumes))])
    labels = torch.tensor(label_indices(entries, config.data.labels, prep_dir), dtype=torch.int64)
    return {"latents": images.float(), "labels": labels}


def accumulate_gradients(fabric, unet, scheduler, latents: torch.Tensor, labels: torch.Tensor, step: int,
                         cfg: DiffusionConfig, tcfg: TrainConfig, null_label: int,
                         fault: Callable[[int], bool] | None = None) -> float:
    """Forward and backward of one optimizer step's ``grad_accum`` micro-batches (standardised, unpadded
    ``latents`` of the whole training set); returns the step's mean loss. DDP synchronises on the last only."""
    total = 0.0
    n = latents.shape[0]
    for micro in range(tcfg.grad_accum):
        ids = sample_ids(step, micro, tcfg.grad_accum, fabric.global_rank, fabric.world_size, cfg.batch_size)
        idx = torch.tensor([study_for_sample(k, n, tcfg.seed) for k in ids])
        with fabric.no_backward_sync(unet, enabled=micro < tcfg.grad_accum - 1):
            if cfg.cascade:
                loss = unet(latents[idx].to(fabric.device), labels[idx].to(fabric.device), ids, tcfg.seed, scheduler)
            else:
                z0 = pad_latents(latents[idx], cfg).to(fabric.device)
                noise, t, drop = training_draws(ids, tcfg.seed, tuple(z0.shape[1:]), scheduler, cfg.label_dropout,
                                                fabric.device)
                loss = training_loss(unet, scheduler, z0, labels[idx].to(fabric.device), null_label, noise, t, drop)
            if fault is not None and fault(step):
                loss = loss * float("nan")
            fabric.backward(loss / tcfg.grad_accum)
        total += float(loss.detach()) / tcfg.grad_accum
    return total


def train_diffusion(fabric, config: Config, prep_dir: Path, run_dir: Path, entries: dict[str, list],
                    resume: bool = False, stop_after: int | None = None,
                    fault: Callable[[int], bool] | None = None) -> str:
    """Train stage 2 into ``run_dir/diffusion``. Returns "done" or "stopped"."""
    cfg, tcfg = config.diffusion, config.train
    stage_dir = run_dir / STAGE
    if (stage_dir / "done.json").is_file():
        return "done"
    check_fresh_or_resume(stage_dir, resume)
    stage_dir.mkdir(parents=True, exist_ok=True)
    null_label = len(config.data.labels)
    if cfg.cascade:
        data = training_images(config, prep_dir, entries["train"])
        latents, labels = data["latents"], data["labels"]
        shift = scale = torch.zeros(0)
    else:
        data = encode_training_set(fabric, config, prep_dir, run_dir, entries["train"])
        shift, scale = data["shift"], data["scale"]
        latents, labels = standardise(data["latents"], shift, scale), data["labels"]
    fabric.seed_everything(tcfg.seed + fabric.global_rank, verbose=False)

    unet = build_diffusion_model(config)  # after seeding: its initial weights come from the seed
    if cfg.cascade:
        unet.set_statistics(latents)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=tcfg.weight_decay)
    unet, opt = fabric.setup(unet, opt)
    ema = ema.to(fabric.device)
    scheduler = build_scheduler(cfg)
    modules, optimizers = {"unet": unet, "ema": ema}, {"opt": opt}

    step, lr_scale, seconds_before = 0, 1.0, 0.0
    state = load_stage(fabric, stage_dir, modules, optimizers, restore_rng=True) if resume else None
    if state is not None:
        step, lr_scale = state["step"], state.get("lr_scale", 1.0)
        seconds_before = float(state.get("train_seconds", 0.0))
        warn(fabric, f"resuming {STAGE} from step {step} ({state['path']})")
    set_lr(optimizers, cfg.lr, lr_scale)
    budget_s, every_s = tcfg.time_budget_min * 60.0, tcfg.checkpoint_every_min * 60.0
    next_timed = (math.floor(seconds_before / every_s) + 1) * every_s if every_s > 0 else math.inf

    log = JsonlLog(stage_dir / "log.jsonl", fabric.global_rank == 0)
    bar = progress_bar(fabric.global_rank == 0, None if budget_s > 0 else cfg.steps, step, STAGE)
    bad_in_a_row, status, t0 = 0, "done", now()
    train_s = lambda: seconds_before + now() - t0  # noqa: E731  training time over every resume
    with StopFlag() as stop:
        while step < cfg.steps:
            total = accumulate_gradients(fabric, unet, scheduler, latents, labels, step, cfg, tcfg, null_label, fault)

            skipped = skip_reason(fabric, math.isfinite(total), [(unet, opt, tcfg.max_grad_norm)])
            if skipped:
                opt.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                log.write({"step": step, "skipped": skipped, "loss": str(total)})
                if bad_in_a_row >= tcfg.nan_patience:
                    restored, lr_scale = restore_after_non_finite(fabric, stage_dir, modules, optimizers, cfg.lr,
                                                                  lr_scale, bad_in_a_row)
                    if restored is not None:
                        step = restored
                    bad_in_a_row = 0
                    bar.n = step
                continue
            bad_in_a_row = 0
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            update_ema(ema, unet.module, ema_decay_at(cfg.ema_decay, step))
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}")
            if step % tcfg.log_every == 0 or step == cfg.steps:
                log.write({"step": step, "loss": total, "lr": cfg.lr * lr_scale, "time_s": round(train_s(), 3)})
            stopping = fabric.strategy.reduce_boolean_decision(
                stop.requested or (stop_after is not None and step >= stop_after), all=False)
            # time decisions from rank 0's clock, so that every rank stops and checkpoints at the same step
            elapsed = fabric.broadcast(train_s(), src=0)
            out_of_time = budget_s > 0 and elapsed >= budget_s
            timed = elapsed >= next_timed
            if timed:
                next_timed = (math.floor(elapsed / every_s) + 1) * every_s
            if step % tcfg.checkpoint_every == 0 or step == cfg.steps or stopping or out_of_time or timed:
                save_stage(fabric, stage_dir, step, modules, optimizers, config,
                           {"stage": STAGE, "lr_scale": lr_scale, "train_seconds": elapsed})
            if out_of_time:
                warn(fabric, f"{STAGE}: the time budget of {tcfg.time_budget_min:g} min is spent at step {step}")
                break
            if stopping and step < cfg.steps:
                status = "stopped"
                break
    bar.close()
    log.close()
    if status == "done" and fabric.global_rank == 0:
        save_weights(stage_dir / "model.safetensors", {"unet": unet.module.state_dict(), "ema": ema.state_dict()})
        write_json(stage_dir / "done.json", {
            "stage": STAGE, "step": step, "weights": "model.safetensors", "config_hash": config.hash(),
            "train_seconds": round(train_s(), 1), "latent_shift": shift.tolist(), "latent_scale": scale.tolist(),
            "latent_shape": list(latents.shape[1:]), "labels": list(config.data.labels), "null_label": null_label,
            "scheduler": cfg.scheduler, "cascade": cfg.cascade})
    fabric.barrier()
    return status

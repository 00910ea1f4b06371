"""The super-resolution stages (``model: sr``): one network in-plane (``sr_inplane``), one in depth (``sr_depth``),
each a :class:`~ctsynth.train.runner.Stage` of the one loop.

Per step (``grad_accum`` micro-batches of ``sr.batch_size``): random patches of the cache's *training* volumes
(:class:`ctsynth.data.CachePatchDataset`, sample ``k`` a pure function of ``(seed, k)``, so a resumed run
sees what an uninterrupted one would), cropped to a multiple of the factor, are the targets; their
scanner-like degradation (:func:`ctsynth.models.sr.degrade`: slab-averaged thick slices, or in-plane blur
then cell averages) is the input. The loss is the mean absolute error at the output plus
``sr.intermediate_weight`` times that after the sub-pixel layer (Georgescu et al. 2020). Adam. Each network
trains for ``sr.steps`` steps or, with ``train.time_budget_min``, until the first step past that many minutes
of its own training (so the budget is per network, and ``done.json`` records the steps reached).

At the end, on up to ``sr.eval_studies`` held-out studies (whole volumes, tiled as ``ctsynth upscale``
does): PSNR and SSIM (MONAI, [-1, 1] images) of the network, of trilinear and of cubic interpolation of the
same degraded input, in ``metrics.json``. Outputs in ``RUN/sr_<axis>/``: checkpoints, ``log.jsonl``,
``model.safetensors`` (``network``), ``metrics.json`` and, last, ``done.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import save_weights
from ..config import Config
from ..data import CachePatchDataset, CacheVolumes
from ..models.sr import build_sr, degrade, scale_of, trilinear
from ..runs import sr_stage
from .common import sample_ids, write_json
from .runner import Clip, Stage


def crop_to_factor(x: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """The largest leading block of ``(b, c, z, y, x)`` whose size is a multiple of ``scale`` per axis."""
    return x[(..., *(slice(0, n - n % s) for n, s in zip(x.shape[-3:], scale)))]


class SrStage(Stage):
    """One super-resolution network for :func:`ctsynth.train.runner.run_stage` (see the module docstring)."""

    def __init__(self, axis: str, fabric, config: Config, prep_dir: Path, run_dir: Path,
                 entries: dict[str, list]) -> None:
        self.axis, self.fabric, self.config, self.prep_dir, self.run_dir = axis, fabric, config, prep_dir, run_dir
        self.entries, self.cfg, self.tcfg = entries, config.sr, config.train
        self.name = sr_stage(axis)
        self.factor = self.cfg.inplane_factor if axis == "inplane" else self.cfg.depth_factor
        self.scale = scale_of(axis, self.factor)
        # the budget is per network: each stage counts its own training time (over resumes)
        self.steps, self.lr = self.cfg.steps, self.cfg.lr
        self.net = None

    def trains(self) -> bool:
        return self.factor > 1

    def load_data(self, fabric) -> None:
        self.patches = CachePatchDataset(self.prep_dir, patch=self.cfg.patch, entries=self.entries["train"],
                                         seed=self.tcfg.seed)

    def build(self, fabric) -> None:
        net = build_sr(self.config, self.axis)
        opt = torch.optim.Adam(net.parameters(), lr=self.cfg.lr, weight_decay=self.tcfg.weight_decay)
        self.net, self.opt = fabric.setup(net, opt)
        self.modules, self.optimizers = {"network": self.net}, {"opt": self.opt}

    def accumulate(self, step: int, poison: bool) -> tuple[dict[str, float], list[Clip]]:
        tcfg, fabric, accum = self.tcfg, self.fabric, self.tcfg.grad_accum
        totals = {"loss": 0.0, "loss_output": 0.0, "loss_intermediate": 0.0}
        for micro in range(accum):
            ids = sample_ids(step, micro, accum, fabric.global_rank, fabric.world_size, self.cfg.batch_size)
            target = crop_to_factor(torch.stack([self.patches[k]["image"] for k in ids]), self.scale)
            target = target.to(fabric.device)
            with fabric.no_backward_sync(self.net, enabled=micro < accum - 1):
                mid, out = self.net(degrade(target, self.axis, self.factor))
                loss_out, loss_mid = F.l1_loss(out.float(), target), F.l1_loss(mid.float(), target)
                loss = loss_out + self.cfg.intermediate_weight * loss_mid
                if poison:
                    loss = loss * float("nan")
                fabric.backward(loss / accum)
            totals["loss"] += float(loss.detach()) / accum
            totals["loss_output"] += float(loss_out.detach()) / accum
            totals["loss_intermediate"] += float(loss_mid.detach()) / accum
        return totals, [(self.net, self.opt, tcfg.max_grad_norm)]

    def update(self, step: int) -> None:
        self.opt.step()

    def finish(self, step: int, train_seconds: float) -> None:
        stage_dir = self.run_dir / self.name
        done: dict[str, Any] = {"stage": self.name, "axis": self.axis, "factor": self.factor, "step": step,
                                "config_hash": self.config.hash(), "train_seconds": round(train_seconds, 1)}
        if self.net is not None:
            net = self.net.module
            save_weights(stage_dir / "model.safetensors", {"network": net.state_dict()})
            split = "held_out" if self.entries["held_out"] else "train"
            metrics = sr_metrics(net, self.prep_dir, (self.entries[split])[: self.cfg.eval_studies])
            metrics["split"] = split
            write_json(stage_dir / "metrics.json", metrics)
            done["weights"] = "model.safetensors"
        write_json(stage_dir / "done.json", done)


def cubic(low: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """Edge-aligned cubic B-spline interpolation (the project's resampler, order 3) of ``(1, 1, z, y, x)``."""
    from ..preprocess.resample import resample_volume
    from ..volume import CTVolume

    shape = tuple(n * s for n, s in zip(low.shape[-3:], scale))
    volume = CTVolume(hu=low[0, 0].double().numpy(), spacing_mm=(1.0, 1.0, 1.0))
    return torch.from_numpy(resample_volume(volume, shape=shape, order=3, antialias=False).hu)[None, None]


@torch.no_grad()
def sr_metrics(net, prep_dir: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-volume PSNR (dB) and SSIM on [-1, 1] images of the network, trilinear and cubic interpolation, each
    from the same degraded held-out volume (MONAI metrics, data range 2)."""
    from monai.metrics import PSNRMetric, SSIMMetric

    from ..upscale import DEFAULT_TILE, tiled_corrections

    net.eval()
    device = next(net.parameters()).device
    psnr = PSNRMetric(max_val=2.0)
    rows = []
    volumes = CacheVolumes(prep_dir, entries=entries) if entries else []
    for k, entry in enumerate(entries):
        x = crop_to_factor(volumes[k]["image"][None], net.scale)
        low = degrade(x, net.axis, net.factor)
        base = trilinear(low, net.scale)
        guesses = {"sr": (base + tiled_corrections(net, low, DEFAULT_TILE, device)).clamp(-1, 1),
                   "trilinear": base, "cubic": cubic(low, net.scale).float().clamp(-1, 1)}
        ssim = SSIMMetric(spatial_dims=3, data_range=2.0, win_size=min(7, *[n - (n + 1) % 2 for n in x.shape[-3:]]))
        row: dict[str, Any] = {"id": entry["id"]}
        for name, guess in guesses.items():
            row[f"{name}_psnr_db"] = float(psnr(guess, x).mean())
            row[f"{name}_ssim"] = float(ssim(guess, x).mean())
        rows.append(row)
    net.train()
    keys = [k for k in (rows[0] if rows else {}) if k != "id"]
    return {"axis": net.axis, "factor": net.factor, "n_studies": len(rows),
            **{k: float(np.mean([r[k] for r in rows])) for k in keys}, "per_study": rows}

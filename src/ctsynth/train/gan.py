"""The 3D-GAN baseline's one stage (``model: gan``): Wu et al. 2016 trained as published, on the stage runner.

Per step (``grad_accum`` micro-batches of ``gan.batch_size``): real volumes in the deterministic order of
:mod:`ctsynth.train.common` (whole cached volumes, padded by replicating the border to the generator's grid,
:func:`ctsynth.models.gan.padded_shape`), ``z ~ U[0, 1]`` from each sample's own generator
(:func:`ctsynth.models.diffusion.sample_generator`, so a resumed run draws what an uninterrupted one would),
the discriminator's binary cross-entropy on real vs detached generated volumes, and the generator's on its
volumes labelled real (the discriminator frozen). Both losses are computed on the same discriminator and
applied together after the runner's finiteness check (simultaneous updates). Adam with ``beta1``; the
generator's and discriminator's learning rates differ (``lr_g``, ``lr_d``). The stage trains for ``gan.steps``
steps or, with ``train.time_budget_min``, until the first step past that many minutes (``done.json`` records
the steps reached).

The discriminator-update rule of the paper: the discriminator's accuracy on the step's batch (real
classified real, generated classified generated; over every micro-batch and rank) is measured before any
update, and the discriminator is updated only if it is at most ``gan.d_accuracy_max`` (80%), so that it does
not overpower the generator early on. ``log.jsonl`` records ``d_accuracy`` and ``d_updated`` per step.

Outputs in ``RUN/gan/``: checkpoints, ``log.jsonl``, ``model.safetensors`` (``generator``, ``discriminator``)
and, last, ``done.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import save_weights
from ..config import Config
from ..data import CacheVolumes
from ..models.diffusion import sample_generator
from ..models.gan import build_gan, discriminator_accuracy, latent_noise, pad_to, padded_shape
from .common import label_indices, sample_ids, study_for_sample, write_json
from .runner import Clip, Stage

STAGE = "gan"


def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), float(real)))


class GanStage(Stage):
    """The GAN for :func:`ctsynth.train.runner.run_stage`: what is its own (see the module docstring)."""

    name = STAGE

    def __init__(self, fabric, config: Config, prep_dir: Path, run_dir: Path, entries: dict[str, list]) -> None:
        self.fabric, self.config, self.prep_dir, self.run_dir, self.entries = fabric, config, prep_dir, run_dir, entries
        self.cfg, self.tcfg = config.gan, config.train
        self.steps, self.lr = self.cfg.steps, self.cfg.lr_g
        self.update_d = True

    def base_lrs(self) -> dict[str, float]:
        return {"opt_g": self.cfg.lr_g, "opt_d": self.cfg.lr_d}

    def load_data(self, fabric) -> None:
        volumes = CacheVolumes(self.prep_dir, entries=self.entries["train"])
        grid = padded_shape(tuple(self.config.data.shape))
        self.images = torch.cat([pad_to(volumes[k]["image"][None], grid) for k in range(len(volumes))]).float()
        self.labels = torch.tensor(label_indices(self.entries["train"], self.config.data.labels, self.prep_dir))

    def build(self, fabric) -> None:
        gen, disc = build_gan(self.config)
        betas = (self.cfg.beta1, 0.999)
        opt_g = torch.optim.Adam(gen.parameters(), lr=self.cfg.lr_g, betas=betas, weight_decay=self.tcfg.weight_decay)
        opt_d = torch.optim.Adam(disc.parameters(), lr=self.cfg.lr_d, betas=betas, weight_decay=self.tcfg.weight_decay)
        self.gen, self.opt_g = fabric.setup(gen, opt_g)
        self.disc, self.opt_d = fabric.setup(disc, opt_d)
        self.modules = {"generator": self.gen, "discriminator": self.disc}
        self.optimizers = {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def accumulate(self, step: int, poison: bool) -> tuple[dict[str, float], list[Clip]]:
        cfg, tcfg, fabric = self.cfg, self.tcfg, self.fabric
        accum, n = tcfg.grad_accum, self.images.shape[0]
        totals = {"loss": 0.0, "d_loss": 0.0}
        right = torch.zeros(2, device=fabric.device)  # (correct, seen) for the accuracy over ranks
        for micro in range(accum):
            last = micro == accum - 1
            ids = sample_ids(step, micro, accum, fabric.global_rank, fabric.world_size, cfg.batch_size)
            idx = torch.tensor([study_for_sample(k, n, tcfg.seed) for k in ids])
            real = self.images[idx].to(fabric.device)
            labels = self.labels[idx].to(fabric.device) if cfg.conditional else None
            z = latent_noise([sample_generator(tcfg.seed, k) for k in ids], cfg.z_dim).to(fabric.device)
            fake = self.gen(z, labels)
            with fabric.no_backward_sync(self.disc, enabled=not last):
                real_logits, fake_logits = self.disc(real, labels), self.disc(fake.detach(), labels)
                d_loss = bce(real_logits, True) + bce(fake_logits, False)
                fabric.backward(d_loss / accum)
            accuracy = discriminator_accuracy(real_logits.detach(), fake_logits.detach())
            right += torch.tensor([accuracy * 2 * len(ids), 2 * len(ids)], device=fabric.device)
            # the raw discriminator (no DDP hooks, frozen): the generator's loss reaches only the generator
            raw_disc = self.disc.module.requires_grad_(False)
            with fabric.no_backward_sync(self.gen, enabled=not last):
                with fabric.autocast():
                    g_loss = bce(raw_disc(fake, labels), True)
                if poison:
                    g_loss = g_loss * float("nan")
                fabric.backward(g_loss / accum)
            raw_disc.requires_grad_(True)
            totals["loss"] += float(g_loss.detach()) / accum
            totals["d_loss"] += float(d_loss.detach()) / accum
        correct, seen = (fabric.all_reduce(right, reduce_op="sum") if fabric.world_size > 1 else right).tolist()
        totals["d_accuracy"] = correct / seen
        self.update_d = totals["d_accuracy"] <= cfg.d_accuracy_max
        totals["d_updated"] = float(self.update_d)
        return totals, [(self.gen, self.opt_g, tcfg.max_grad_norm), (self.disc, self.opt_d, tcfg.max_grad_norm)]

    def update(self, step: int) -> None:
        self.opt_g.step()
        if self.update_d:
            self.opt_d.step()

    def finish(self, step: int, train_seconds: float) -> None:
        stage_dir = self.run_dir / STAGE
        save_weights(stage_dir / "model.safetensors", {"generator": self.gen.module.state_dict(),
                                                       "discriminator": self.disc.module.state_dict()})
        write_json(stage_dir / "done.json", {
            "stage": STAGE, "step": step, "weights": "model.safetensors", "config_hash": self.config.hash(),
            "train_seconds": round(train_seconds, 1), "labels": list(self.config.data.labels),
            "conditional": self.cfg.conditional, "generator_shape": list(padded_shape(tuple(self.config.data.shape)))})

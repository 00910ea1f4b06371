"""Sampling synthetic CT volumes from a trained run: ``Generator.load(run_dir).sample(n, label, seed)``.

Determinism (as EDM's generate.py): sample ``i`` of a request draws its initial latent noise from its own
``torch.Generator`` seeded with ``seed + i`` (and, for DDIM with ``eta > 0``, its per-step noise too), so a
sample does not depend on the batch size, the number of ranks or which rank made it. Then: denoise with the
EMA UNet and classifier-free guidance, decode with the autoencoder, crop to the run's image shape, map
[-1, 1] back to HU with the run's window, and build a :class:`CTVolume` with the run's target spacing (the
median), or, for a cascade with ``diffusion.spacing_condition``, the spacing the sample drew first from its
generator and gave its base model (models/spacing.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .errors import CTSynthError
from .models.autoencoder import decode_latent
from .models.gan import crop, latent_noise
from .models.diffusion import build_scheduler, sample_latents, unet_multiple, unstandardise
from .preprocess.window import denormalise
from .runs import (DONE_FILE, load_diffusion_ema, load_frozen_autoencoder, load_gan_generator, read_json, read_run,
                   sampling_stage)
from .volume import CTVolume

__all__ = ["Generator", "SampleSpec", "resample_for_export", "to_int16_hu"]


@dataclass
class SampleSpec:
    """What produced a sample: enough to make it again (saved as the JSON sidecar)."""

    index: int
    seed: int
    label: str
    guidance: float
    steps: int
    scheduler: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Generator:
    """A trained run, ready to sample. Build with :meth:`load`."""

    def __init__(self, run_dir: Path, info: dict[str, Any], config: Config, autoencoder: torch.nn.Module | None,
                 unet: torch.nn.Module, diffusion_done: dict[str, Any], device: torch.device) -> None:
        self.run_dir, self.info, self.config = run_dir, info, config
        self.autoencoder, self.unet, self.device = autoencoder, unet, device
        self.is_gan = config.model == "gan"  # the 3D-GAN baseline: `unet` is its generator, no autoencoder
        self.latent_shift = torch.tensor(diffusion_done.get("latent_shift", []), dtype=torch.float32)
        self.latent_scale = torch.tensor(diffusion_done.get("latent_scale", []), dtype=torch.float32)
        self.latent_shape = tuple(int(n) for n in diffusion_done.get("latent_shape", []))  # (c, z, y, x)
        self.labels: tuple[str, ...] = tuple(info["labels"])
        self.null_label = int(diffusion_done.get("null_label", len(self.labels)))
        self.image_shape = tuple(int(n) for n in info["shape"])
        self.spacing_mm = tuple(float(s) for s in info["spacing_mm"])
        self.hu_window = tuple(float(w) for w in info["hu_window"])

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "Generator":
        """Load a finished run (safetensors + JSON, nothing unpickled; :mod:`ctsynth.runs`, not the training
        code); a missing or damaged file is a CTSynthError."""
        run_dir = Path(run_dir)
        info, config = read_run(run_dir)
        if config.model == "sr":
            raise CTSynthError("this run is a super-resolution model: it upscales volumes, it does not make them",
                               run_dir, "use `ctsynth upscale IN OUT --run RUN`, or give a generator's run")
        stage = sampling_stage(config)
        done = read_json(run_dir / stage / DONE_FILE, f"the {stage} stage's done.json")
        device = torch.device(device)
        if stage == "gan":
            return cls(run_dir, info, config, None, load_gan_generator(run_dir, config, device), done, device)
        autoencoder = load_frozen_autoencoder(run_dir, config, device)
        unet = load_diffusion_ema(run_dir, config, device)
        return cls(run_dir, info, config, autoencoder, unet, done, device)

    def label_index(self, label: str) -> int:
        if label not in self.labels:
            raise CTSynthError(f"unknown label '{label}'", self.run_dir,
                               f"this run knows the labels {', '.join(self.labels)}")
        return self.labels.index(label)

    def initial_noise(self, index: int, seed: int) -> torch.Tensor:
        """Sample ``index``'s starting latent noise (padded to the UNet's multiple), from its own generator."""
        c, *spatial = self.latent_shape
        m = unet_multiple(self.config.diffusion)
        padded = [-(-n // m) * m for n in spatial]
        gen = torch.Generator(device="cpu").manual_seed(seed + index)
        return torch.randn((1, c, *padded), generator=gen)

    def sample(self, n: int, label: str, seed: int = 0, guidance: float | None = None, steps: int | None = None,
               batch_size: int = 1, indices: list[int] | None = None) -> list[CTVolume]:
        """``n`` volumes (float32 HU, (z, y, x) = the run's shape) of class ``label``; sample i uses seed + i.

        ``indices`` overrides ``range(n)`` (sharding: each rank asks for its own indices).
        """
        return [volume for volume, _ in self.sample_with_specs(n, label, seed, guidance, steps, batch_size, indices)]

    def sample_with_specs(self, n: int, label: str, seed: int = 0, guidance: float | None = None,
                          steps: int | None = None, batch_size: int = 1, indices: list[int] | None = None,
                          autocast=None) -> list[tuple[CTVolume, SampleSpec]]:
        cls_index = self.label_index(label)
        if self.is_gan:  # one forward pass: no guidance, no sampling steps
            guidance, steps = 0.0, 1
        guidance = self.config.diffusion.guidance if guidance is None else float(guidance)
        steps = self.config.diffusion.sample_steps if steps is None else int(steps)
        if steps < 1 or steps > self.config.diffusion.train_timesteps:
            raise CTSynthError(f"--steps must be between 1 and {self.config.diffusion.train_timesteps}, got {steps}")
        if batch_size < 1:
            raise CTSynthError(f"batch size must be at least 1, got {batch_size}")
        indices = list(range(n)) if indices is None else list(indices)
        scheduler = build_scheduler(self.config.diffusion)
        eta = self.config.diffusion.ddim_eta
        out = []
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            labels = torch.full((len(chunk),), cls_index, dtype=torch.long, device=self.device)
            spacings = [self.spacing_mm] * len(chunk)  # the run's median, unless the model draws each sample's
            with (autocast() if autocast is not None else torch.autocast("cpu", enabled=False)):
                if self.is_gan:  # z ~ U[0, 1] of sample i from its own generator, seeded seed + i
                    gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in chunk]
                    z = latent_noise(gens, self.config.gan.z_dim).to(self.device)
                    images = crop(self.unet(z, labels if self.config.gan.conditional else None), self.image_shape)
                elif self.config.diffusion.cascade:  # every noise of sample i from its own generator, seeded seed + i
                    gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in chunk]
                    drawn = self.unet.spacing.draw(gens, labels) if self.unet.spacing is not None else None
                    images = self.unet.sample(scheduler, gens, labels, guidance, steps, self.image_shape, drawn)
                    if drawn is not None:
                        spacings = [tuple(float(s) for s in row) for row in drawn.tolist()]
                else:
                    noise = torch.cat([self.initial_noise(i, seed) for i in chunk]).to(self.device)
                    gens = [torch.Generator(device=self.device).manual_seed(seed + i + 1_000_003) for i in chunk]
                    z = sample_latents(self.unet, scheduler, noise, labels, self.null_label, guidance, steps,
                                       self.latent_shape[1:], eta=eta, generators=gens)
                    z = unstandardise(z.float(), self.latent_shift, self.latent_scale)
                    images = decode_latent(self.autoencoder, z, self.image_shape)
            for i, image, spacing in zip(chunk, images.float().cpu().numpy(), spacings):
                hu = denormalise(image[0], self.hu_window)
                spec = SampleSpec(index=i, seed=seed + i, label=label, guidance=guidance, steps=steps,
                                  scheduler="gan" if self.is_gan else self.config.diffusion.scheduler)
                volume = CTVolume(hu=hu, spacing_mm=spacing, label=label,
                                  source=f"ctsynth generate {self.run_dir.name} #{i}",
                                  meta={"synthetic": True, "seed": seed + i, "config_hash": self.info["config_hash"]})
                out.append((volume, spec))
        return out


def resample_for_export(volume: CTVolume, depth: int | None = None, slice_thickness: float | None = None) -> CTVolume:
    """The volume at the requested number of slices or slice thickness (in-plane grid unchanged)."""
    if depth is None and slice_thickness is None:
        return volume
    from .preprocess.resample import resample_volume

    if depth is not None:
        if depth < 1:
            raise CTSynthError(f"--depth must be at least 1, got {depth}")
        return resample_volume(volume, shape=(int(depth), volume.shape[1], volume.shape[2]))
    if slice_thickness is None or slice_thickness <= 0:
        raise CTSynthError(f"--slice-thickness must be positive, got {slice_thickness}")
    return resample_volume(volume, spacing_mm=(float(slice_thickness), *volume.spacing_mm[1:]))


def to_int16_hu(volume: CTVolume, window: tuple[float, float]) -> CTVolume:
    hu = np.clip(np.rint(volume.hu), window[0], window[1]).astype(np.int16)
    return volume.with_hu(hu)


def sample_name(label: str, index: int) -> str:
    """``covid_00003``: the label is in the name so that both classes can share one output folder."""
    return f"{label}_{index:05d}"


def generate_to_folder(generator: Generator, out: Path, n: int, label: str, seed: int = 0,
                       guidance: float | None = None, steps: int | None = None, fmt: str = "nifti",
                       depth: int | None = None, slice_thickness: float | None = None, batch_size: int = 1,
                       rank: int = 0, world: int = 1, audit=None, autocast=None,
                       upscaler=None) -> dict[str, list[int]]:
    """Write samples ``i`` with ``i % world == rank`` as ``OUT/<label>_<i>`` + ``<label>_<i>.json``.

    A sample whose sidecar exists is skipped (a rerun completes an interrupted request). The sidecar is written
    after the volume, so it marks a complete sample. With ``upscaler`` (a :class:`ctsynth.upscale.Upscaler`),
    each sample is upscaled by the sr run's factors before any export resampling (the cascade: generate small,
    then super-resolve, in one call). With ``audit`` (a MemorisationAudit), a sample flagged as
    too close to a training scan is not written. Returns ``{"written": [...], "skipped": [...], "flagged": [...]}``.
    """
    from .io.write import FORMATS, write_volume
    from .io.atomic import atomic_write_text

    if fmt not in FORMATS:
        raise CTSynthError(f"unknown output format '{fmt}'", out, f"use one of {', '.join(FORMATS)}")
    if out.exists() and not out.is_dir():
        raise CTSynthError("the output is a file, not a folder; nothing was written", out, "choose a folder for --out")
    generator.label_index(label)  # fail before any work on an unknown label
    mine = [i for i in range(n) if i % world == rank]
    todo = [i for i in mine if not (out / f"{sample_name(label, i)}.json").is_file()]
    report: dict[str, list] = {"written": [], "skipped": sorted(set(mine) - set(todo)), "flagged": []}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        for volume, spec in generator.sample_with_specs(len(chunk), label, seed, guidance, steps, batch_size,
                                                        indices=chunk, autocast=autocast):
            generated_shape = list(volume.shape)
            if upscaler is not None:
                volume = upscaler.upscale(volume)
            volume = to_int16_hu(resample_for_export(volume, depth, slice_thickness), generator.hu_window)
            sidecar: dict[str, Any] = {
                "model_run": str(generator.run_dir.resolve()), "config_hash": generator.info["config_hash"],
                "config_name": generator.config.name, **spec.to_dict(), "format": fmt,
                "shape_zyx": list(volume.shape), "spacing_mm_zyx": list(volume.spacing_mm), "synthetic": True}
            if upscaler is not None:
                sidecar["upscaled"] = {"sr_run": str(upscaler.run_dir.resolve()),
                                       "generated_shape_zyx": generated_shape,
                                       "factor_zyx": volume.meta.get("upscaled_by")}
            if audit is not None:
                result = audit.check(volume)
                sidecar["audit"] = {"similarity": float(result.similarity), "nearest_id": str(result.nearest_id),
                                    "threshold": float(result.threshold), "flagged": bool(result.flagged)}
                if result.flagged:
                    report["flagged"].append({"index": spec.index, **sidecar["audit"]})
                    continue
            target = out / sample_name(label, spec.index)
            path = write_volume(volume, target, fmt, overwrite=True)
            sidecar["file"] = path.name
            atomic_write_text(out / f"{sample_name(label, spec.index)}.json", json.dumps(sidecar, indent=2))
            report["written"].append(spec.index)
    return report

"""A training run folder: its layout and how its finished parts are read back.

Training writes the folder (:mod:`ctsynth.train`); generation and training's later stages read it through
this module, so that sampling from a run never imports the training code::

    RUN/run.json                      config, data hash, labels, HU window, image shape, target spacing
    RUN/<stage>/ckpt-<step>/          checkpoints (:mod:`ctsynth.checkpoint`), the last ``keep_last`` kept
    RUN/<stage>/log.jsonl             one record per logged step, and an event record where a run resumed
    RUN/<stage>/model.safetensors     the stage's final weights
    RUN/<stage>/done.json             written last: the stage is finished and is not retrained

The stages are ``autoencoder`` (also ``metrics.json``: held-out PSNR/SSIM) and ``diffusion`` (also
``latents.safetensors``, the encoded training set), or ``gan`` alone for the 3D-GAN baseline (``model:
gan``), or ``sr_inplane`` and ``sr_depth`` for super-resolution (``model: sr``; also ``metrics.json``:
held-out PSNR/SSIM against trilinear and cubic interpolation). Everything is JSON or safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_weights
from .config import Config, config_from_dict
from .errors import CTSynthError

RUN_FILE = "run.json"
DONE_FILE = "done.json"
LOG_FILE = "log.jsonl"
WEIGHTS_FILE = "model.safetensors"


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON file of a run; missing or damaged is a one-line error that says how to get it back."""
    if not path.is_file():
        raise CTSynthError(f"{what} is missing", path, "give a run folder made by `ctsynth train` that finished")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CTSynthError(f"{what} is damaged ({exc})", path,
                           "rerun the `ctsynth train` command of this run: it continues and rewrites it") from exc


def read_run(run_dir: Path) -> tuple[dict[str, Any], Config]:
    """``run.json`` and the config it holds."""
    if not run_dir.is_dir():
        raise CTSynthError("run folder not found", run_dir, "give the --out folder of `ctsynth train`")
    info = read_json(run_dir / RUN_FILE, "run.json (the run's description)")
    try:
        config = config_from_dict(info["config"])
    except (KeyError, CTSynthError) as exc:
        raise CTSynthError(f"run.json has no usable config ({exc})", run_dir / RUN_FILE,
                           "re-train with this version of ctsynth") from exc
    return info, config


def frozen(model: torch.nn.Module, path: Path, key: str, what: str, fix: str,
           device: torch.device | str) -> torch.nn.Module:
    """``model`` with the weights saved under ``key`` in ``path``, in eval mode, without gradients."""
    try:
        model.load_state_dict(load_weights(path)[key])
    except (KeyError, RuntimeError) as exc:
        raise CTSynthError(f"{what} weights do not match the run's config ({exc})", path, fix) from exc
    return model.to(device).eval().requires_grad_(False)


def load_frozen_autoencoder(run_dir: Path, config: Config, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Stage 1, finished, in eval mode without gradients (the Haar transform has no weights to load)."""
    from .models.autoencoder import build_autoencoder, is_trained

    if not (run_dir / "autoencoder" / DONE_FILE).is_file():
        raise CTSynthError("the autoencoder stage has not finished", run_dir / "autoencoder",
                           "rerun the `ctsynth train` command of this run until stage 1 is done")
    ae = build_autoencoder(config.autoencoder)
    if not is_trained(config.autoencoder):
        return ae.to(device).eval()
    return frozen(ae, run_dir / "autoencoder" / WEIGHTS_FILE, "autoencoder", "autoencoder", "re-train stage 1", device)


def load_diffusion_ema(run_dir: Path, config: Config, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Stage 2's EMA model (what sampling uses), in eval mode without gradients."""
    from .models import build_diffusion_model

    return frozen(build_diffusion_model(config), run_dir / "diffusion" / WEIGHTS_FILE, "ema", "diffusion",
                  "re-train stage 2", device)


def sampling_stage(config: Config) -> str:
    """The stage whose weights generate: ``diffusion``, or ``gan`` for the 3D-GAN baseline."""
    return "gan" if config.model == "gan" else "diffusion"


def load_gan_generator(run_dir: Path, config: Config, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The 3D-GAN baseline's generator, in eval mode (BatchNorm's running statistics) without gradients."""
    from .models.gan import build_gan

    return frozen(build_gan(config)[0], run_dir / "gan" / WEIGHTS_FILE, "generator", "GAN", "re-train the GAN", device)


def sr_stage(axis: str) -> str:
    """The stage folder of a super-resolution network: ``sr_inplane`` or ``sr_depth``."""
    return f"sr_{axis}"


def load_sr_networks(run_dir: Path, config: Config, device: torch.device | str = "cpu") -> dict[str, torch.nn.Module]:
    """The ``sr`` run's networks by axis (``inplane``, ``depth``; an axis of factor 1 has none), frozen."""
    from .models.sr import AXES, build_sr

    nets = {}
    for axis in AXES:
        stage = sr_stage(axis)
        done = read_json(run_dir / stage / DONE_FILE, f"the {stage} stage's done.json")
        if done.get("factor", 1) > 1:
            nets[axis] = frozen(build_sr(config, axis), run_dir / stage / WEIGHTS_FILE, "network", stage,
                                "re-train the sr run", device)
    return nets

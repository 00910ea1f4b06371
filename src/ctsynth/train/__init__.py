"""Training: stage 1 (autoencoder) then stage 2 (latent diffusion), each one plain loop on Lightning Fabric.

Run folder layout (``ctsynth train PREP --config NAME --out RUN``)::

    RUN/run.json                      config, data hash, labels, HU window, image shape, target spacing
    RUN/autoencoder/ckpt-<step>/      checkpoints (see ctsynth.checkpoint), the last K kept
    RUN/autoencoder/log.jsonl         per-step metrics
    RUN/autoencoder/model.safetensors final weights;  metrics.json: held-out PSNR/SSIM
    RUN/autoencoder/done.json         written last: the stage is finished and is not retrained
    RUN/diffusion/...                 the same, plus latents.safetensors (encoded training set)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import Config
from ..errors import CTSynthError
from ..preprocess.cache import read_manifest
from .common import LaunchOptions, label_indices, make_fabric, write_json
from .state import check_fresh_or_resume

__all__ = ["LaunchOptions", "train", "check_cache", "RUN_FILE"]

RUN_FILE = "run.json"


def check_cache(prep_dir: Path, config: Config) -> dict[str, list[dict[str, Any]]]:
    """The cache's train/held-out entries, after checking it was prepared with this config's data section."""
    manifest = read_manifest(prep_dir)
    if manifest.config.data_hash() != config.data_hash():
        raise CTSynthError(
            f"the cache was prepared with another data config ('{manifest.config.name}', data hash "
            f"{manifest.config.data_hash()}) than '{config.name}' (data hash {config.data_hash()})", prep_dir,
            f"train with --config {manifest.config.name}, or re-run `ctsynth prepare` with --config {config.name}")
    train_entries = manifest.entries("train")
    held_out = manifest.entries("held_out")
    label_indices(train_entries + held_out, config.data.labels, prep_dir)
    return {"train": train_entries, "held_out": held_out}


def run_info(config: Config, prep_dir: Path, entries: dict[str, list]) -> dict[str, Any]:
    spacings = np.array([e["spacing_mm"] for e in entries["train"] + entries["held_out"]], dtype=float)
    return {"format": "ctsynth-run/1", "config": config.to_dict(), "config_hash": config.hash(),
            "data_hash": config.data_hash(), "prep_dir": str(Path(prep_dir).resolve()),
            "labels": list(config.data.labels), "hu_window": list(config.data.hu_window),
            "shape": list(config.data.shape),
            "spacing_mm": [float(s) for s in np.median(spacings, axis=0)],
            "n_train": len(entries["train"]), "n_held_out": len(entries["held_out"])}


def prepare_run_dir(run_dir: Path, info: dict[str, Any], resume: bool) -> None:
    """Write ``run.json``; an existing run made with another config is refused (nothing overwritten)."""
    path = run_dir / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise CTSynthError(f"run.json is damaged ({exc})", path, "choose a new --out folder") from exc
        if old.get("config_hash") != info["config_hash"]:
            raise CTSynthError("this run folder was trained with another config", run_dir,
                               "choose a new --out folder, or use the run's own config")
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise CTSynthError("the output folder exists and is not a ctsynth run; nothing was written", run_dir,
                           "choose a new --out folder")
    write_json(path, info)


def train(prep_dir: str | Path, config: Config, run_dir: str | Path, launch: LaunchOptions | None = None,
          resume: bool = False, stop_after: dict[str, int] | None = None,
          fault: Callable[[str, int], bool] | None = None) -> str:
    """Run the config's stages in order into ``run_dir``; returns "done" or "stopped".

    ``stop_after`` (tests, benchmarks) maps a stage name to the step after which it stops, checkpointing
    as a SIGTERM would; ``fault(stage, step)`` poisons a step's loss with NaN (tests of the guard).
    """
    from .autoencoder import train_autoencoder
    from .diffusion import train_diffusion

    prep_dir, run_dir = Path(prep_dir), Path(run_dir)
    launch = launch or LaunchOptions()
    entries = check_cache(prep_dir, config)
    if not entries["train"]:
        raise CTSynthError("the cache has no training studies", prep_dir, "prepare more studies")
    # before the launch: the other ranks (started by the launch, re-running the command) then find it done
    prepare_run_dir(run_dir, run_info(config, prep_dir, entries), resume)
    for stage in ("autoencoder", "diffusion"):
        if not (run_dir / stage / "done.json").is_file():
            check_fresh_or_resume(run_dir / stage, resume)
    fabric = make_fabric(launch, launch.precision or config.train.precision)
    for stage, loop in (("autoencoder", train_autoencoder), ("diffusion", train_diffusion)):
        stage_fault = (lambda step, s=stage: fault(s, step)) if fault is not None else None
        status = loop(fabric, config, prep_dir, run_dir, entries, resume=resume,
                      stop_after=(stop_after or {}).get(stage), fault=stage_fault)
        if status != "done":
            return status
    return "done"

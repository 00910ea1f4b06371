"""Training: stage 1 (autoencoder) then stage 2 (latent diffusion), or the one stage of the 3D-GAN baseline
(``model: gan``), or the in-plane then the depth super-resolution network (``model: sr``), each a :class:`~ctsynth.train.runner.Stage` run by the one loop of
:func:`ctsynth.train.runner.run_stage` on Lightning Fabric.

The run folder's layout is described in :mod:`ctsynth.runs`. Rerunning the same ``train`` command continues
the run: finished stages are skipped, an unfinished one resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..errors import CTSynthError
from ..io.atomic import is_leftover
from ..launch import LaunchOptions, make_fabric
from ..models.sr import AXES as SR_AXES
from ..preprocess.cache import read_manifest
from ..runs import RUN_FILE
from .common import label_indices, write_json
from .runner import TrainHooks, clean_folder, run_stage

__all__ = ["LaunchOptions", "TrainHooks", "train", "check_cache", "RUN_FILE"]


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


def studies_hash(entries: dict[str, list]) -> str:
    """Which studies a run trains and evaluates on (ids, sources and split), so that rerunning a run's command
    on another cache is refused instead of continuing on other data."""
    key = sorted((split, str(e["id"]), str(e.get("source_hash", ""))) for split, items in entries.items()
                 for e in items)
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def run_info(config: Config, prep_dir: Path, entries: dict[str, list]) -> dict[str, Any]:
    spacings = np.array([e["spacing_mm"] for e in entries["train"] + entries["held_out"]], dtype=float)
    return {"format": "ctsynth-run/1", "config": config.to_dict(), "config_hash": config.hash(),
            "data_hash": config.data_hash(), "prep_dir": str(Path(prep_dir).resolve()),
            "studies_hash": studies_hash(entries),
            "labels": list(config.data.labels), "hu_window": list(config.data.hu_window),
            "shape": list(config.data.shape),
            "spacing_mm": [float(s) for s in np.median(spacings, axis=0)],
            "n_train": len(entries["train"]), "n_held_out": len(entries["held_out"])}


def prepare_run_dir(run_dir: Path, info: dict[str, Any]) -> None:
    """Write ``run.json``, or check that the existing run is this one (same config, same studies) so that it
    continues; another run, or a folder that is not a run, is refused (nothing overwritten)."""
    path = run_dir / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise CTSynthError(f"run.json is damaged ({exc})", path, "choose a new --out folder") from exc
        if old.get("config_hash") != info["config_hash"]:
            raise CTSynthError("this run folder was trained with another config", run_dir,
                               "choose a new --out folder, or use the run's own config")
        if old.get("studies_hash", info["studies_hash"]) != info["studies_hash"]:
            raise CTSynthError(f"this run folder was trained on another cache ({old.get('prep_dir')})", run_dir,
                               "give the run's own cache, or choose a new --out folder")
        return
    if run_dir.exists() and any(not is_leftover(p) for p in run_dir.iterdir()):
        raise CTSynthError("the output folder exists and is not a ctsynth run; nothing was written", run_dir,
                           "choose a new --out folder")
    write_json(path, info)


def honours_time_budget(stage: str) -> bool:
    """Whether ``train.time_budget_min`` ends the stage named ``stage`` (its Stage class says:
    :attr:`Stage.honours_time_budget`); ``ctsynth estimate`` projects schedules with it."""
    from ..models.sr import AXES
    from ..runs import sr_stage
    from .autoencoder import AutoencoderStage
    from .diffusion import DiffusionStage
    from .gan import GanStage
    from .sr import SrStage

    kinds = {kind.name: kind for kind in (AutoencoderStage, DiffusionStage, GanStage)}
    kinds.update({sr_stage(axis): SrStage for axis in AXES})
    if stage not in kinds:
        raise ValueError(f"no training stage is named {stage!r}; stages: {', '.join(sorted(kinds))}")
    return kinds[stage].honours_time_budget


def train(prep_dir: str | Path, config: Config, run_dir: str | Path, launch: LaunchOptions | None = None,
          hooks: TrainHooks | None = None) -> str:
    """Run the config's stages in order into ``run_dir``; returns "done" or "stopped" (a signal, or a hook).

    An existing run of the same config and cache continues: finished stages are skipped, an unfinished one
    resumes from its newest checkpoint. ``hooks`` are for tests and benchmarks (:class:`TrainHooks`).
    """
    from .autoencoder import AutoencoderStage
    from .diffusion import DiffusionStage
    from .gan import GanStage
    from .sr import SrStage

    prep_dir, run_dir = Path(prep_dir), Path(run_dir)
    launch, hooks = launch or LaunchOptions(), hooks or TrainHooks()
    if config.model == "sr":  # super-resolution trains on any cache: it takes the cache's data section
        config = dataclasses.replace(config, data=read_manifest(prep_dir).config.data)
    entries = check_cache(prep_dir, config)
    if not entries["train"]:
        raise CTSynthError("the cache has no training studies", prep_dir, "prepare more studies")
    # before the launch: the other ranks (started by the launch, re-running the command) then find it done
    prepare_run_dir(run_dir, run_info(config, prep_dir, entries))
    fabric = make_fabric(launch, launch.precision or config.train.precision)
    clean_folder(fabric, run_dir)
    if config.model == "sr":
        stages = [SrStage(axis, fabric, config, prep_dir, run_dir, entries) for axis in SR_AXES]
    else:
        kinds = (GanStage,) if config.model == "gan" else (AutoencoderStage, DiffusionStage)
        stages = [kind(fabric, config, prep_dir, run_dir, entries) for kind in kinds]
    for stage in stages:
        status = run_stage(fabric, stage, run_dir / stage.name, config, hooks)
        if status != "done":
            return status
    return "done"

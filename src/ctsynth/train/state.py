"""Checkpoint plumbing of the stage runner: save (rank 0 writes, every rank's RNG inside), resume, restore."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import Config
from ..errors import CTSynthError
from .common import gather_rng_states


def save_stage(fabric, stage_dir: Path, step: int, modules: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer], config: Config, extra: dict[str, Any]) -> None:
    """Checkpoint ``step``: every rank takes part (RNG gather), rank 0 writes, all wait for it.

    A write that fails on rank 0 (a full disk) stops every rank: rank 0 raises its one-line error, the others
    one that points to it, instead of waiting for rank 0 forever.
    """
    rngs = gather_rng_states(fabric, rng_state())
    error = None
    if fabric.global_rank == 0:
        state = dict(extra, config=config.to_dict(), hu_window=list(config.data.hu_window),
                     labels=list(config.data.labels),
                     world_size=fabric.world_size, rng=rngs)
        try:
            save_checkpoint(stage_dir, step, {k: m.state_dict() for k, m in modules.items()},
                            {k: o.state_dict() for k, o in optimizers.items()}, state, config.train.keep_last)
        except CTSynthError as exc:
            error = exc
    if fabric.strategy.reduce_boolean_decision(error is not None, all=False):  # also the barrier
        raise error or CTSynthError(f"rank 0 could not write the checkpoint of step {step}", stage_dir,
                                    "see rank 0's error line")


def load_stage(fabric, stage_dir: Path, modules: dict[str, torch.nn.Module],
               optimizers: dict[str, torch.optim.Optimizer], restore_rng: bool) -> dict[str, Any] | None:
    """Load the newest valid checkpoint into (already set up) modules and optimizers; returns its state."""
    found = load_latest_checkpoint(stage_dir)
    if found is None:
        return None
    path, (weights, opt_states, state) = found
    try:
        for name, module in modules.items():
            module.load_state_dict(weights[name])
        for name, opt in optimizers.items():
            opt.load_state_dict(opt_states[name])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CTSynthError(f"checkpoint does not match this model ({exc})", path,
                           "resume with the config the run was started with, or start a new --out folder") from exc
    if restore_rng:
        rngs = state.get("rng", [])
        if len(rngs) == fabric.world_size:
            set_rng_state(rngs[fabric.global_rank])
        else:
            fabric.seed_everything(state["config"]["train"]["seed"] + fabric.global_rank + state["step"],
                                   verbose=False)
            warn(fabric, f"checkpoint was written by {len(rngs)} rank(s), now {fabric.world_size}: "
                         "random streams are re-seeded, so this run will not match an uninterrupted one bit for bit")
    state["path"] = str(path)
    return state


def set_lr(optimizers: dict[str, torch.optim.Optimizer], base_lrs: dict[str, float], scale: float) -> None:
    """Every optimizer's learning rate: its base rate times the NaN guard's ``scale``."""
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            group["lr"] = base_lrs[name] * scale


def warn(fabric, message: str) -> None:
    if fabric.global_rank == 0:
        print(f"ctsynth: warning: {message}", file=sys.stderr)


def restore_after_non_finite(fabric, stage_dir: Path, modules: dict[str, torch.nn.Module],
                             optimizers: dict[str, torch.optim.Optimizer], base_lrs: dict[str, float],
                             lr_scale: float, in_a_row: int) -> tuple[int | None, float]:
    """The NaN guard's last resort, after ``nan_patience`` skipped steps (non-finite loss or gradient) in a row.

    Restores the newest checkpoint (weights and optimizer state, not the RNG: the same batches would fail
    again), halves the learning rates and says so in one line. Returns the restored step (None when there
    is no checkpoint yet) and the new learning-rate scale.
    """
    state = load_stage(fabric, stage_dir, modules, optimizers, restore_rng=False)
    lr_scale *= 0.5
    set_lr(optimizers, base_lrs, lr_scale)
    rates = sorted({lr * lr_scale for lr in base_lrs.values()}, reverse=True)
    warn(fabric, f"{in_a_row} non-finite losses in a row: restored "
                 f"{state['path'] if state else 'nothing (no checkpoint yet)'}, "
                 f"learning rate halved to {', '.join(f'{r:g}' for r in rates)}")
    return (state["step"] if state is not None else None), lr_scale

"""The one training loop, which every stage runs (as nanoGPT's single readable loop, shared by the stages).

A stage (:class:`Stage`) keeps only what is its own: its data, its models and optimizers, the forward and
backward of one optimizer step, the update, and its final outputs. :func:`run_stage` does the rest, the same
for every stage:

- **resume**: the temporaries that a killed write left in the stage folder are removed, then the newest
  checkpoint that loads is restored (weights, optimizers, every rank's RNG, learning-rate scale, training
  seconds), and ``log.jsonl`` is rewound to it (:class:`ctsynth.train.common.JsonlLog`);
- **the NaN guard**: a step whose loss or gradient is not finite makes no update (all ranks agree); after
  ``train.nan_patience`` of them in a row the last checkpoint is restored and the learning rate halved;
  after ``MAX_RESTORES`` restores with no step between them (the same draws fail whatever the rate, e.g. at
  step 0 with no checkpoint) the stage ends in a one-line error instead of looping;
- **logging**: ``log.jsonl`` every ``train.log_every`` steps and a progress bar (rank 0);
- **stopping**: SIGTERM/SIGINT and :attr:`TrainHooks.stop_after` checkpoint and return "stopped"; the
  stage's time budget ends it as finished;
- **checkpoints** every ``train.checkpoint_every`` steps and ``train.checkpoint_every_min`` minutes, at the
  end and when stopping; then the stage's :meth:`Stage.finish` (rank 0), which writes ``done.json`` last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config
from ..io.atomic import remove_leftovers
from ..runs import DONE_FILE, LOG_FILE
from ..errors import CTSynthError
from .common import JsonlLog, StopFlag, now, progress_bar, skip_reason
from .state import load_stage, restore_after_non_finite, save_stage, set_lr, warn

Clip = tuple[torch.nn.Module, Any, float]  # (module, its optimizer, max gradient norm; 0 = no clipping)

MAX_RESTORES = 4  # NaN-guard restores in a row without a step between them before the stage gives up


@dataclass
class TrainHooks:
    """Hooks for tests and benchmarks, kept out of the arguments of :func:`ctsynth.train.train`.

    ``stop_after`` maps a stage name to the step after which it stops, checkpointing as SIGTERM would;
    ``fault(stage, step) -> True`` poisons that step's loss with NaN (tests of the NaN guard);
    ``on_stage(stage, "start" | "end")`` is called around each stage that trains (``ctsynth estimate``'s
    per-stage peak memory).
    """

    stop_after: dict[str, int] = field(default_factory=dict)
    fault: Callable[[str, int], bool] | None = None
    on_stage: Callable[[str, str], None] | None = None

    def mark(self, stage: str, event: str) -> None:
        if self.on_stage is not None:
            self.on_stage(stage, event)

    def stops(self, stage: str, step: int) -> bool:
        return stage in self.stop_after and step >= self.stop_after[stage]

    def poisons(self, stage: str, step: int) -> bool:
        return self.fault is not None and bool(self.fault(stage, step))


class Stage:
    """What a stage owns. :func:`run_stage` calls, in order: :meth:`trains`; then either :meth:`finish` (a
    stage with nothing to train) or :meth:`load_data`, seeding, :meth:`build`, the checkpoint restore,
    :meth:`start`, and per step :meth:`accumulate` then (unless the step is skipped) :meth:`update`; and
    :meth:`finish` at the end."""

    name: str = ""
    steps: int = 0             # optimizer steps of the whole stage
    lr: float = 0.0            # base learning rate (of every optimizer unless base_lrs says otherwise; logged)
    # train.time_budget_min ends the stage, finished, at the first step past it; a stage that must run its
    # whole schedule (the KL autoencoder: stage 2 needs it finished) sets this False
    honours_time_budget: bool = True
    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]

    def trains(self) -> bool:
        return True

    def base_lrs(self) -> dict[str, float]:
        """Each optimizer's learning rate before the NaN guard's scale."""
        return {name: self.lr for name in self.optimizers}

    def load_data(self, fabric) -> None:
        """Before seeding: datasets (rank 0 may write caches; every rank waits)."""

    def build(self, fabric) -> None:
        """After seeding (initial weights come from the seed): ``modules`` and ``optimizers``, set up."""

    def start(self, step: int) -> None:
        """The data stream from ``step`` on (at the start, on a resume and after the NaN guard's restore)."""

    def accumulate(self, step: int, poison: bool) -> tuple[dict[str, float], list[Clip]]:
        """Forward and backward of optimizer step ``step`` (0-based); returns its losses (``"loss"`` first;
        multiplied by NaN when ``poison``) and the modules whose gradients are checked before the update."""
        raise NotImplementedError

    def update(self, step: int) -> None:
        """The optimizer updates of a good step (``step``: steps done, counting this one), EMA and the like."""
        raise NotImplementedError

    def finish(self, step: int, train_seconds: float) -> None:
        """Rank 0, once the stage is done: final weights, metrics, and ``done.json`` last."""
        raise NotImplementedError


def clean_folder(fabric, folder: Path) -> None:
    """Create ``folder``; on rank 0, before anything is written there, remove the temporaries of writes that a
    kill interrupted (``.ckpt-*.tmp/`` folders, ``.*.tmp.safetensors`` files), saying what went."""
    if fabric.global_rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        removed = remove_leftovers(folder)
        if removed:
            warn(fabric, f"removed {len(removed)} temporary file(s) of an interrupted write in {folder}: "
                         + ", ".join(p.name for p in removed))
    fabric.barrier()


def run_stage(fabric, stage: Stage, stage_dir: Path, config: Config, hooks: TrainHooks) -> str:
    """Run ``stage`` in ``stage_dir`` from its newest checkpoint (or from scratch); returns "done" or "stopped"."""
    tcfg = config.train
    rank0 = fabric.global_rank == 0
    if (stage_dir / DONE_FILE).is_file():
        return "done"
    clean_folder(fabric, stage_dir)
    if not stage.trains():
        if rank0:
            stage.finish(0, 0.0)
        fabric.barrier()
        return "done"
    if not 0.0 <= tcfg.lr_decay_fraction <= 1.0:
        raise CTSynthError(f"train.lr_decay_fraction must lie in [0, 1], got {tcfg.lr_decay_fraction}",
                           fix="use e.g. 0.3 (the last 30% of the stage), or 0 for a constant learning rate")
    hooks.mark(stage.name, "start")
    stage.load_data(fabric)
    fabric.seed_everything(tcfg.seed + fabric.global_rank, verbose=False)
    stage.build(fabric)
    modules, optimizers = stage.modules, stage.optimizers

    step, lr_scale, seconds_before = 0, 1.0, 0.0
    state = load_stage(fabric, stage_dir, modules, optimizers, restore_rng=True)
    if state is not None:
        step, lr_scale = state["step"], state.get("lr_scale", 1.0)
        seconds_before = float(state.get("train_seconds", 0.0))
        warn(fabric, f"resuming {stage.name} from step {step} ({state['path']})")
    stage.start(step)

    log = JsonlLog(stage_dir / LOG_FILE, rank0)
    log.rewind(step, {"event": "resume", "checkpoint": Path(state["path"]).name if state else None})
    budget_min = tcfg.time_budget_min if stage.honours_time_budget else 0.0
    budget_s, every_s = budget_min * 60.0, tcfg.checkpoint_every_min * 60.0
    next_timed = (math.floor(seconds_before / every_s) + 1) * every_s if every_s > 0 else math.inf
    bar = progress_bar(rank0, None if budget_s > 0 else stage.steps, step, stage.name)
    bad_in_a_row, restores, status, t0 = 0, 0, "done", now()
    train_s = lambda: seconds_before + now() - t0  # noqa: E731  training time over every resume
    elapsed = seconds_before
    try:
        with StopFlag() as stop:
            while step < stage.steps:
                lr_factor = lr_scale * lr_decay(tcfg.lr_decay_fraction, step, stage.steps, elapsed, budget_s)
                set_lr(optimizers, stage.base_lrs(), lr_factor)
                losses, clip = stage.accumulate(step, hooks.poisons(stage.name, step))

                skipped = skip_reason(fabric, all(math.isfinite(v) for v in losses.values()), clip)
                if skipped:
                    zero_grad(optimizers)
                    bad_in_a_row += 1
                    log.write({"step": step, "skipped": skipped, **{k: str(v) for k, v in losses.items()}})
                    if bad_in_a_row >= tcfg.nan_patience:
                        restores += 1
                        if restores > MAX_RESTORES:  # the same steps fail whatever the learning rate: stop
                            raise CTSynthError(
                                f"{stage.name}: non-finite losses or gradients at step {step} again after "
                                f"{MAX_RESTORES} restores, each with the learning rate halved", stage_dir,
                                "train with train.precision '32' (bf16 overflows where fp32 does not), a lower "
                                "learning rate, or check the cache's volumes (ctsynth inspect)")
                        restored, lr_scale = restore_after_non_finite(fabric, stage_dir, modules, optimizers,
                                                                      stage.base_lrs(), lr_scale, bad_in_a_row)
                        if restored is not None:
                            step = restored
                            stage.start(step)
                            log.rewind(step, {"event": "restore", "reason": f"{bad_in_a_row} steps skipped in a row",
                                              "lr": stage.lr * lr_scale})
                        bad_in_a_row = 0
                        bar.n = step
                    continue
                bad_in_a_row = restores = 0
                step += 1
                stage.update(step)
                zero_grad(optimizers)
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.4f}")
                if step % tcfg.log_every == 0 or step == stage.steps:
                    log.write({"step": step, **losses, "lr": stage.lr * lr_factor, "time_s": round(train_s(), 3)})

                stopping = fabric.strategy.reduce_boolean_decision(stop.requested or hooks.stops(stage.name, step),
                                                                    all=False)
                # time decisions from rank 0's clock, so that every rank stops and checkpoints at the same step
                elapsed = fabric.broadcast(train_s(), src=0)
                out_of_time = budget_s > 0 and elapsed >= budget_s
                timed = elapsed >= next_timed
                if timed:
                    next_timed = (math.floor(elapsed / every_s) + 1) * every_s
                if step % tcfg.checkpoint_every == 0 or step == stage.steps or stopping or out_of_time or timed:
                    save_stage(fabric, stage_dir, step, modules, optimizers, config,
                               {"stage": stage.name, "lr_scale": lr_scale, "train_seconds": elapsed})
                if out_of_time:
                    warn(fabric, f"{stage.name}: the time budget of {budget_min:g} min is spent "
                                 f"at step {step}")
                    break
                if stopping and step < stage.steps:
                    status = "stopped"
                    break
    finally:
        bar.close()
        log.close()
        hooks.mark(stage.name, "end")
    if status == "done" and rank0:
        stage.finish(step, train_s())
    fabric.barrier()
    return status


def lr_decay(fraction: float, step: int, steps: int, elapsed_s: float, budget_s: float) -> float:
    """The learning rate's factor at ``step`` (0-based, the step about to run): 1, then falling linearly to 0
    over the last ``fraction`` of the stage. Progress is the larger of ``step / steps`` and, with a time budget,
    ``elapsed_s / budget_s`` (the training seconds so far, counted over resumes; rank 0's clock).

    Why: at a fixed budget the weights of a constant rate keep moving by the rate's noise to the last step,
    and the samples carry it; annealing the rate to 0 at the end is the standard remedy (Li et al. 2020,
    "Budgeted training"; warmup-stable-decay). A time budget decides when the end is, so the decay follows the
    clock where it ends the stage before the step count does."""
    if fraction <= 0.0:
        return 1.0
    progress = step / steps if steps > 0 else 0.0
    if budget_s > 0:
        progress = max(progress, elapsed_s / budget_s)
    return min(1.0, max(0.0, (1.0 - progress) / fraction))


def zero_grad(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)

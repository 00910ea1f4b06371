"""How long a config takes to train, and whether it fits a GPU: measured, not taken from a table (``ctsynth estimate``).

The seed report's open questions were "how long would training take" and "can it be done on the GPU we
have". :func:`estimate` answers them on this machine (its GPU when present): it prepares a small phantom
cohort with the config (or uses a given cache), runs every stage that trains for a few real steps through the
one training loop (:func:`ctsynth.train.train`), and reads

- **seconds per optimizer step** from each stage's ``log.jsonl`` (:func:`seconds_per_step`, the first
  ``warmup`` steps left out: allocator, autotuning, lazy imports);
- **peak memory** per stage (:class:`PeakMemory`): ``torch.cuda.max_memory_allocated`` on a GPU, else the
  process's peak resident set (Linux ``VmHWM``, reset between stages through ``/proc/self/clear_refs``).

:func:`project` turns them into the time of the config's whole schedule (``steps`` per stage; a stage with
``train.time_budget_min`` is capped by it) and of one epoch of ``cases`` studies (an epoch is ``cases``
samples: whole volumes, or one patch per study for the patch-trained stages), with ``devices`` data-parallel
devices each taking ``batch x accumulation`` samples a step. The per-step time is assumed not to change with
the number of devices (communication is not measured; it only adds).

With a memory limit (``--gpu-memory``), a stage whose peak exceeds it is measured again with each knob
(:func:`knob_variants`): the batch halved with the accumulation doubled (the same samples per optimizer step),
gradient checkpointing (the autoencoder's: the only stage that has it), and the patch halved in-plane; each
line says the knob's measured peak and step time, and whether it fits. On a CPU the peak is the process's
RSS (with Python and torch themselves, about 0.4 GB): an upper bound of what the tensors need, not a GPU's
figure; run it on the GPU in question for that. Each measurement runs in a fresh process (its own peak);
within one, a later stage's CPU peak includes what the earlier stages left allocated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import Config

# stage -> (config section, its batch key, its patch key or None)
STAGE_KNOBS = {"autoencoder": ("autoencoder", "batch_size", "patch"), "diffusion": ("diffusion", "batch_size", None),
               "gan": ("gan", "batch_size", None), "sr_inplane": ("sr", "batch_size", "patch"),
               "sr_depth": ("sr", "batch_size", "patch")}
PHANTOM_STUDIES = 4


class PeakMemory:
    """Peak memory since the last :meth:`reset`, in MiB: the GPU's allocated bytes, or the process's RSS."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.kind = f"GPU ({torch.cuda.get_device_name()})" if self.cuda else "CPU RSS"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # elsewhere the peak is the process's since it started

    def read_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb() -> tuple[float, str]:
    """The process's peak memory so far (MiB) and what it is (benchmarks/bench_train.py)."""
    peak = PeakMemory()
    return peak.read_mb(), peak.kind


def seconds_per_step(log: Path, warmup: int) -> float | None:
    """Mean seconds per optimizer step from a stage's ``log.jsonl`` (``time_s`` of logged steps), after
    ``warmup`` steps when enough remain; None when fewer than two steps were logged."""
    rows = [r for r in map(json.loads, log.read_text().splitlines()) if "skipped" not in r and "event" not in r]
    rows = [r for r in rows if r["step"] > warmup] if len(rows) > warmup + 1 else rows
    if len(rows) < 2:
        return None
    return max(rows[-1]["time_s"] - rows[0]["time_s"], 1e-9) / (rows[-1]["step"] - rows[0]["step"])


def make_phantom_cache(config: Config, workdir: Path, studies: int = PHANTOM_STUDIES) -> Path:
    """A cache of ``studies`` phantom chests prepared with ``config`` (in-plane size twice the model's, 64-512)."""
    from .phantom import make_phantom_cohort
    from .preprocess.prepare import prepare_cache

    size = max(64, min(512, 2 * max(config.data.shape[1:])))
    make_phantom_cohort(workdir / "data", studies, size=size, seed=0)
    prepare_cache(workdir / "data", config, workdir / "prep", progress=False)
    return workdir / "prep"


def section(config: Config, stage: str):
    return getattr(config, STAGE_KNOBS[stage][0])


def with_steps(config: Config, steps: dict[str, int]) -> Config:
    """``config`` with the given steps per stage (log every step, checkpoint at the end only, no time budget)."""
    values = config.to_dict()
    for stage, n in steps.items():  # the two sr stages share a section: the larger count wins
        sec = values[STAGE_KNOBS[stage][0]]
        sec["steps"] = max(n, sec["steps"]) if sec.get("_set") else n
        sec["_set"] = True
    for stage in steps:
        values[STAGE_KNOBS[stage][0]].pop("_set", None)
    values["train"].update(log_every=1, checkpoint_every=10**9, time_budget_min=0.0, checkpoint_every_min=0.0)
    values.setdefault("model", config.model)
    from .config import config_from_dict
    return config_from_dict(values)


def stages_of(config: Config) -> list[str]:
    if config.model == "gan":
        return ["gan"]
    if config.model == "sr":
        return ["sr_inplane", "sr_depth"]
    return ["autoencoder", "diffusion"]


@dataclass
class StageMeasure:
    stage: str
    s_per_step: float | None  # None: the stage has nothing to train (e.g. the Haar autoencoder)
    peak_mb: float | None
    batch: int
    grad_accum: int


def measure(config: Config, prep: Path, workdir: Path, steps: int = 5, warmup: int = 2, accelerator: str = "auto",
            only: str | None = None) -> dict[str, StageMeasure]:
    """Every stage of ``config`` trained ``steps`` steps (``only``: that stage; the others one step) in a new
    run folder under ``workdir``; per stage its seconds per step and peak memory."""
    from .train import LaunchOptions, TrainHooks, train

    names = stages_of(config)
    run = workdir / f"run-{len(list(workdir.glob('run-*')))}"
    peaks: dict[str, float] = {}
    memory = PeakMemory()

    def on_stage(stage: str, event: str) -> None:
        if event == "start":
            memory.reset()
        else:
            peaks[stage] = memory.read_mb()

    cfg = with_steps(config, {s: (steps if only in (None, s) else 1) for s in names})
    train(prep, cfg, run, LaunchOptions(accelerator=accelerator), TrainHooks(on_stage=on_stage))
    out = {}
    for s in names:
        log = run / s / "log.jsonl"
        out[s] = StageMeasure(s, seconds_per_step(log, warmup) if log.is_file() else None, peaks.get(s),
                              section(cfg, s).batch_size, cfg.train.grad_accum)
    return out


def measure_apart(config: Config, prep: Path, workdir: Path, steps: int, warmup: int, accelerator: str,
                  only: str | None = None) -> dict[str, StageMeasure]:
    """:func:`measure` in a fresh process, so that its peak memory is its own and not what an earlier
    measurement left allocated (a CPU process does not give freed memory back)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, config, prep, workdir, steps, warmup, accelerator, only).result()


def project(config: Config, measured: dict[str, StageMeasure], cases: int, devices: int = 1) -> dict[str, Any]:
    """Seconds for the config's schedule and for one epoch of ``cases`` samples, per stage and in total."""
    from .train import honours_time_budget

    rows, total_s, epoch_total_s = [], 0.0, 0.0
    for stage, m in measured.items():
        steps = section(config, stage).steps
        per_step = m.s_per_step or 0.0
        schedule_s = steps * per_step
        if config.train.time_budget_min > 0 and honours_time_budget(stage):
            schedule_s = min(schedule_s, config.train.time_budget_min * 60.0)
        samples = m.batch * m.grad_accum * devices
        epoch_steps = math.ceil(cases / samples)
        rows.append({"stage": stage, "s_per_step": m.s_per_step, "peak_mb": m.peak_mb, "steps": steps,
                     "schedule_s": schedule_s, "samples_per_step": samples, "steps_per_epoch": epoch_steps,
                     "epoch_s": epoch_steps * per_step, "epochs_in_schedule": steps * samples / cases})
        total_s += schedule_s
        epoch_total_s += epoch_steps * per_step
    return {"stages": rows, "schedule_s": total_s, "epoch_s": epoch_total_s, "cases": cases, "devices": devices}


def knob_variants(config: Config, stage: str) -> list[tuple[str, Config]]:
    """The configs that lower ``stage``'s memory, one knob each (see the module docstring)."""
    name, batch_key, patch_key = STAGE_KNOBS[stage]
    sec = getattr(config, name)
    out = []
    batch, accum = getattr(sec, batch_key), config.train.grad_accum
    while batch > 1:
        batch, accum = max(1, batch // 2), accum * 2
        out.append((f"{name}.{batch_key}: {batch}, train.grad_accum: {accum}",
                    dataclasses.replace(config, **{name: dataclasses.replace(sec, **{batch_key: batch})},
                                        train=dataclasses.replace(config.train, grad_accum=accum))))
    if stage == "autoencoder" and config.autoencoder.kind == "kl" and not config.train.grad_checkpointing:
        out.append(("train.grad_checkpointing: true",
                    dataclasses.replace(config, train=dataclasses.replace(config.train, grad_checkpointing=True))))
    if patch_key:
        patch = tuple(getattr(sec, patch_key))
        half = (patch[0], max(1, patch[1] // 2), max(1, patch[2] // 2))
        out.append((f"{name}.{patch_key}: {list(half)}",
                    dataclasses.replace(config, **{name: dataclasses.replace(sec, **{patch_key: half})})))
    return out


def estimate(config: Config, cases: int = 300, devices: int = 1, gpu_memory_gb: float | None = None,
             steps: int = 5, warmup: int = 2, prep: Path | None = None, accelerator: str = "auto",
             log=print) -> dict[str, Any]:
    """Measure ``config`` on this machine and project it (see the module docstring); returns the report and
    ``log``s it as it goes."""
    with tempfile.TemporaryDirectory(prefix="ctsynth_estimate_") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        prep = Path(prep) if prep else make_phantom_cache(config, workdir)
        log(f"cache ready in {time.perf_counter() - t0:.0f} s: {prep}")
        measured = measure_apart(config, prep, workdir, steps, warmup, accelerator)
        report = project(config, measured, cases, devices)
        report.update(config=config.name, memory_kind=PeakMemory().kind, measured_steps=steps,
                      gpu_memory_gb=gpu_memory_gb, knobs=[])
        for row in report["stages"]:
            row["fits"] = (None if gpu_memory_gb is None or row["peak_mb"] is None
                           else row["peak_mb"] <= gpu_memory_gb * 1024)
            if row["fits"] is False:
                for knob, variant in knob_variants(config, row["stage"]):
                    m = measure_apart(variant, prep, workdir, steps, warmup, accelerator, row["stage"])[row["stage"]]
                    steps_total = section(variant, row["stage"]).steps
                    report["knobs"].append({
                        "stage": row["stage"], "knob": knob, "s_per_step": m.s_per_step, "peak_mb": m.peak_mb,
                        "schedule_s": steps_total * (m.s_per_step or 0.0),
                        "fits": m.peak_mb is not None and m.peak_mb <= gpu_memory_gb * 1024})
    return report


def format_report(report: dict[str, Any]) -> list[str]:
    """The report as lines of text (``ctsynth estimate``)."""
    def hours(s: float) -> str:
        return f"{s / 3600:.2f} h" if s >= 360 else f"{s:.0f} s"

    lines = [f"config {report['config']}: {report['measured_steps']} steps measured per stage, memory = "
             f"{report['memory_kind']}; {report['devices']} device(s), epoch = {report['cases']} cases"]
    for r in report["stages"]:
        if r["s_per_step"] is None:
            lines.append(f"  {r['stage']:<12} nothing to train")
            continue
        fits = "" if r["fits"] is None else ("  fits" if r["fits"] else "  DOES NOT FIT")
        lines.append(f"  {r['stage']:<12} {r['s_per_step']:.3f} s/step, peak {r['peak_mb']:.0f} MiB{fits}; "
                     f"schedule {r['steps']} steps = {hours(r['schedule_s'])}; epoch {r['steps_per_epoch']} steps "
                     f"= {hours(r['epoch_s'])} ({r['epochs_in_schedule']:.1f} epochs in the schedule)")
    lines.append(f"  total: schedule {hours(report['schedule_s'])}, "
                 f"one epoch of every stage {hours(report['epoch_s'])}")
    for k in report["knobs"]:
        lines.append(f"  knob for {k['stage']}: {k['knob']} -> peak {k['peak_mb']:.0f} MiB, "
                     f"{(k['s_per_step'] or 0):.3f} s/step, schedule {hours(k['schedule_s'])}: "
                     f"{'fits' if k['fits'] else 'does not fit'}")
    return lines

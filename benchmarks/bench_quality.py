"""The quality benchmark: does the generator learn chest anatomy and the class at a fixed compute budget?

    python benchmarks/bench_quality.py                         # 2 CPU cores: 45 minutes of training
    python benchmarks/bench_quality.py --budget-min 10         # a shorter budget
    python benchmarks/bench_quality.py --device cuda --size 48x240x360 --budget-min 5   # on a GPU
    python benchmarks/bench_quality.py --smoke                 # every step, tiny, in a few minutes (tests)

Steps, each reused when run again with the same arguments (``--work``, default ./bench-quality):
1. a phantom cohort of ``--n`` cases (half COVID-19), prepared as lung crops of ``--size`` with ``--config``
   (default ``quality``: 32 x 96 x 144, a fifth of the patients held out);
2. training for ``--budget-min`` minutes of wall clock (``train.time_budget_min``: the diffusion stage ends
   at the first step past the budget, counted over resumes, so an interrupted run continues when the same
   command is run again), with a checkpoint every ``budget / --curve`` minutes;
3. ``--samples`` volumes per class, then ``ctsynth.evaluate.evaluate`` (what ``ctsynth evaluate`` runs)
   against the cache, whose held-out patients are the real-vs-real baseline; the verdict table is printed;
4. a learning curve: the EMA weights of ``--curve`` checkpoints spread over the budget each sample
   ``--curve-samples`` volumes per class, scored against the same real summaries (Frechet distance in both
   feature spaces and class consistency);
5. ``WORK/quality.json`` (every number), ``WORK/curve.png`` and ``WORK/montage.png`` (matplotlib).

The wall-clock budget counts training only (sampling and evaluation are timed and printed apart). The numbers of a run go to docs/quality.md by hand, with the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CURVE_METRICS = (("frechet_distance", "radiomics"), ("frechet_distance", "encoder"))


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) != 3 or min(parts) < 8:
        raise SystemExit(f"--size must be ZxYxX with each at least 8, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def make_config(args: argparse.Namespace):
    from ctsynth.config import load_config

    config = load_config(args.config)
    if args.size:
        config.data.shape = parse_shape(args.size)
    if args.smoke:
        config.data.shape = (16, 32, 48)
        config.data.held_out_fraction = 0.4
        config.diffusion.channels, config.diffusion.attention_levels = (16, 32), (False, True)
        config.diffusion.norm_num_groups = config.diffusion.num_head_channels = 8
        config.diffusion.sample_steps = 4
    return config


def checkpoint_generator(run: Path, ckpt: Path, train_images):
    """A ``Generator`` of the finished run with the EMA weights of one of its checkpoints; with
    a cascade, what training's end fits (residual banks, calibration) fitted on ``train_images()`` (the training
    data) as it would have (checkpoints are saved before it)."""
    from ctsynth.checkpoint import load_weights
    from ctsynth.generate import Generator
    from ctsynth.train.diffusion import fit_after_training

    generator = Generator.load(run)
    generator.unet.load_state_dict(load_weights(ckpt / "weights.safetensors")["ema"])
    if generator.config.diffusion.cascade:
        fit_after_training(generator.unet, generator.config, train_images())
    return generator


def synthetic_items(generator, per_class: int, group: str, batch: int):
    from ctsynth.evaluate.inputs import StudyItem

    items = []
    for label, seed in (("covid", 0), ("normal", 10_000)):
        for k, volume in enumerate(generator.sample(per_class, label, seed=seed, batch_size=batch)):
            items.append(StudyItem(id=f"{label}_{k:05d}", patient=f"{label}_{k:05d}", label=label, group=group,
                                   load=lambda v=volume: v))
    return items


def curve_point(summaries, grid, options) -> dict:
    """FD (both spaces) and class consistency of one synthetic set (group "synthetic") vs the real summaries."""
    from ctsynth.evaluate.pipeline import evaluate_summaries

    report = evaluate_summaries(summaries, ["synthetic"], None, grid=grid, options=options, progress=lambda m: None)
    result = report.metrics["sets"]["synthetic"]
    point = {f"{metric} [{space}]": result["fidelity"][space]["synthetic"][metric] for metric, space in CURVE_METRICS}
    point.update({f"baseline {metric} [{space}]": result["fidelity"][space]["baseline"][metric]
                  for metric, space in CURVE_METRICS})
    point["class consistency"] = result["utility"].get("class_consistency")
    return point


def plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [p["train_minutes"] for p in curve]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), constrained_layout=True)
    for ax, (metric, space) in zip(axes, CURVE_METRICS):
        key = f"{metric} [{space}]"
        ax.plot(minutes, [p[key] for p in curve], "o-", label="synthetic")
        ax.plot(minutes, [2 * p[f"baseline {key}"] for p in curve], "k--", label="2x real-vs-real (target)")
        ax.set(title=f"Frechet distance, {space}", xlabel="training minutes", yscale="log")
        ax.legend(fontsize=8)
    axes[2].plot(minutes, [p["class consistency"] for p in curve], "o-", label="synthetic")
    axes[2].axhline(0.9, color="k", ls="--", label="target 0.9")
    axes[2].set(title="class consistency", xlabel="training minutes", ylim=(0, 1.02))
    axes[2].legend(fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_montage(summaries, path: Path, per_row: int = 6) -> None:
    """Central axial slices, lung window: real and synthetic, COVID-19 then normal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for label in ("covid", "normal"):
        for kind in ("real", "synthetic"):
            group = [s for s in summaries if str(s.label) == label
                     and ((s.group in ("train", "held_out")) == (kind == "real"))]
            rows.append((f"{kind}\n{label}", group[:per_row]))
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.9 * per_row, 1.45 * len(rows)), squeeze=False)
    for r, (title, group) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(group):
                s = group[c]
                aspect = s.spacing_mm[1] / s.spacing_mm[2]
                ax.imshow(s.slices["axial"], cmap="gray", vmin=-1350, vmax=150, aspect=aspect)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.subplots_adjust(wspace=0.03, hspace=0.05, left=0.06, right=0.99, top=0.99, bottom=0.01)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-quality"), help="working folder (reused)")
    parser.add_argument("--budget-min", type=float, default=45.0, help="training wall clock, minutes (default 45)")
    parser.add_argument("--size", default=None, help="crop shape ZxYxX (default: the config's, 32x96x144)")
    parser.add_argument("--n", type=int, default=200, help="phantom cases, half COVID-19 (default 200)")
    parser.add_argument("--phantom-size", type=int, default=256, help="phantom in-plane matrix (default 256)")
    parser.add_argument("--samples", type=int, default=50, help="synthetic volumes per class (default 50)")
    parser.add_argument("--curve", type=int, default=3, help="learning-curve points over the budget (default 3)")
    parser.add_argument("--curve-samples", type=int, default=10, help="volumes per class at each curve point")
    parser.add_argument("--config", default="quality", help="preset or YAML (default quality)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--smoke", action="store_true", help="everything, tiny: 12 phantoms, seconds of training")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.phantom_size, args.samples, args.curve, args.curve_samples = 12, 64, 3, 2, 2
        args.budget_min = min(args.budget_min, 0.05)

    import torch

    from ctsynth.cli.evaluate import summary_lines
    from ctsynth.evaluate import EvaluateOptions, evaluate
    from ctsynth.generate import Generator, generate_to_folder
    from ctsynth.phantom import make_phantom_cohort
    from ctsynth.preprocess.prepare import prepare_cache
    from ctsynth.train import LaunchOptions, train

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    launch = LaunchOptions(accelerator="gpu" if device == "cuda" else "cpu")
    config = make_config(args)
    if device == "cuda":
        config.train.precision = "bf16-mixed"
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    started = time.perf_counter()
    log(f"bench_quality: {args.n} phantoms, crops {config.data.shape}, budget {args.budget_min:g} min on {device}; "
        f"load average {load_average()}")

    t = time.perf_counter()
    cohort = work / f"cohort-{args.n}-{args.phantom_size}"
    if not (cohort / "labels.csv").is_file():
        make_phantom_cohort(cohort, args.n, fmt="nifti", seed=0, size=args.phantom_size, overwrite=True)
    shape_tag = "x".join(str(n) for n in config.data.shape)
    prep = work / f"prep-{args.n}-{shape_tag}-{config.data_hash()}"
    prepare_cache(cohort, config, prep, progress=False)
    times["cohort_and_prepare_s"] = time.perf_counter() - t

    config.diffusion.steps = 10**9  # the time budget ends the stage
    config.train.time_budget_min = args.budget_min
    config.train.checkpoint_every_min = args.budget_min / args.curve
    config.train.checkpoint_every = 10**9
    config.train.keep_last = args.curve + 2
    run = work / f"run-{config.hash()}"
    t = time.perf_counter()
    if train(prep, config, run, launch) != "done":
        log("training stopped; run the same command again to continue")
        return 130
    times["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    synthetic = work / f"synthetic-{config.hash()}"
    generator = Generator.load(run, device=device)
    for label, seed in (("covid", 0), ("normal", 10_000)):
        generate_to_folder(generator, synthetic, args.samples, label, seed=seed, batch_size=10)
    times["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # --smoke checks that every step runs, not what it measures: small evaluation models
    small = {"encoder_steps": 20, "classifier_steps": 20, "bootstrap": 20} if args.smoke else {}
    report = evaluate(prep, [synthetic], work / "report", options=EvaluateOptions(**small), overwrite=True)
    times["evaluate_s"] = time.perf_counter() - t
    table = summary_lines(report.metrics)

    t = time.perf_counter()
    real = [s for s in report.summaries if s.group in ("train", "held_out")]
    final_synth = [s for s in report.summaries if s.group not in ("train", "held_out")]
    options = EvaluateOptions(**{"bootstrap": 100, **small})
    grid = tuple(report.metrics["inputs"]["grid"])
    ckpts = sorted((run / "diffusion").glob("ckpt-*"))
    final_step = json.loads((run / "diffusion" / "done.json").read_text())["step"]
    curve = []

    @functools.cache
    def train_images():  # read once, for every checkpoint's calibration
        from ctsynth.train import check_cache
        from ctsynth.train.diffusion import training_images

        return training_images(config, prep, check_cache(prep, config)["train"])

    for ckpt in ckpts:
        step = int(ckpt.name.split("-")[1])
        if step == final_step:
            subset = ([s for s in final_synth if s.label == "covid"][:args.curve_samples]
                      + [s for s in final_synth if s.label == "normal"][:args.curve_samples])
            synth = [dataclasses.replace(s, group="synthetic") for s in subset]
        else:
            from ctsynth.evaluate.pipeline import summarise_items

            items = synthetic_items(checkpoint_generator(run, ckpt, train_images), args.curve_samples, "synthetic",
                                    batch=10)
            synth = summarise_items(items, grid, None, progress=lambda m: None)
        point = curve_point(real + synth, grid, options)
        seconds = json.loads((ckpt / "state.json").read_text()).get("train_seconds", float("nan"))
        point.update(step=step, train_minutes=round(seconds / 60, 2))
        curve.append(point)
        log(f"curve: step {step}: " + ", ".join(f"{k} {v:.3g}" for k, v in point.items()
                                                 if isinstance(v, float) and not k.startswith("baseline")))
    times["curve_s"] = time.perf_counter() - t
    plot_curve(curve, work / "curve.png")
    plot_montage(report.summaries, work / "montage.png")

    ae_metrics = json.loads((run / "autoencoder" / "metrics.json").read_text())
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "device": device,
              "torch_threads": torch.get_num_threads(), "steps": final_step,
              "seconds": {k: round(v, 1) for k, v in times.items()}, "wall_s": round(time.perf_counter() - started),
              "load_average_end": load_average(), "stage1": {k: ae_metrics.get(k) for k in ("psnr_db", "ssim",
                                                                                          "max_abs_error")},
              "curve": curve, "verdicts": report.metrics["sets"][next(iter(report.metrics["sets"]))]["verdicts"],
              "lesion_fraction_by_class": report.metrics["sets"][next(iter(report.metrics["sets"]))]["anatomy"][
                  "lesion_fraction_by_class"]}
    (work / "quality.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"quality benchmark: {args.n} phantoms, crops {shape_tag}, {device}, budget {args.budget_min:g} min: "
          f"{final_step} steps ({final_step / max(curve[-1]['train_minutes'] * 60, 1e-9):.3f} steps/s), this call "
          f"trained for {times['train_s'] / 60:.1f} min")
    print("\n".join(table))
    print("learning curve (step, training minutes, FD radiomics, FD encoder, class consistency):")
    for p in curve:
        print(f"  {p['step']:>6}  {p['train_minutes']:>6}  {p['frechet_distance [radiomics]']:.4g}  "
              f"{p['frechet_distance [encoder]']:.4g}  {p['class consistency']}")
    lf = result["lesion_fraction_by_class"]
    print("lesion fraction by class: " + ", ".join(f"{k}: real {v.get('real', float('nan')):.3f}, synthetic "
                                                     f"{v.get('synthetic', float('nan')):.3f}" for k, v in lf.items()))
    print(f"times: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; wall {result['wall_s']} s; "
          f"load average at the end {result['load_average_end']}")
    print(f"results: {work / 'quality.json'}, {work / 'curve.png'}, {work / 'montage.png'}, {work / 'report'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

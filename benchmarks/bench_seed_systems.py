"""The seed report's systems beside ours, reduced: one phantom cohort, one cache, one training budget each.

    python benchmarks/bench_seed_systems.py prepare --work W                 # cohort + the quality cache
    python benchmarks/bench_seed_systems.py train gan --work W --budget-min 8
    python benchmarks/bench_seed_systems.py train quality --work W --budget-min 8
    python benchmarks/bench_seed_systems.py train cascade-low --work W --budget-min 4
    python benchmarks/bench_seed_systems.py train cascade-sr --work W --budget-min 4
    python benchmarks/bench_seed_systems.py report --work W --samples 10     # generate, evaluate, montages
    ... train RUN --work W2 --seed 1 ...                                     # another training seed: a new W

Each ``train`` is one process (run two at once on two cores); ``report`` generates ``--samples`` volumes per
class from each finished run, evaluates every set in one ``ctsynth.evaluate.evaluate`` call against the same
cache (so the real summaries and the real-vs-real baseline are shared), and writes ``W/seed-systems.json``
(every verdict per system, steps, times) and ``W/montage-<system>.png``. The systems:

- ``gan``: the ``gan-baseline`` preset (Wu et al. 2016, class-conditional) at the cache's shape (the first
  kernel adapts: models/gan.py first_kernel), with ``--gan-width`` and ``--gan-batch`` so that a CPU takes
  steps. At one shape the ``gan-48`` preset is the same network (it differs from gan-baseline only by shape).
- ``quality``: our generator, the ``quality`` preset (wavelet cascade) as bench_quality.py trains it.
- ``cascade``: the seed report's "generate small, then upscale": the quality preset at half the in-plane size
  (``cascade-low``, its own cache of the same cohort) and the ``cascade`` preset's SR network at in-plane x2
  (``cascade-sr``, trained on the full cache), sampled as ``ctsynth generate LOW --upscale SR`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_quality import load_average, log, plot_montage  # noqa: E402

SYSTEMS = ("gan", "quality", "cascade")
RUNS = ("gan", "quality", "cascade-low", "cascade-sr")
STAGE_DIR = {"gan": "gan", "quality": "diffusion", "cascade-low": "diffusion", "cascade-sr": "sr_inplane"}


def base_data():
    """The one data section (the quality preset's 32 x 96 x 144 lung crops) every full-size system shares."""
    from ctsynth.config import load_config

    return load_config("quality").data


def low_data():
    """The cascade's generator works at half the in-plane size; 3 Haar levels still divide 32 x 48 x 72."""
    data = base_data()
    return dataclasses.replace(data, shape=(data.shape[0], data.shape[1] // 2, data.shape[2] // 2))


def budgeted(config, budget_min: float, seed: int):
    """Steps are left unlimited so that ``train.time_budget_min`` alone ends each stage."""
    train = dataclasses.replace(config.train, seed=seed, time_budget_min=budget_min, checkpoint_every=10**9,
                                checkpoint_every_min=max(budget_min / 2, 0.5), keep_last=2)
    return dataclasses.replace(config, train=train)


def run_config(name: str, args: argparse.Namespace):
    """The config of one run; see the module docstring for why each differs from its preset."""
    from ctsynth.config import load_config

    if name == "gan":
        config = load_config("gan-baseline")
        gan = dataclasses.replace(config.gan, width=args.gan_width, batch_size=args.gan_batch, steps=10**9)
        config = dataclasses.replace(config, data=base_data(), gan=gan)
    elif name in ("quality", "cascade-low"):
        config = load_config("quality")
        data = base_data() if name == "quality" else low_data()
        config = dataclasses.replace(config, data=data, diffusion=dataclasses.replace(config.diffusion, steps=10**9))
    elif name == "cascade-sr":
        config = load_config("cascade")
        sr = dataclasses.replace(config.sr, inplane_factor=2, batch_size=2, steps=10**9, eval_studies=4)
        config = dataclasses.replace(config, data=base_data(), sr=sr)
    else:
        raise SystemExit(f"unknown run {name!r}; one of {', '.join(RUNS)}")
    return budgeted(config, args.budget_min, args.seed)


def prep_dir(work: Path, data) -> Path:
    return work / f"prep-{'x'.join(map(str, data.shape))}"


def prepare(args: argparse.Namespace) -> None:
    """One cohort; the shared cache and the cascade's low-resolution cache of the same patients."""
    from ctsynth.config import load_config
    from ctsynth.phantom import make_phantom_cohort
    from ctsynth.preprocess.prepare import prepare_cache

    cohort = args.work / "cohort"
    if not (cohort / "labels.csv").is_file():
        make_phantom_cohort(cohort, args.n, fmt="nifti", seed=0, size=args.phantom_size, overwrite=True)
    for data in (base_data(), low_data()):
        config = dataclasses.replace(load_config("quality"), data=data)
        prepare_cache(cohort, config, prep_dir(args.work, data), progress=False)


def train_one(args: argparse.Namespace) -> None:
    from ctsynth.train import LaunchOptions, train

    config = run_config(args.run, args)
    started, load = time.perf_counter(), load_average()
    status = train(prep_dir(args.work, config.data), config, args.work / f"run-{args.run}",
                   LaunchOptions(accelerator="cpu"))
    if status != "done":
        raise SystemExit(f"{args.run}: training {status}; run the same command again to continue")
    done = json.loads((args.work / f"run-{args.run}" / STAGE_DIR[args.run] / "done.json").read_text())
    record = {"run": args.run, "status": status, "step": done["step"], "train_seconds": done["train_seconds"],
              "wall_s": round(time.perf_counter() - started), "load_before": load, "load_after": load_average(),
              "budget_min": args.budget_min, "config_hash": config.hash()}
    (args.work / f"train-{args.run}.json").write_text(json.dumps(record, indent=2))
    log(json.dumps(record))


SET_NAME = {"gan": "gan-baseline", "quality": "quality", "cascade": "cascade"}


def trained(work: Path, run: str) -> dict | None:
    path = work / f"train-{run}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def system_generator(work: Path, system: str):
    """The generator of a system and, for the cascade, its upscaler (as ``ctsynth generate --upscale``)."""
    from ctsynth.generate import Generator
    from ctsynth.upscale import Upscaler

    if system == "cascade":
        return Generator.load(work / "run-cascade-low"), Upscaler.load(work / "run-cascade-sr")
    return Generator.load(work / f"run-{system}"), None


def generate_set(work: Path, system: str, per_class: int) -> tuple[Path, float]:
    """``per_class`` volumes a class with the seeds bench_quality uses; reused when already complete."""
    from ctsynth.generate import generate_to_folder

    out = work / "synthetic" / SET_NAME[system]
    started = time.perf_counter()
    if len(list(out.glob("*.json"))) < 2 * per_class:
        generator, upscaler = system_generator(work, system)
        for label, seed in (("covid", 0), ("normal", 10_000)):
            generate_to_folder(generator, out, per_class, label, seed=seed, batch_size=per_class, upscaler=upscaler)
    return out, time.perf_counter() - started


def verdict_table(metrics: dict) -> list[dict]:
    """One row a metric: each system's value and verdict beside the (shared) real-vs-real baseline."""
    rows: dict[str, dict] = {}
    for name, result in metrics["sets"].items():
        for r in result["verdicts"]:
            row = rows.setdefault(r["metric"], {"metric": r["metric"], "baseline": r["baseline"],
                                                "target": r["target"], "systems": {}})
            row["systems"][name] = {"value": r["value"], "verdict": r["verdict"]}
    return list(rows.values())


def markdown(table: list[dict], names: list[str]) -> list[str]:
    def cell(entry: dict | None) -> str:
        if not entry:
            return "-"
        value = "-" if entry["value"] is None else f"{entry['value']:.3g}"
        return f"**{value}** pass" if entry["verdict"] == "pass" else f"{value} {entry['verdict']}"

    lines = ["| metric | " + " | ".join(names) + " | real vs real | target |",
             "|---|" + "---|" * (len(names) + 2)]
    for row in table:
        base = "-" if row["baseline"] is None else f"{row['baseline']:.3g}"
        lines.append(f"| {row['metric']} | " + " | ".join(cell(row["systems"].get(n)) for n in names)
                     + f" | {base} | {row['target']} |")
    return lines


def grey_png(path: Path) -> None:
    """Montages are grey: one 8-bit channel instead of RGBA keeps each under 300 KB for docs/images."""
    from PIL import Image

    Image.open(path).convert("L").save(path, optimize=True)


def report(args: argparse.Namespace) -> None:
    """Generate from every trained system, evaluate all sets at once, write the table, JSON and montages."""
    from ctsynth.evaluate import EvaluateOptions, evaluate

    work = args.work
    runs = {run: trained(work, run) for run in RUNS}
    systems = [s for s in SYSTEMS if all(runs[r] for r in RUNS if r == s or r.startswith(f"{s}-"))]
    times, folders = {}, []
    for system in systems:
        folder, seconds = generate_set(work, system, args.samples)
        folders.append(folder)
        times[f"generate_{system}_s"] = round(seconds, 1)
        log(f"{system}: {args.samples} a class in {seconds:.0f} s; load average {load_average()}")
    options = EvaluateOptions(encoder_steps=args.eval_steps, classifier_steps=args.eval_steps,
                              bootstrap=args.bootstrap)
    started = time.perf_counter()
    result = evaluate(prep_dir(work, base_data()), folders, work / "report", options=options, overwrite=True)
    times["evaluate_s"] = round(time.perf_counter() - started, 1)
    names = [SET_NAME[s] for s in systems]
    for name in names:
        keep = [s for s in result.summaries if s.group in ("train", "held_out", name)]
        plot_montage(keep, work / f"montage-{name}.png")
        grey_png(work / f"montage-{name}.png")
    table = verdict_table(result.metrics)
    out = {"runs": runs, "systems": names, "samples_per_class": args.samples, "times": times,
           "options": dataclasses.asdict(options), "load_average_end": load_average(), "table": table,
           "counts": {n: {v: sum(r["systems"].get(n, {}).get("verdict") == v for r in table)
                          for v in ("pass", "fail", "n/a")} for n in names}}
    (work / "seed-systems.json").write_text(json.dumps(out, indent=2, default=str))
    print("\n".join(markdown(table, names)))
    print(json.dumps({"runs": runs, "times": times, "counts": out["counts"]}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("prepare", "train", "report"))
    parser.add_argument("run", nargs="?", choices=RUNS, help="train: which run")
    parser.add_argument("--work", type=Path, default=Path("bench-seed-systems"), help="working folder (reused)")
    parser.add_argument("--n", type=int, default=60, help="phantom cases, half COVID-19 (default 60)")
    parser.add_argument("--phantom-size", type=int, default=192, help="phantom in-plane matrix (default 192)")
    parser.add_argument("--budget-min", type=float, default=8.0, help="training wall clock of a run, minutes")
    parser.add_argument("--gan-width", type=float, default=0.25, help="GAN width multiplier (published: 1)")
    parser.add_argument("--gan-batch", type=int, default=16, help="GAN batch (published: 100)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every run (a new --work for each)")
    parser.add_argument("--samples", type=int, default=10, help="synthetic volumes per class and system")
    parser.add_argument("--eval-steps", type=int, default=150, help="evaluation encoder and classifier steps")
    parser.add_argument("--bootstrap", type=int, default=200, help="evaluation bootstrap resamples")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.action == "train" and not args.run:
        parser.error(f"train needs a run: {', '.join(RUNS)}")
    {"prepare": prepare, "train": train_one, "report": report}[args.action](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

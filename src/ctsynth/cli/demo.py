"""`ctsynth demo`: the whole pipeline, small, on the built-in phantom cohort, on a CPU.

phantom -> prepare -> train -> generate (both labels) -> evaluate, into one folder. Every step is the
library call behind its own sub-command, and every step picks up where it left off, so an interrupted
demo continues when run again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run phantom, prepare, train, generate and evaluate, small, on a CPU",
        description="The whole pipeline on a built-in phantom cohort with the `demo` preset (the wavelet "
                    "cascade, small): about two minutes on an idle 2-core CPU. Rerunning continues an "
                    "interrupted demo.")
    parser.add_argument("--out", default="ctsynth-demo", type=Path, help="output folder (default ./ctsynth-demo)")
    parser.add_argument("--n", type=int, default=16, help="phantom cases (default 16)")
    parser.add_argument("--size", type=int, default=128, help="phantom in-plane matrix (default 128)")
    parser.add_argument("--samples", type=int, default=4, help="synthetic volumes per label (default 4)")
    parser.add_argument("--config", default="demo", help="preset or YAML for prepare and train (default demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the cohort and the samples (default 0)")
    parser.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import CTSynthError
    from ..evaluate import EvaluateOptions, evaluate
    from ..generate import Generator, generate_to_folder
    from ..phantom import make_phantom_cohort
    from ..preprocess.prepare import prepare_cache, summarise
    from ..train import train
    from .evaluate import summary_lines

    if args.n < 4:
        raise CTSynthError(f"--n must be at least 4 (two per class and a held-out split), got {args.n}")
    if args.samples < 2:
        raise CTSynthError(f"--samples must be at least 2 per label, got {args.samples}")
    out: Path = args.out
    cohort, prep, run_dir, synthetic, report = (out / name for name in
                                                ("cohort", "prep", "run", "synthetic", "report"))
    config = load_config(args.config)
    started = time.perf_counter()

    t = _step(f"1/5 phantom cohort: {args.n} cases at {args.size} px -> {cohort}")
    if (cohort / "labels.csv").is_file():
        print("   already there", file=sys.stderr)
    else:
        make_phantom_cohort(cohort, args.n, fmt="nifti", seed=args.seed, size=args.size)
    print(f"   {time.perf_counter() - t:.0f} s", file=sys.stderr)

    t = _step(f"2/5 prepare ({config.name}: {config.data.mode} mode, shape {config.data.shape}) -> {prep}")
    print(summarise(prepare_cache(cohort, config, prep, progress=False)), file=sys.stderr)
    print(f"   {time.perf_counter() - t:.0f} s", file=sys.stderr)

    t = _step(f"3/5 train ({config.name}) -> {run_dir}")
    if train(prep, config, run_dir) != "done":
        print(f"ctsynth demo: training stopped; run `ctsynth demo --out {out}` again to continue", file=sys.stderr)
        return 130
    print(f"   {time.perf_counter() - t:.0f} s", file=sys.stderr)

    t = _step(f"4/5 generate {args.samples} covid + {args.samples} normal -> {synthetic}")
    generator = Generator.load(run_dir)
    for label in ("covid", "normal"):
        # different seeds per label: the same seed would give each covid sample a normal twin from the same noise
        seed = args.seed if label == "covid" else args.seed + args.samples
        generate_to_folder(generator, synthetic, args.samples, label, seed=seed)
    print(f"   {time.perf_counter() - t:.0f} s", file=sys.stderr)

    t = _step(f"5/5 evaluate -> {report}")
    result = evaluate(prep, [synthetic], report, options=EvaluateOptions(seed=args.seed), overwrite=True)
    print(f"   {time.perf_counter() - t:.0f} s", file=sys.stderr)

    for line in summary_lines(result.metrics):
        print(line)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    print(f"report: {(report / 'report.html').resolve()}")
    return 0

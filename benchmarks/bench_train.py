"""Training and sampling speed and peak memory for one config, on whatever hardware this runs on.

    python benchmarks/bench_train.py --config tiny                 # CPU, seconds
    python benchmarks/bench_train.py --config demo --steps 20      # CPU, a minute or two
    python benchmarks/bench_train.py --config lung --steps 50 --cases 8 --prep PREP   # GPU, unchanged

Each measurement runs in its own process (so peak memory is per stage): stage 1 (autoencoder on patches),
stage 2 (latent diffusion), and sampling (seconds per volume, at the config's sampling steps). Peak memory is
the process's peak RSS on CPU, or ``torch.cuda.max_memory_allocated`` on a GPU. Without ``--prep``, a phantom
cohort of ``--cases`` studies is made and prepared with the config (not timed). Steps/s excludes the first
``--warmup`` steps (allocator, autotuning). The measuring (peak memory, seconds per step from ``log.jsonl``,
the phantom cache) is :mod:`ctsynth.estimate`'s, which ``ctsynth estimate`` uses too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ctsynth.estimate import make_phantom_cache, peak_memory_mb, seconds_per_step  # one owner of the measuring


def steps_per_s(log: Path, warmup: int) -> float:
    s = seconds_per_step(log, warmup)
    return float("nan") if s is None else 1.0 / s


def bench_config(args: argparse.Namespace):
    from ctsynth.config import load_config

    config = load_config(args.config)
    config.autoencoder.steps = config.diffusion.steps = args.steps
    config.train.log_every = 1
    config.train.checkpoint_every = 10**9  # the final checkpoint only
    if args.precision:
        config.train.precision = args.precision
    return config


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    from ctsynth.train import LaunchOptions, train

    config = bench_config(args)
    run = Path(args.run)
    launch = LaunchOptions(accelerator=args.accelerator)
    result: dict = {"stage": args.child}
    if args.child in ("autoencoder", "diffusion"):
        t0 = time.perf_counter()
        train(args.prep, config, run, launch)
        result["wall_s"] = time.perf_counter() - t0
        log = run / args.child / "log.jsonl"  # none for a stage with nothing to train (autoencoder.kind haar)
        result["steps_per_s"] = steps_per_s(log, args.warmup) if log.is_file() else None
    else:
        import torch

        from ctsynth.generate import Generator

        device = "cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"
        gen = Generator.load(run, device=device)
        gen.sample(1, config.data.labels[0], seed=0)  # warm-up
        t0 = time.perf_counter()
        gen.sample(args.samples, config.data.labels[-1], seed=1)
        if device == "cuda":
            torch.cuda.synchronize()
        result["s_per_volume"] = (time.perf_counter() - t0) / args.samples
        result["sample_steps"] = config.diffusion.sample_steps
    result["peak_mb"], result["memory_kind"] = peak_memory_mb()
    print(json.dumps(result))


def make_prep(config_name: str, cases: int, workdir: Path) -> Path:
    from ctsynth.config import load_config

    return make_phantom_cache(load_config(config_name), workdir, cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--prep", default=None, help="an existing cache for this config (default: make one)")
    parser.add_argument("--cases", type=int, default=6, help="phantom studies when no --prep is given")
    parser.add_argument("--steps", type=int, default=20, help="steps per stage")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        prep = Path(args.prep) if args.prep else make_prep(args.config, args.cases, workdir)
        print(f"cache ready in {time.perf_counter() - t0:.1f} s: {prep}", file=sys.stderr)
        results = {}
        for stage in ("autoencoder", "diffusion", "sample"):
            cmd = [sys.executable, __file__, "--child", stage, "--run", str(workdir / "run"), "--prep", str(prep),
                   "--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--samples", str(args.samples), "--accelerator", args.accelerator]
            if args.precision:
                cmd += ["--precision", args.precision]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if proc.returncode != 0:
                sys.exit(f"{stage} failed:\n{proc.stderr[-3000:]}")
            results[stage] = json.loads(proc.stdout.strip().splitlines()[-1])

    ae, dm, smp = results["autoencoder"], results["diffusion"], results["sample"]
    print(f"config {args.config}, {args.steps} steps per stage, memory = {ae['memory_kind']}")
    def rate(r: dict) -> str:
        return "nothing to train" if r["steps_per_s"] is None else f"{r['steps_per_s']:.2f} steps/s"

    print(f"stage 1 autoencoder: {rate(ae)}, peak {ae['peak_mb']:.0f} MB")
    print(f"stage 2 diffusion:   {rate(dm)}, peak {dm['peak_mb']:.0f} MB")
    print(f"sampling:            {smp['s_per_volume']:.2f} s/volume at {smp['sample_steps']} steps, "
          f"peak {smp['peak_mb']:.0f} MB")
    if ae["steps_per_s"] and dm["steps_per_s"]:
        print(f"ratio diffusion/autoencoder steps/s: {dm['steps_per_s'] / ae['steps_per_s']:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

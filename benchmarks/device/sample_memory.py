"""Time and peak memory to sample one volume of a preset, the way `ctsynth generate` samples it.

    python benchmarks/device/sample_memory.py --config lung,full                    # makes its own phantom caches
    python benchmarks/device/sample_memory.py --config full --prep PREP --precision bf16-mixed

For each config: a run is made by ctsynth's own training code (``ctsynth.train.train``) with one step per
stage on a prepared cache, so the run folder, ``Generator.load`` and the models are exactly those of a real
run (the weights are barely trained, which does not change the compute). Then, for each precision, a Fabric
is made as `ctsynth generate --precision P` makes it, the run is loaded onto its device, one warm-up volume is
sampled (allocator, cuDNN autotuning), and ``--samples`` volumes are timed with
``Generator.sample_with_specs(..., autocast=fabric.autocast)``: denoising with classifier-free guidance at the
config's ``sample_steps``, decoding, and the copy back to the CPU. One more volume at 1 sampling step splits
the time into denoising (per step) and the rest (decoding, copy). Peak memory is
``torch.cuda.max_memory_allocated`` over the timed volumes (reset after the warm-up; the loaded weights are
included and reported on their own), or the process's peak RSS on a CPU (cumulative over the process).

Prints one line per measurement, one JSON line per measurement, and a line for the goal (default: a
48x512x512 volume in <= 1 s and <= 8192 MB, met if any precision meets both).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape must be ZxYxX, got {text!r}")
    return parts  # type: ignore[return-value]


def shape_text(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def make_run(config_name: str, prep: Path, run_dir: Path, accelerator: str) -> None:
    """A run folder of ``config_name`` made by ctsynth's training code, one step per stage."""
    from ctsynth.config import load_config
    from ctsynth.train import LaunchOptions, train

    config = load_config(config_name)
    config.autoencoder.steps = config.diffusion.steps = 1
    config.train.log_every = 1
    config.train.checkpoint_every = 10**9  # the final checkpoint only
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):  # progress bars: not for the benchmark log
            status = train(prep, config, run_dir, LaunchOptions(accelerator=accelerator))
    except BaseException:
        sys.stderr.write(log.getvalue()[-3000:])
        raise
    if status != "done":
        raise RuntimeError(f"training the {config_name} run stopped early ({status})")


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run_dir: Path, precision: str, accelerator: str, samples: int) -> dict:
    import torch

    from ctsynth.generate import Generator
    from ctsynth.launch import LaunchOptions, make_fabric

    fabric = make_fabric(LaunchOptions(accelerator=accelerator), precision)  # as `ctsynth generate` does
    device = fabric.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    gen = Generator.load(run_dir, device=device)
    label = gen.labels[-1]
    synchronize(device)
    weights_mb = torch.cuda.memory_allocated(device) / 2**20 if cuda else float("nan")

    def sample(n: int, seed: int, steps: int | None = None) -> float:
        t0 = time.perf_counter()
        volumes = gen.sample_with_specs(n, label, seed=seed, steps=steps, autocast=fabric.autocast)
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if not all(v.shape == gen.image_shape for v, _ in volumes):
            raise RuntimeError(f"sampled shape {volumes[0][0].shape} != the run's {gen.image_shape}")
        return elapsed

    sample(1, seed=0)  # warm-up: allocator, cuDNN autotuning, lazy initialisation
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    s_per_volume = sample(samples, seed=1) / samples
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
        memory_kind = f"GPU ({torch.cuda.get_device_name(device)})"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reserved_mb = float("nan")
        memory_kind = "CPU RSS (process peak so far)"
    steps = gen.config.diffusion.sample_steps
    s_one_step = sample(1, seed=2, steps=1)
    per_step = (s_per_volume - s_one_step) / (steps - 1) if steps > 1 else float("nan")
    result = {
        "config": gen.config.name, "shape": list(gen.image_shape), "latent_shape": list(gen.latent_shape),
        "precision": precision, "device": str(device), "samples": samples, "s_per_volume": s_per_volume,
        "sample_steps": steps, "guidance": gen.config.diffusion.guidance, "s_per_volume_1_step": s_one_step,
        "s_per_denoising_step": per_step, "s_rest": max(0.0, s_one_step - per_step) if steps > 1 else float("nan"),
        "peak_mb": peak_mb, "reserved_mb": reserved_mb, "weights_mb": weights_mb, "memory_kind": memory_kind,
    }
    del gen
    if cuda:
        torch.cuda.empty_cache()
    return result


def report(r: dict) -> None:
    weights = f", of which weights {r['weights_mb']:.0f} MB" if r["weights_mb"] == r["weights_mb"] else ""
    print(f"sampling {shape_text(r['shape'])} ({r['config']}, {r['precision']}): {r['s_per_volume']:.3f} s/volume "
          f"at {r['sample_steps']} steps, guidance {r['guidance']:g} "
          f"({r['s_per_denoising_step']:.4f} s per denoising step, {r['s_rest']:.3f} s decode and rest), "
          f"peak {r['peak_mb']:.0f} MB{weights} [{r['memory_kind']}]", flush=True)
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}  # NaN -> null
    print(json.dumps({"sample_memory": clean}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="tiny", help="preset name(s), comma-separated (e.g. lung,full)")
    parser.add_argument("--prep", default=None,
                        help="prepared cache(s) for the config(s), comma-separated in the same order")
    parser.add_argument("--prep-root", default=None,
                        help="folder holding prep-<config> caches (as benchmarks/device/run.sh makes them)")
    parser.add_argument("--cases", type=int, default=2, help="phantom studies when a cache has to be made")
    parser.add_argument("--precision", default="32,bf16-mixed",
                        help="comma-separated: 32 (the `ctsynth generate` default), bf16-mixed, 16-mixed")
    parser.add_argument("--samples", type=int, default=1, help="timed volumes per measurement")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--goal-shape", type=parse_shape, default=(48, 512, 512))
    parser.add_argument("--goal-s", type=float, default=1.0, help="goal: seconds per volume at --goal-shape")
    parser.add_argument("--goal-mb", type=float, default=8192.0, help="goal: peak MB at --goal-shape")
    args = parser.parse_args()

    configs = [c for c in args.config.split(",") if c]
    preps = args.prep.split(",") if args.prep else [None] * len(configs)
    if len(preps) != len(configs):
        parser.error("--prep needs one cache per --config")
    precisions = [p for p in args.precision.split(",") if p]

    results, failures = [], []
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name, prep in zip(configs, preps):
            label = Path(name).stem if name.endswith(".yaml") else name  # a preset name or a YAML path
            if prep is None and args.prep_root and (Path(args.prep_root) / f"prep-{label}").is_dir():
                prep = str(Path(args.prep_root) / f"prep-{label}")
            if prep is None:
                sys.path.insert(0, str(BENCHMARKS))
                from bench_train import make_prep

                t0 = time.perf_counter()
                prep = str(make_prep(name, args.cases, work / f"cache-{label}"))
                print(f"{label}: phantom cache made in {time.perf_counter() - t0:.1f} s", flush=True)
            run_dir = work / f"run-{label}"
            t0 = time.perf_counter()
            make_run(name, Path(prep), run_dir, args.accelerator)
            print(f"{label}: run made (1 training step per stage) in {time.perf_counter() - t0:.1f} s", flush=True)
            for precision in precisions:
                try:
                    r = measure(run_dir, precision, args.accelerator, args.samples)
                except Exception as exc:  # noqa: BLE001 - report, go on with the other measurements
                    failures.append(f"{label} {precision}")
                    print(f"sampling {label} ({precision}) FAILED: {type(exc).__name__}: {exc}", flush=True)
                    continue
                results.append(r)
                report(r)

    goal = f"goal {shape_text(args.goal_shape)} <= {args.goal_s:g} s and <= {args.goal_mb:.0f} MB"
    at_goal = [r for r in results if tuple(r["shape"]) == tuple(args.goal_shape)]
    if not at_goal:
        print(f"{goal}: not checked (no {shape_text(args.goal_shape)} volume sampled)")
    else:
        met = [r for r in at_goal if r["s_per_volume"] <= args.goal_s and r["peak_mb"] <= args.goal_mb]
        detail = "; ".join(f"{r['precision']}: {r['s_per_volume']:.3f} s, {r['peak_mb']:.0f} MB" for r in at_goal)
        print(f"{goal}: {'MET' if met else 'NOT MET'} ({detail})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

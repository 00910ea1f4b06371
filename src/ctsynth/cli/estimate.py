"""`ctsynth estimate --config NAME [--cases N] [--devices N] [--gpu-memory GB]`: training time and memory, measured."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate", help="measure a config's training speed and memory here and project its training time",
        description="Run a few real steps of every stage of the config on this machine (its GPU when present; "
                    "a phantom cohort is made and prepared unless --prep is given), then print seconds per step, "
                    "peak memory, the projected time of the config's schedule and of one epoch of --cases "
                    "studies, and, with --gpu-memory, whether each stage fits and which measured knobs "
                    "(batch and accumulation, checkpointing, patch) make it fit.")
    parser.add_argument("--config", required=True, help="preset name or YAML file")
    parser.add_argument("--cases", type=int, default=300, help="studies in an epoch (default 300)")
    parser.add_argument("--devices", type=int, default=1, help="data-parallel devices to project for (default 1)")
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                        help="memory to fit in, GiB (e.g. 16 for a Colab T4)")
    parser.add_argument("--steps", type=int, default=5, help="steps measured per stage (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (default 2)")
    parser.add_argument("--prep", default=None, help="a cache prepared with this config (default: a phantom one)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import CTSynthError
    from ..estimate import estimate, format_report

    for name, value, least in (("--cases", args.cases, 1), ("--devices", args.devices, 1),
                               ("--steps", args.steps, 2), ("--warmup", args.warmup, 0)):
        if value < least:
            raise CTSynthError(f"{name} must be at least {least}, got {value}")
    if args.steps <= args.warmup + 1:
        raise CTSynthError(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) by two or more",
                           fix="raise --steps or lower --warmup")
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise CTSynthError(f"--gpu-memory must be positive, got {args.gpu_memory}")
    config = load_config(args.config)
    report = estimate(config, args.cases, args.devices, args.gpu_memory, args.steps, args.warmup, args.prep,
                      args.accelerator, log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(report, indent=2) if args.json else "\n".join(format_report(report)))
    return 0

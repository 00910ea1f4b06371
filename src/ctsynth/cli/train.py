"""`ctsynth train PREP --config NAME --out RUN`: autoencoder, then latent diffusion, on Lightning Fabric."""

from __future__ import annotations

import argparse
import sys


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Launcher flags shared by `train` and `generate` (Lightning Fabric)."""
    group = parser.add_argument_group("launch (Lightning Fabric)")
    group.add_argument("--accelerator", default="auto", help="cpu, gpu, cuda, mps or auto (default)")
    group.add_argument("--devices", default="1", type=_devices,
                       help="devices per node: a number, or 'auto' (default 1)")
    group.add_argument("--num-nodes", type=int, default=1, help="number of nodes (default 1)")
    group.add_argument("--strategy", default="auto", choices=["auto", "ddp", "fsdp"],
                       help="multi-device strategy (default: auto = ddp with several devices; "
                            "fsdp is refused for now, see docs/training.md)")
    group.add_argument("--precision", default=None, choices=["32", "bf16-mixed", "16-mixed"],
                       help="numeric precision (default: the config's train.precision)")


def _devices(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def launch_options(args: argparse.Namespace):
    from ..launch import LaunchOptions

    return LaunchOptions(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
                         strategy=args.strategy, precision=args.precision)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the autoencoder and the latent diffusion model (or the GAN baseline) on a cache",
        description="Train stage 1 (autoencoder) and stage 2 (class-conditional latent diffusion) on a cache "
                    "made by `ctsynth prepare`. Rerunning the same command continues the run: a finished stage "
                    "is skipped, an unfinished one resumes from its newest checkpoint.")
    parser.add_argument("prep", help="cache folder made by `ctsynth prepare`")
    parser.add_argument("--config", required=True,
                        help="preset name (tiny, demo, quality, low, lung, full; gan-baseline, gan-48, gan-tiny: "
                             "the Wu et al. 3D-GAN baseline; sr, sr-tiny: super-resolution for "
                             "`ctsynth upscale`) or YAML file")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, final weights)")
    parser.add_argument("--resume", action="store_true",
                        help="accepted for older scripts: rerunning the same command resumes without it")
    add_launch_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import load_config
    from ..train import train

    config = load_config(args.config)
    status = train(Path(args.prep), config, Path(args.out), launch_options(args))
    if status != "done":
        print(f"ctsynth train: stopped at a checkpoint; to continue, rerun the same command (--resume is not "
              f"needed): `ctsynth train {args.prep} --config {args.config} --out {args.out}`", file=sys.stderr)
        return 130
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(Path(args.out).resolve())
    return 0

"""`ctsynth generate RUN --n N --label covid --out DIR`: sample synthetic CT volumes from a trained run."""

from __future__ import annotations

import argparse
import json
import sys

from .train import add_launch_arguments, launch_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="sample synthetic CT volumes from a trained run",
        description="Sample i uses seed + i, so it is the same whatever the batch size or number of devices. "
                    "Samples already written in --out (their .json sidecar exists) are skipped.")
    parser.add_argument("run_dir", metavar="RUN", help="run folder made by `ctsynth train`")
    parser.add_argument("--n", type=int, required=True, help="number of volumes")
    parser.add_argument("--label", required=True, help="class to sample, e.g. covid or normal")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (1 = none; default: the config's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default 0)")
    parser.add_argument("--format", default="nifti", choices=["nifti", "dicom", "tiff"], help="output format")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--depth", type=int, default=None, help="resample to this many slices")
    size.add_argument("--slice-thickness", type=float, default=None, help="resample to this slice spacing (mm)")
    parser.add_argument("--batch-size", type=int, default=1, help="volumes sampled together per device")
    parser.add_argument("--audit", metavar="PREP", default=None,
                        help="refuse to write samples too close to a study of this cache (memorisation audit)")
    parser.add_argument("--upscale", metavar="SR_RUN", default=None,
                        help="upscale every sample with this super-resolution run (`--config sr` or `cascade`): "
                             "e.g. 48x128x128 generated, 48x512x512 written")
    parser.add_argument("--out", required=True, help="output folder")
    add_launch_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import CTSynthError
    from ..generate import Generator, generate_to_folder
    from ..launch import make_fabric

    if args.n < 1:
        raise CTSynthError(f"--n must be at least 1, got {args.n}")
    out = Path(args.out)
    generator = Generator.load(args.run_dir)  # before the launch: bad input fails once, in one line
    generator.label_index(args.label)
    upscaler = None
    if args.upscale:
        from ..upscale import Upscaler
        upscaler = Upscaler.load(args.upscale)
    audit = None
    if args.audit:
        from ..evaluate.memorisation import MemorisationAudit
        audit = MemorisationAudit.from_reference(Path(args.audit))
    opts = launch_options(args)
    fabric = make_fabric(opts, opts.precision or "32")
    if fabric.device.type != "cpu":
        generator = Generator.load(args.run_dir, device=fabric.device)
        upscaler = Upscaler.load(args.upscale, device=fabric.device) if args.upscale else None
    report = generate_to_folder(generator, out, args.n, args.label, seed=args.seed, guidance=args.guidance,
                                steps=args.steps, fmt=args.format, depth=args.depth,
                                slice_thickness=args.slice_thickness, batch_size=args.batch_size,
                                rank=fabric.global_rank, world=fabric.world_size, audit=audit,
                                autocast=fabric.autocast, upscaler=upscaler)
    for flagged in report["flagged"]:
        print(f"ctsynth generate: sample {flagged['index']} not written: too close to training study "
              f"{flagged['nearest_id']} (similarity {flagged['similarity']:.4f} > {flagged['threshold']:.4f})",
              file=sys.stderr)
    reports = [report]
    if fabric.world_size > 1:
        import torch.distributed as dist
        reports = [None] * fabric.world_size
        dist.all_gather_object(reports, report)
    if fabric.global_rank == 0:
        total = {k: sorted(x for r in reports for x in (r[k] if k != "flagged" else [f["index"] for f in r[k]]))
                 for k in ("written", "skipped", "flagged")}
        print(json.dumps({"out": str(out.resolve()), **{k: len(v) for k, v in total.items()},
                          "flagged_indices": total["flagged"]}))
    return 0

"""`ctsynth upscale IN OUT --run SR_RUN [--factor F] [--depth-factor F]`: one CT volume super-resolved."""

from __future__ import annotations

import argparse
import sys

from ._data_args import add_one_study_options, output_target, read_one_study


def _tile(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not three positive whole numbers z,y,x (e.g. 16,64,64)")
    return values  # type: ignore[return-value]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "upscale", help="upscale one CT volume (real or generated) with a trained super-resolution run",
        description="Read one study (any format ctsynth reads), upscale it in-plane then in depth with the "
                    "networks of a `ctsynth train PREP --config sr` run, and write it with the same physical "
                    "extent, origin and direction, in HU. Tiled with overlap: memory is bounded by --tile. "
                    "The output appears whole or not at all.")
    parser.add_argument("--run", required=True, metavar="SR_RUN", help="run folder of `ctsynth train --config sr`")
    parser.add_argument("--factor", type=int, default=None,
                        help="in-plane factor: the run's (default) or 1 (none)")
    parser.add_argument("--depth-factor", type=int, default=None,
                        help="through-plane factor: the run's (default) or 1 (none)")
    parser.add_argument("--tile", type=_tile, default=None, metavar="Z,Y,X",
                        help="coarse voxels per tile, halo not counted (default 16,64,64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when present)")
    add_one_study_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..io.tiff import DEFAULT_OFFSET
    from ..io.write import write_volume
    from ..upscale import DEFAULT_TILE, Upscaler

    fmt, target = output_target(args.output, args.format, args.overwrite)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    upscaler = Upscaler.load(args.run, device=device)
    upscaler.check_factors(args.factor, args.depth_factor)  # before reading: bad input fails fast
    volume = read_one_study(args, "upscale")
    out = upscaler.upscale(volume, args.factor, args.depth_factor, args.tile or DEFAULT_TILE)
    written = write_volume(out, target, fmt, overwrite=args.overwrite,
                           offset=DEFAULT_OFFSET if args.offset is None else args.offset)
    print(f"upscaled {'x'.join(map(str, volume.shape))} -> {'x'.join(map(str, out.shape))} (z,y,x), spacing "
          f"{'x'.join(f'{s:g}' for s in out.spacing_mm)} mm", file=sys.stderr)
    print(written)
    return 0

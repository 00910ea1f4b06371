"""`ctsynth convert IN OUT`: one study from any supported input to NIfTI, a DICOM series or TIFF slices."""

from __future__ import annotations

import argparse
import sys

from ._data_args import add_one_study_options, output_target, read_one_study


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert one study between DICOM, NIfTI and TIFF slices",
        description="Read one study (a .nii/.nii.gz file, a DICOM file or folder, or a folder of TIFF slices) "
                    "and write it as OUT: a .nii/.nii.gz file, or a folder with --format dicom|tiff. "
                    "The output appears whole or not at all.")
    add_one_study_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.tiff import DEFAULT_OFFSET
    from ..io.write import write_volume

    fmt, target = output_target(args.output, args.format, args.overwrite)
    print(f"reading {args.input}", file=sys.stderr)
    volume = read_one_study(args, "convert")
    written = write_volume(volume, target, fmt, overwrite=args.overwrite,
                           offset=DEFAULT_OFFSET if args.offset is None else args.offset)
    print(f"wrote {fmt} {'x'.join(map(str, volume.shape))} (z,y,x), spacing "
          f"{'x'.join(f'{s:g}' for s in volume.spacing_mm)} mm", file=sys.stderr)
    print(written)
    return 0

"""`ctsynth convert IN OUT`: one study from any supported input to NIfTI, a DICOM series or TIFF slices."""

from __future__ import annotations

import argparse
import sys

from ._data_args import add_data_options, output_target


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert one study between DICOM, NIfTI and TIFF slices",
        description="Read one study (a .nii/.nii.gz file, a DICOM file or folder, or a folder of TIFF slices) "
                    "and write it as OUT: a .nii/.nii.gz file, or a folder with --format dicom|tiff. "
                    "The output appears whole or not at all.")
    parser.add_argument("input", metavar="IN", help="the study to read")
    parser.add_argument("output", metavar="OUT", help="a .nii/.nii.gz file, or a folder with --format dicom|tiff")
    parser.add_argument("--format", choices=("nifti", "dicom", "tiff"),
                        help="output format (default: nifti when OUT ends in .nii/.nii.gz)")
    parser.add_argument("--series", metavar="UID", help="the SeriesInstanceUID to read when IN holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_data_options(parser, series=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.read import read_study
    from ..io.tiff import DEFAULT_OFFSET
    from ..io.write import write_volume

    fmt, target = output_target(args.output, args.format, args.overwrite)
    print(f"reading {args.input}", file=sys.stderr)
    volume = read_study(args.input, series_uid=args.series, offset=args.offset, spacing_mm=args.spacing,
                        metadata=args.metadata, labels=args.labels, label_map=args.label_map,
                        skip_unreadable=args.skip_unreadable)
    for note in volume.meta.get("notes", []):
        print(f"ctsynth convert: note: {note}", file=sys.stderr)
    written = write_volume(volume, target, fmt, overwrite=args.overwrite,
                           offset=DEFAULT_OFFSET if args.offset is None else args.offset)
    print(f"wrote {fmt} {'x'.join(map(str, volume.shape))} (z,y,x), spacing "
          f"{'x'.join(f'{s:g}' for s in volume.spacing_mm)} mm", file=sys.stderr)
    print(written)
    return 0

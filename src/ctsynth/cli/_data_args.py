"""Options shared by the commands that read a data folder (inspect, prepare) or one study (convert, upscale)."""

from __future__ import annotations

import argparse


def spacing_arg(text: str) -> tuple[float, float, float]:
    """``"5,0.7,0.7"`` -> (5.0, 0.7, 0.7): spacing z,y,x in mm."""
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not three positive numbers z,y,x in mm (e.g. 5,0.7,0.7)")
    return values  # type: ignore[return-value]


def thickness_range_arg(text: str) -> tuple[float, float]:
    """``"1,3"`` -> (1.0, 3.0): the preferred slice thickness range of a DICOM study's series, in mm."""
    try:
        values = tuple(float(v) for v in text.replace("-", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"'{text}' is not MIN,MAX in mm with 0 < MIN <= MAX (e.g. 1,3)")
    return values  # type: ignore[return-value]


def add_data_options(parser: argparse.ArgumentParser, series: bool = True) -> None:
    """--labels, --metadata, --label-map, --offset, --spacing, --skip-unreadable, and (``series``) --series and
    --thickness-range (documented in docs/io.md and docs/dicom.md)."""
    group = parser.add_argument_group("reading the data")
    group.add_argument("--labels", metavar="FILE",
                       help="labels CSV (study,label) or COVID-CTset's Patient_details.csv "
                            "(default: labels.csv or Patient_details.csv at the data root, then folder names)")
    group.add_argument("--metadata", metavar="FILE",
                       help="COVID-CTset's Patients_metadata.csv, for TIFF spacing "
                            "(default: the one at the data root)")
    group.add_argument("--label-map", metavar="MAP",
                       help='extra label names, e.g. "positive=covid,negative=normal"')
    group.add_argument("--offset", type=float, metavar="HU",
                       help="TIFF slices: HU = stored value + offset (default -1024, or the metadata's "
                            "RescaleIntercept)")
    group.add_argument("--spacing", type=spacing_arg, metavar="Z,Y,X",
                       help="TIFF slices: spacing in mm when Patients_metadata.csv does not give it")
    group.add_argument("--skip-unreadable", action="store_true",
                       help="DICOM: read a series without its files that cannot be read (cut short, corrupt), "
                            "with a note naming each, instead of refusing the study (a gap is still refused)")
    if series:
        group.add_argument("--series", metavar="CHOICE", default=None,
                           help="DICOM: which series of each study to use: auto (default: one per study, "
                                "axial, complete, soft-tissue kernel, thickness in range, thinnest), axial "
                                "(every axial series), all (also reformats, reoriented to axial), a "
                                "SeriesInstanceUID, or a SeriesDescription pattern such as '*lung*'")
        group.add_argument("--thickness-range", type=thickness_range_arg, metavar="MIN,MAX", default=None,
                           help="DICOM: preferred slice thickness in mm for --series auto (default 1,3)")


def series_rules(args: argparse.Namespace):
    """The SeriesRules of --series and --thickness-range."""
    from ..io.dicom_select import parse_series_option

    return parse_series_option(getattr(args, "series", None), getattr(args, "thickness_range", None))


def output_target(output: str, fmt: str | None, overwrite: bool):
    """``(format, path)`` of a one-study output (`convert`, `upscale`): the format from ``--format`` or a
    .nii/.nii.gz name; an existing output is refused before any work unless ``overwrite``."""
    from ..errors import CTSynthError
    from ..io.nifti import is_nifti_path
    from ..io.write import output_path

    fmt = fmt or ("nifti" if is_nifti_path(output) else None)
    if fmt is None:
        raise CTSynthError("the output format is not clear from the name", output,
                           "name it .nii.gz, or add --format dicom|tiff|nifti")
    target = output_path(output, fmt)
    if target.exists() and not overwrite:
        raise CTSynthError("the output already exists; nothing was written", target,
                           "remove it, choose another name, or pass --overwrite")
    return fmt, target


def add_one_study_options(parser: argparse.ArgumentParser) -> None:
    """IN, OUT, --format, --series (a SeriesInstanceUID), --overwrite and the data options: the commands that
    read one study and write one (`convert`, `upscale`)."""
    parser.add_argument("input", metavar="IN", help="the study to read (file or folder)")
    parser.add_argument("output", metavar="OUT", help="a .nii/.nii.gz file, or a folder with --format dicom|tiff")
    parser.add_argument("--format", choices=("nifti", "dicom", "tiff"),
                        help="output format (default: nifti when OUT ends in .nii/.nii.gz)")
    parser.add_argument("--series", metavar="UID", help="the SeriesInstanceUID to read when IN holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    add_data_options(parser, series=False)


def read_one_study(args: argparse.Namespace, command: str):
    """The study IN of :func:`add_one_study_options`, its reading notes printed to stderr."""
    import sys

    from ..io.read import read_study

    volume = read_study(args.input, series_uid=args.series, offset=args.offset, spacing_mm=args.spacing,
                        metadata=args.metadata, labels=args.labels, label_map=args.label_map,
                        skip_unreadable=args.skip_unreadable)
    for note in volume.meta.get("notes", []):
        print(f"ctsynth {command}: note: {note}", file=sys.stderr)
    return volume

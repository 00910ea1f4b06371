"""Options shared by the commands that read a data folder (inspect, convert, prepare)."""

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


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--labels, --metadata, --label-map, --offset, --spacing (documented in docs/io.md)."""
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

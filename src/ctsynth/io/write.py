"""`write_volume`: one CTVolume to NIfTI, a DICOM series or a TIFF slice folder, atomically."""

from __future__ import annotations

from pathlib import Path

from ..errors import CTSynthError
from ..volume import CTVolume
from .nifti import is_nifti_path, write_nifti
from .tiff import DEFAULT_OFFSET, write_tiff_slices

FORMATS = ("nifti", "dicom", "tiff")


def output_path(out: str | Path, fmt: str) -> Path:
    """Where ``write_volume`` will write: NIfTI names get ``.nii.gz`` unless they end in .nii/.nii.gz."""
    out = Path(out)
    if fmt == "nifti" and not is_nifti_path(out):
        return out.with_name(out.name + ".nii.gz")
    return out


def write_volume(volume: CTVolume, out: str | Path, fmt: str, *, overwrite: bool = False,
                 offset: float = DEFAULT_OFFSET) -> Path:
    """Write ``volume`` as ``fmt`` ("nifti" | "dicom" | "tiff") at ``out``; returns the path written.

    An existing output is refused unless ``overwrite``. ``offset`` is the TIFF storage offset
    (HU = stored + offset).
    """
    if fmt not in FORMATS:
        raise CTSynthError(f"unknown output format '{fmt}'", out, f"use one of {', '.join(FORMATS)}")
    target = output_path(out, fmt)
    if target.exists() and not overwrite:
        raise CTSynthError("the output already exists; nothing was written", target,
                           "remove it, choose another name, or pass --overwrite")
    if target.parent.exists() and not target.parent.is_dir():
        raise CTSynthError("cannot write here: the parent is a file, not a folder", target,
                           "choose an output location inside a folder")
    if fmt == "nifti":
        return write_nifti(volume, target, overwrite=overwrite)
    if fmt == "tiff":
        return write_tiff_slices(volume, target, offset=offset, overwrite=overwrite)
    from .dicom_writer import write_dicom_series

    return write_dicom_series(volume, target, overwrite=overwrite)

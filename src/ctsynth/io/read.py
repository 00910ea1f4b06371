"""`read_study`: one CT study from a file or folder, whatever its format."""

from __future__ import annotations

from pathlib import Path

from ..errors import CTSynthError
from ..volume import CTVolume
from .discover import discover
from .nifti import is_nifti_path, read_nifti
from .tiff import find_metadata_near, is_tiff_path, read_tiff_files


def read_study(
    path: str | Path,
    *,
    series_uid: str | None = None,
    offset: float | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    metadata: str | Path | None = None,
    labels: str | Path | None = None,
    label_map: str | dict[str, str] | None = None,
    skip_unreadable: bool = False,
) -> CTVolume:
    """Read one study into HU: a .nii/.nii.gz file, a DICOM file or folder, or a folder of TIFF slices.

    A folder may hold the series anywhere below it; of a DICOM study the series chosen by the rules of
    :mod:`ctsynth.io.dicom_select` is read (scouts and reformats set aside), or the one ``series_uid`` names;
    several studies are an error listing their ids. ``offset``, ``spacing_mm`` and ``metadata`` apply to TIFF.
    A file of the DICOM series that looks like DICOM but cannot be read is refused by name, unless
    ``skip_unreadable`` (then the series is read without it, and ``meta['notes']`` names it).
    """
    path = Path(path)
    if not path.exists():
        raise CTSynthError("no such file or folder", path, "check the path")
    if path.is_file():
        if is_nifti_path(path):
            return read_nifti(path)
        if is_tiff_path(path):
            volume = read_tiff_files([path], offset=offset, spacing_mm=spacing_mm,
                                     metadata=metadata if metadata is not None or spacing_mm is not None
                                     else find_metadata_near(path), source=path)
            if volume.shape[0] == 1:
                raise CTSynthError("is a single TIFF slice", path, "give the folder that holds the slices")
            return volume
        from .dicom_reader import read_dicom_series

        return read_dicom_series(path, series_uid, skip_unreadable=skip_unreadable)
    from .dicom_select import SeriesRules

    found = discover(path, labels=labels, metadata=metadata, label_map=label_map, offset=offset,
                     spacing_mm=spacing_mm, series=None if series_uid is None else SeriesRules("uid", series_uid),
                     skip_unreadable=skip_unreadable)
    studies = found.studies
    if series_uid is not None:
        from .identity import token

        studies = [s for s in studies if series_uid in (s.series_uid, token("ser", s.series_uid or ""))]
        if not studies:
            raise CTSynthError(f"holds no DICOM series with SeriesInstanceUID {series_uid}", path,
                               "run 'ctsynth inspect' on it to list its series")
    if len(studies) > 1:
        shown = ", ".join(s.id for s in studies[:5]) + (" ..." if len(studies) > 5 else "")
        raise CTSynthError(f"holds {len(studies)} studies ({shown}), not one", path,
                           "point to one study's file or folder, or pick a DICOM series with --series UID")
    # As stored: a copy keeps its geometry (no resampling); prepare and inspect read canonical axial volumes.
    return studies[0].read(canonical=False)

"""COVID-CTset-style TIFF series: a folder of one 16-bit grayscale TIFF per axial slice, read with tifffile.

The TIFFs hold the scanner's stored values, not HU, and carry no geometry. So:

- HU = stored + offset. The offset is, first match wins: the ``offset`` argument (``--offset``); the
  ``ctsynth_tiff.json`` that :func:`write_tiff_slices` leaves beside its slices; the series'
  ``SR_k RescaleIntercept`` in COVID-CTset's ``Patients_metadata.csv``; else -1024 (COVID-CTset's value).
- Spacing (z, y, x) in mm is, first match wins: ``spacing_mm`` (``--spacing``); ``ctsynth_tiff.json``;
  ``SR_k SliceThickness`` and ``SR_k PixelSpacing`` for the series folder ``SR_k`` of patient ``patientN`` in
  ``Patients_metadata.csv``; else :data:`DEFAULT_SPACING_MM` with a warning in ``meta['notes']``.
- Slices are stacked in natural name order (IM2 before IM10), with z increasing by one slice per file. The
  TIFFs do not say which end is superior; ctsynth assumes the first file is the lowest z (documented).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import CTSynthError, reader_boundary
from ..volume import CTVolume
from .atomic import atomic_dir
from .csv_table import read_csv_table
from .library_messages import collect_messages
from .plausible import MAX_COORDINATE_MM, check_finite_hu, check_volume, direction_problem, spacing_problem

TIFF_SUFFIXES = (".tif", ".tiff")
SIDECAR_NAME = "ctsynth_tiff.json"
METADATA_NAME = "Patients_metadata.csv"
DEFAULT_OFFSET = -1024.0
DEFAULT_SPACING_MM = (5.0, 0.7, 0.7)

# `137covid_patient1_SR_2_IM00010.tif`: the flattened COVID-CTset name (prefix optional).
FLAT_NAME = re.compile(r"^(?:(?P<prefix>.*?)_)?(?P<patient>patient\d+)_(?P<series>SR_\d+)_IM\d+\.tiff?$",
                       re.IGNORECASE)
_PATIENT_DIR = re.compile(r"^patient\d+$", re.IGNORECASE)
_SERIES_DIR = re.compile(r"^SR_\d+$", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


def is_tiff_path(path: str | Path) -> bool:
    """True for names ending in .tif or .tiff (case-insensitive)."""
    return str(path).lower().endswith(TIFF_SUFFIXES)


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: ``IM2`` < ``IM10``, ``a_SR_2_IM9`` < ``a_SR_2_IM10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def series_identity(path: Path) -> tuple[str | None, str | None]:
    """(patient, series) from a COVID-CTset path: ``.../patient1/SR_2`` or a flattened slice name."""
    match = FLAT_NAME.match(path.name)
    if match:
        return match["patient"].lower(), match["series"].upper()
    patient = series = None
    for part in path.parts:
        if _PATIENT_DIR.match(part):
            patient = part.lower()
        elif _SERIES_DIR.match(part):
            series = part.upper()
    return patient, series


@dataclass(frozen=True)
class SeriesSpacing:
    """What Patients_metadata.csv says about one series."""

    pixel_spacing_yx: tuple[float, float] | None
    slice_thickness: float | None
    rescale_intercept: float | None


class CovidCTsetMetadata:
    """COVID-CTset's ``Patients_metadata.csv``: one row per patient, columns ``SR_k <DICOM field>``.

    Only PixelSpacing, SliceThickness and RescaleIntercept are kept; the file's identifying columns (dates,
    UIDs, birth dates) are never read into memory beyond parsing the row.
    """

    def __init__(self, path: Path, rows: dict[str, dict[str, SeriesSpacing]]):
        self.path = path
        self._rows = rows

    @classmethod
    def load(cls, path: str | Path) -> "CovidCTsetMetadata":
        path = Path(path)
        header, table = read_csv_table(path, what="metadata file", option="--metadata",
                                       expected="the dataset's Patients_metadata.csv")
        fields = [f.strip() for f in header]
        id_column = next((f for f in header if f.strip().lower() in ("patient id", "patient", "patient_id", "id")),
                         None)
        series_keys = sorted({m.group(1).upper() for f in fields
                              if (m := re.match(r"^(SR_\d+) PixelSpacing$", f, re.IGNORECASE))})
        if id_column is None or not series_keys:
            raise CTSynthError(
                "is not a COVID-CTset Patients_metadata.csv (needs a 'Patient ID' column and "
                f"'SR_k PixelSpacing' columns; found {', '.join(fields[:5]) or 'no header'})", path,
                "give the dataset's Patients_metadata.csv with --metadata, or set --spacing z,y,x")
        lower = {f.strip().lower(): f for f in header}
        rows: dict[str, dict[str, SeriesSpacing]] = {}
        for row in table:
            patient = (row.get(id_column) or "").strip().lower()
            if not patient:
                continue

            def cell(key: str, field: str) -> str:
                column = lower.get(f"{key.lower()} {field.lower()}")
                return (row.get(column) or "").strip() if column else ""

            rows[patient] = {key: SeriesSpacing(pixel_spacing_yx=_two_numbers(cell(key, "PixelSpacing")),
                                                slice_thickness=_one_number(cell(key, "SliceThickness")),
                                                rescale_intercept=_one_number(cell(key, "RescaleIntercept")))
                             for key in series_keys}
        return cls(path, rows)

    def lookup(self, patient: str | None, series: str | None) -> SeriesSpacing | None:
        if not patient or not series:
            return None
        return self._rows.get(patient.lower(), {}).get(series.upper())

    def __len__(self) -> int:
        return len(self._rows)


def _one_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[0]) if len(found) == 1 else None


def _two_numbers(text: str) -> tuple[float, float] | None:
    found = _NUMBER.findall(text)
    if len(found) == 2:
        return float(found[0]), float(found[1])
    if len(found) == 1:
        return float(found[0]), float(found[0])
    return None


def find_metadata_near(path: Path, levels: int = 3) -> Path | None:
    """Patients_metadata.csv in ``path`` (a folder) or one of its first ``levels`` parents."""
    folder = path if path.is_dir() else path.parent
    for candidate in [folder, *list(folder.parents)[:levels]]:
        found = candidate / METADATA_NAME
        if found.is_file():
            return found
    return None


def list_tiff_slices(folder: Path) -> list[Path]:
    """The TIFF files directly in ``folder``, in natural name order (hidden files skipped)."""
    if not folder.is_dir():
        raise CTSynthError("no such folder", folder, "give a folder of TIFF slices")
    files = [p for p in folder.iterdir() if p.is_file() and is_tiff_path(p) and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _read_sidecar(folder: Path) -> dict:
    path = folder / SIDECAR_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        for key, shape in (("spacing_mm", (3,)), ("origin_mm", (3,)), ("direction", (3, 3)), ("offset_hu", ())):
            if key in data:
                value = np.asarray(data[key], dtype=np.float64)
                if value.shape != shape:
                    raise ValueError(f"'{key}' should have shape {shape}")
                if not np.all(np.isfinite(value)):
                    raise ValueError(f"'{key}' holds a value that is not a finite number")
        problem = spacing_problem(data["spacing_mm"], "'spacing_mm'") if "spacing_mm" in data else None
        if problem is None and "direction" in data:
            problem = direction_problem(np.asarray(data["direction"], dtype=np.float64), "'direction'")
        if problem is None and "origin_mm" in data and np.max(np.abs(data["origin_mm"])) > MAX_COORDINATE_MM:
            problem = f"'origin_mm' {data['origin_mm']} is not a position in a scanner"
        if problem:
            raise ValueError(problem)
        return data
    except (OSError, ValueError, TypeError) as exc:
        raise CTSynthError(f"cannot read the TIFF geometry file ({exc})", path,
                           "fix or delete it and give --spacing z,y,x and --offset") from exc


def _read_slice(path: Path, *, allow_stack: bool = False) -> np.ndarray:
    """One 2D slice (or, with ``allow_stack``, a multi-page file's 3D stack) of 16-bit stored values."""
    import tifffile

    try:
        with collect_messages("tifffile") as messages:
            image = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, struct.error, ...)
        raise CTSynthError(f"unreadable TIFF ({type(exc).__name__}: {exc})", path,
                           "re-export or remove this slice") from exc
    if messages:  # tifffile read past a corrupt tag or page table: what it returned cannot be trusted
        raise CTSynthError(f"unreadable TIFF, corrupt (tifffile: {' '.join(messages[0].split())[:200]})", path,
                           "re-export or remove this slice")
    image = np.asarray(image)
    if image.size == 0:  # tifffile logs a warning and returns nothing for a corrupt page table
        raise CTSynthError("unreadable TIFF (no image data: the file is corrupt or truncated)", path,
                           "re-export or remove this slice")
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape([n for n in image.shape if n != 1] or [1, 1])
    stack = image.ndim == 3 and allow_stack and image.shape[-1] > 4  # (pages, y, x), not (y, x, RGB)
    if image.ndim != 2 and not stack:
        raise CTSynthError(f"is not a single grayscale slice (shape {image.shape})", path,
                           "give one 16-bit grayscale TIFF per slice")
    if np.issubdtype(image.dtype, np.floating):
        raise CTSynthError(f"holds {image.dtype} pixels: a display copy (COVID-CTset's Training&Validation "
                           "TIFFs divide each slice by its own maximum), from which HU cannot be recovered", path,
                           "use the 16-bit per-patient series (COVID-CTset.zip: patientN/SR_k/IM*.tif)")
    if image.dtype not in (np.uint16, np.int16):
        raise CTSynthError(f"holds {image.dtype} pixels, not 16-bit stored CT values", path,
                           "give the 16-bit TIFF export (8-bit images are display values, not HU)")
    return image


def read_tiff_files(
    files: Iterable[Path],
    *,
    offset: float | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    metadata: str | Path | CovidCTsetMetadata | None = None,
    source: str | Path | None = None,
) -> CTVolume:
    """Stack the given TIFF slices (in the order given) into a CTVolume in HU; see the module docstring."""
    files = list(files)
    if not files:
        raise CTSynthError("holds no TIFF slices", source or ".", "give a folder of .tif slices")
    source = Path(source) if source is not None else files[0].parent
    with reader_boundary(source, "TIFF series"):
        volume = _read_tiff_files(files, offset, spacing_mm, metadata, source)
    return check_volume(volume, source, "give --spacing z,y,x in mm (e.g. 5,0.7,0.7) and check the slices")


def _read_tiff_files(files: list[Path], offset: float | None, spacing_mm: tuple[float, float, float] | None,
                     metadata: str | Path | CovidCTsetMetadata | None, source: Path) -> CTVolume:
    folder = files[0].parent
    notes: list[str] = []
    sidecar = _read_sidecar(folder)

    first = _read_slice(files[0], allow_stack=len(files) == 1)
    if first.ndim == 3:  # one multi-page TIFF holding the whole series
        hu = first.astype(np.float32)
        first = first[0]
    else:
        hu = np.empty((len(files), *first.shape), dtype=np.float32)
        hu[0] = first
    if first.dtype == np.int16 and first.min() < 0:
        notes.append("signed TIFF with negative values: they may be HU already; if so, give --offset 0")
    for k, path in enumerate(files[1:], start=1):
        image = _read_slice(path)
        if image.shape != first.shape:
            raise CTSynthError(f"slice shape {image.shape} differs from {first.shape} of {files[0].name}", path,
                               "keep only the slices of one series in the folder")
        if image.dtype != first.dtype:
            # int16 and uint16 slices hold different stored values for the same HU (one offset would be
            # wrong for part of the series): never mixed silently.
            raise CTSynthError(f"slice holds {image.dtype} pixels, {files[0].name} holds {first.dtype}: one "
                               "series is stored one way", path, "keep only the slices of one series in the folder")
        hu[k] = image

    patient, series = series_identity(files[0] if FLAT_NAME.match(files[0].name) else folder)
    info = None
    if isinstance(metadata, (str, Path)):
        metadata = CovidCTsetMetadata.load(metadata)
    if metadata is not None:
        info = metadata.lookup(patient, series)

    offset_from: Path = source
    if offset is None:
        if "offset_hu" in sidecar:
            offset, offset_from = float(sidecar["offset_hu"]), folder / SIDECAR_NAME
        elif info is not None and info.rescale_intercept is not None:
            offset, offset_from = info.rescale_intercept, metadata.path  # type: ignore[union-attr]
        else:
            offset = DEFAULT_OFFSET
    elif info is not None and info.rescale_intercept is not None and info.rescale_intercept != offset:
        notes.append(f"offset {offset:g} differs from the metadata's RescaleIntercept {info.rescale_intercept:g}")
    if not np.isfinite(offset) or abs(offset) > 1e5:
        raise CTSynthError(f"the HU offset {offset:g} is not a CT offset", offset_from,
                           "give --offset HU (COVID-CTset: -1024)")
    hu += np.float32(offset)

    spacing_source = "given"
    if spacing_mm is None and "spacing_mm" in sidecar:
        spacing_mm, spacing_source = tuple(float(v) for v in sidecar["spacing_mm"]), SIDECAR_NAME
    if spacing_mm is None and info is not None and info.pixel_spacing_yx and info.slice_thickness:
        spacing_mm = (info.slice_thickness, *info.pixel_spacing_yx)
        spacing_source = metadata.path.name  # type: ignore[union-attr]
    if spacing_mm is None:
        spacing_mm, spacing_source = DEFAULT_SPACING_MM, "default"
        why = "" if metadata is None else f" ({metadata.path.name} has no row for {patient or '?'}/{series or '?'})"
        notes.append(f"spacing unknown{why}: assumed {DEFAULT_SPACING_MM[0]:g} x {DEFAULT_SPACING_MM[1]:g} x "
                     f"{DEFAULT_SPACING_MM[2]:g} mm (z, y, x); give --metadata Patients_metadata.csv "
                     "or --spacing z,y,x")
    problem = "is not three numbers" if len(spacing_mm) != 3 else spacing_problem(spacing_mm, "spacing (z, y, x)")
    if problem:
        where = metadata.path if spacing_source == getattr(metadata, "path", Path()).name else source
        raise CTSynthError(f"{problem} (from {spacing_source})", where, "give --spacing z,y,x in mm, e.g. 5,0.7,0.7")

    if "shape_zyx" in sidecar and list(sidecar["shape_zyx"]) != list(hu.shape):
        notes.append(f"{SIDECAR_NAME} was written for shape {sidecar['shape_zyx']}, the folder holds "
                     f"{list(hu.shape)} (slices added or removed?)")
    origin = tuple(float(v) for v in sidecar.get("origin_mm", (0.0, 0.0, 0.0)))
    direction = np.asarray(sidecar.get("direction", np.eye(3)), dtype=np.float64)
    if hu.min() >= -32768 and hu.max() <= 32767 and float(offset).is_integer():
        hu = hu.astype(np.int16)
    meta = {
        "format": "tiff",
        "tiff_offset_hu": float(offset),
        "spacing_source": spacing_source,
        "n_files": len(files),
        "notes": notes,
    }
    if series:
        meta["series"] = series
    return CTVolume(hu=hu, spacing_mm=tuple(spacing_mm), origin_mm=origin, direction=direction,
                    source=str(source), meta=meta)


def read_tiff_slices(
    folder: str | Path,
    *,
    offset: float | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    metadata: str | Path | CovidCTsetMetadata | None = None,
) -> CTVolume:
    """Read a folder of TIFF slices (natural name order) into HU; Patients_metadata.csv is looked for in the
    folder and up to three parents when ``metadata`` is not given."""
    folder = Path(folder)
    files = list_tiff_slices(folder)
    if not files:
        raise CTSynthError("holds no .tif/.tiff slices", folder, "give a folder of TIFF slices")
    if metadata is None and spacing_mm is None:
        metadata = find_metadata_near(folder)
    return read_tiff_files(files, offset=offset, spacing_mm=spacing_mm, metadata=metadata, source=folder)


def write_tiff_slices(volume: CTVolume, folder: str | Path, *, offset: float = DEFAULT_OFFSET,
                      overwrite: bool = False) -> Path:
    """Write ``volume`` as ``IM00001.tif``... (uint16, stored = HU - offset clipped to 0..65535) plus
    ``ctsynth_tiff.json`` (offset, spacing, origin, direction), atomically."""
    import tifffile

    folder = Path(folder)
    check_finite_hu(volume.hu, folder)

    def stored_slice(k: int) -> tuple[np.ndarray, int]:
        values = np.rint(np.asarray(volume.hu[k], dtype=np.float64) - offset)
        clipped = int(np.count_nonzero((values < 0) | (values > 65535)))
        return np.clip(values, 0, 65535).astype(np.uint16), clipped

    width = max(5, len(str(volume.shape[0])))
    clipped = 0
    sidecar: dict = {
        "format": "ctsynth-tiff-series",
        "version": 1,
        "about": "HU = stored value + offset_hu; slices IM00001.tif... in z order; geometry as CTVolume (LPS)",
        "offset_hu": float(offset),
        "spacing_mm": list(volume.spacing_mm),
        "origin_mm": list(volume.origin_mm),
        "direction": np.asarray(volume.direction).tolist(),
        "shape_zyx": list(volume.shape),
    }
    needed = volume.shape[0] * (volume.shape[1] * volume.shape[2] * 2 + 512) + 4096
    with atomic_dir(folder, overwrite=overwrite, needed_bytes=needed) as tmp:
        for k in range(volume.shape[0]):
            stored, n_clipped = stored_slice(k)
            clipped += n_clipped
            tifffile.imwrite(tmp / f"IM{k + 1:0{width}d}.tif", stored, photometric="minisblack")
        sidecar["clipped_voxels"] = clipped
        (tmp / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return folder

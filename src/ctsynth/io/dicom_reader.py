"""Read one DICOM CT series into a `CTVolume` in Hounsfield units.

`read_dicom_series` accepts a folder (searched recursively, any file names), a single file, or a
`DicomSeriesRef` from `find_dicom_series`. It orders slices along the slice normal, applies each slice's
own RescaleSlope/Intercept, decodes compressed transfer syntaxes through pydicom's pylibjpeg plugins (in a
thread pool), drops exact duplicate slices, and refuses (with a `CTSynthError` naming the folder, the
files and the fix) anything it cannot put on a regular grid honestly: missing slices, duplicates with
different pixels, wildly uneven steps, several series without a choice, non-CT modalities, broken files.
Gantry tilt and mildly uneven steps are resampled, with a note. See docs/dicom.md for the rules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import UID
from scipy import ndimage

from ..errors import CTSynthError, reader_boundary
from ..volume import CTVolume
from .dicom_geometry import StackPlan, plan_stack
from .dicom_headers import BrokenDicomError, NotDicomError, SliceHeader, read_slice_headers
from .dicom_pixels import decode_frames, decode_processes, decode_stored_values, run_parallel, shared_empty
from .plausible import check_volume, hu_range_problem, spacing_problem
from .dicom_series import DicomSeriesRef, find_dicom_series, name_files, scan_dicom_tree

__all__ = ["DicomSeriesRef", "find_dicom_series", "read_dicom_series"]

_SERIES_FIX = "pass series_uid= (CLI: --series UID) with one of the UIDs above, or point to a folder holding one series"


def _describe(ref: DicomSeriesRef) -> str:
    desc = f" '{ref.description}'" if ref.description else ""
    return f"{ref.uid}{desc} ({ref.n_slices} slices, {ref.modality})"


def _headers_of(ref: DicomSeriesRef) -> list[SliceHeader]:
    if ref.headers:
        return list(ref.headers)
    headers = []
    for path in ref.files:
        try:
            file_headers = read_slice_headers(path)
        except NotDicomError as exc:
            raise CTSynthError("not a DICOM file", path, "remove it from the series") from exc
        except BrokenDicomError as exc:
            raise CTSynthError(f"unreadable DICOM file, truncated or corrupt ({exc})", path,
                               "re-export or re-copy this file") from exc
        headers.extend(file_headers or [])
    if not headers:
        raise CTSynthError("the series holds no DICOM image files", ref.folder, "check the series' files")
    return headers


_RECOPY_FIX = ("copy this file again from the archive or PACS (or re-export the series), or remove it if it does "
               "not belong to the series")
_BROKEN_FIX = f"{_RECOPY_FIX}; to read the series without it, pass --skip-unreadable (skip_unreadable=True)"


def _broken_files(ref: DicomSeriesRef, skip_unreadable: bool) -> list[str]:
    """The files of the series that cannot be read (cut short, corrupt, no permission), named with the fix
    rather than dropped or shown later as an anonymous gap between their neighbours; with
    ``skip_unreadable``, the notes naming them (the series is read without them, and a gap is still refused)."""
    broken = ref.unreadable
    if not broken:
        return []
    if skip_unreadable:
        return [f"skipped unreadable file {name_files([path], ref.folder)} (as asked): {why}" for path, why in broken]
    path, why = broken[0]
    more = f" (and {len(broken) - 1} more: {name_files([p for p, _ in broken[1:]], ref.folder)})" \
        if len(broken) > 1 else ""
    whose = "of" if (path, why) in ref.broken else "beside"
    raise CTSynthError(f"this file {whose} series '{ref.description or ref.uid}' ({ref.n_slices} readable slices) "
                       f"cannot be read: {why}{more}", path, _BROKEN_FIX)


def _select_series(source: Path, series_uid: str | None,
                   skip_unreadable: bool = False) -> tuple[DicomSeriesRef, list[str]]:
    """Find the one CT series to read under ``source`` (a folder or a file), or raise a one-line error."""
    scan = scan_dicom_tree(source, allow_single_slice=source.is_file())
    if scan.broken and not skip_unreadable:
        path, why = scan.broken[0]
        more = f" (and {len(scan.broken) - 1} more: {name_files([p for p, _ in scan.broken[1:]], source)})" \
            if len(scan.broken) > 1 else ""
        raise CTSynthError(f"unreadable DICOM file, truncated or corrupt header ({why}){more}", path, _BROKEN_FIX)
    if series_uid is not None:
        for ref in scan.series:
            if ref.uid == series_uid:
                return ref, scan.notes
        for ref in scan.other_series:
            if ref.uid == series_uid:
                raise CTSynthError(f"series {series_uid} is modality {ref.modality}, not CT; ctsynth reads CT only",
                                   ref.folder, "choose a CT series")
        found = ", ".join(_describe(r) for r in scan.series) or "none"
        raise CTSynthError(f"no CT series with UID {series_uid} here; CT series found: {found}", source,
                           "use one of the UIDs listed")
    if len(scan.series) == 1:
        return scan.series[0], scan.notes
    if len(scan.series) > 1:
        listing = "; ".join(_describe(r) for r in scan.series)
        raise CTSynthError(f"{len(scan.series)} CT series found, which one? {listing}", source, _SERIES_FIX)
    if scan.other_series:
        listing = "; ".join(_describe(r) for r in scan.other_series)
        raise CTSynthError(f"no CT series here, only other modalities: {listing}; ctsynth reads CT only", source,
                           "point to a CT series (Modality CT)")
    if scan.n_dicom == 0:
        extra = f" ({scan.notes[0]})" if scan.notes else ""
        raise CTSynthError(f"no DICOM files found{extra}", source,
                           "point to the folder (or file) holding the CT series' DICOM files")
    why = "; ".join(scan.notes[:3]) or "no image slices"
    raise CTSynthError(f"no readable CT series ({why})", source,
                       "point to a folder holding a CT series of at least two slices (or to one file to read it alone)")


def _output_dtype(headers: list[SliceHeader]) -> np.dtype:
    """int16 when every slice maps exactly to integer HU that fit int16, else float32 (int32 while unsure)."""
    if any(h.slope != 1.0 or not float(h.intercept).is_integer() for h in headers):
        return np.dtype(np.float32)
    lo = min((-(1 << (h.bits_stored - 1)) if h.pixel_representation else 0) + h.intercept for h in headers)
    hi = max(((1 << (h.bits_stored - 1)) - 1 if h.pixel_representation else (1 << h.bits_stored) - 1)
             + h.intercept for h in headers)
    if lo >= -32768 and hi <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _decode_hu(headers: list[SliceHeader], dtype: np.dtype | None = None) -> np.ndarray:
    dtype = _output_dtype(headers) if dtype is None else dtype
    rows, cols = headers[0].rows, headers[0].columns
    # Integer HU that may or may not fit int16 (e.g. signed 16-bit stored values with intercept -1024, as GE
    # writes): each slice is checked as it is decoded and stored as int16, so the whole volume never exists
    # as int32; if one slice does not fit, the volume is decoded again as float32 (rare).
    checked = dtype == np.int32
    # One unit of work per file: a multi-frame file is decoded once and its frames stored where they belong.
    by_file: dict[Path, list[int]] = {}
    for i, h in enumerate(headers):
        by_file.setdefault(h.path, []).append(i)
    units = list(by_file.values())
    processes = decode_processes(len(units), headers[0].transfer_syntax)
    shape, out_dtype = (len(headers), rows, cols), np.dtype(np.int16 if checked else dtype)
    out = shared_empty(shape, out_dtype) if processes > 1 else np.empty(shape, dtype=out_dtype)

    def store(i: int, raw: np.ndarray | None) -> bool:
        """Stored values -> HU into out[i]; ``raw`` None means: decode slice i here (straight into out[i]).
        True if slice i's HU do not fit int16 (only while ``checked``)."""
        h, target = headers[i], out[i]
        if dtype == np.float32:
            raw = decode_stored_values(h) if raw is None else raw
            np.multiply(raw, np.float32(h.slope), out=target, casting="unsafe")
            target += np.float32(h.intercept)
            # Only float32 HU can leave the range (int16 always fits; int32 is stored as int16 or redone here).
            problem = hu_range_problem(target)
            if problem:
                raise CTSynthError(f"{problem} after RescaleSlope {h.slope:g} and RescaleIntercept {h.intercept:g}",
                                   h.path, "check this file's rescale tags and pixel data, or re-export it")
        elif dtype == np.int16 and -32768 <= h.intercept <= 32767:
            # Integer HU that fit int16: read straight into the output and add the intercept in place. int16
            # arithmetic wraps, so even unsigned stored values land right whenever the final HU fit.
            raw = decode_stored_values(h, out=target) if raw is None else raw
            if not np.shares_memory(raw, target):
                np.copyto(target, raw, casting="unsafe")
            if h.intercept:
                np.add(target, np.int16(h.intercept), out=target)
        else:
            raw = decode_stored_values(h) if raw is None else raw
            intercept = int(h.intercept)
            if checked and raw.dtype.itemsize <= 2:
                # The range check on the stored values (cheap), then int16 arithmetic, which wraps: right
                # whenever the final HU fit, as they have just been checked to.
                if int(raw.min()) + intercept < -32768 or int(raw.max()) + intercept > 32767:
                    return True
                np.add(raw.view(np.int16) if raw.dtype.itemsize == 2 else raw, np.int16(intercept), out=target,
                       casting="unsafe")
                return False
            hu = np.add(raw, np.int32(intercept), dtype=np.int32)
            if checked and (hu.min() < -32768 or hu.max() > 32767):
                return True
            np.copyto(target, hu, casting="unsafe")
        return False

    def work(u: int) -> bool:
        """Decode file ``u``; True if a slice of it overflowed int16. Returns, never appends: in a worker
        process only the shared output and the return value reach the parent."""
        indices = units[u]
        if headers[indices[0]].frame is None:
            return any([store(i, None) for i in indices])
        frames = decode_frames(headers[indices[0]])
        if max(headers[i].frame for i in indices) >= frames.shape[0]:
            raise CTSynthError(f"the pixel data holds {frames.shape[0]} frames, fewer than the header lists",
                               headers[indices[0]].path, "re-export or re-copy this file")
        return any([store(i, frames[headers[i].frame]) for i in indices])

    if any(run_parallel(len(units), work, processes=processes)):
        del out
        return _decode_hu(headers, np.dtype(np.float32))
    return out


def _resolve_duplicates(hu: np.ndarray, plan: StackPlan, folder: Path, notes: list[str]) -> np.ndarray:
    dropped: list[Path] = []
    for slot in plan.slots:
        if len(slot) == 1:
            continue
        first = slot[0]
        for other in slot[1:]:
            if not np.array_equal(hu[first], hu[other]):
                names = name_files([plan.headers[i].path for i in slot], folder)
                pos = float(plan.headers[first].position @ plan.direction[:, 2])
                raise CTSynthError(
                    f"{len(slot)} files share the slice position {pos:.2f} mm but hold different pixels ({names}): "
                    "two acquisitions or reconstructions mixed in one series", folder,
                    "move one acquisition's files into a separate folder (they often differ in AcquisitionNumber "
                    "or transfer syntax), then read each folder on its own")
            dropped.append(plan.headers[other].path)
    if not dropped:
        return hu
    notes.append(f"dropped {len(dropped)} duplicate file(s) with the same position and identical pixels: "
                 f"{name_files(dropped, folder)}")
    return hu[[slot[0] for slot in plan.slots]]


def _fill_value(hu: np.ndarray, headers: list[SliceHeader]) -> float:
    h = headers[0]
    if h.padding_value is not None:
        return float(h.padding_value * h.slope + h.intercept)
    return float(hu.min())


def _undo_tilt(hu: np.ndarray, plan: StackPlan) -> np.ndarray:
    fill = _fill_value(hu, plan.headers)
    out = np.empty(hu.shape, dtype=np.float32)
    for k in range(hu.shape[0]):
        ndimage.shift(hu[k].astype(np.float32), plan.shifts_px[k], output=out[k], order=1, mode="constant",
                      cval=fill)
    return out


def _resample_z(hu: np.ndarray, positions: np.ndarray, step: float) -> np.ndarray:
    n_out = int(np.floor((positions[-1] - positions[0]) / step + 1e-6)) + 1
    targets = positions[0] + step * np.arange(n_out)
    lower = np.clip(np.searchsorted(positions, targets, side="right") - 1, 0, len(positions) - 2)
    weight = ((targets - positions[lower]) / (positions[lower + 1] - positions[lower])).astype(np.float32)
    out = np.empty((n_out,) + hu.shape[1:], dtype=np.float32)
    for j in range(n_out):
        a, w = lower[j], weight[j]
        out[j] = (1 - w) * hu[a] + w * hu[a + 1]
    return out


def _meta(headers: list[SliceHeader], plan: StackPlan, n_files: int, notes: list[str]) -> dict:
    """Only non-identifying acquisition facts (no names, dates, UIDs, institutions or free text)."""
    h = headers[0]
    meta: dict = {"modality": "CT", "n_files": n_files}
    try:
        meta["transfer_syntax"] = UID(h.transfer_syntax).name
    except Exception:  # an unknown private UID: keep the raw value out, it says nothing useful
        meta["transfer_syntax"] = "unknown"
    for key, value in (("manufacturer", h.manufacturer), ("manufacturer_model", h.model),
                       ("convolution_kernel", h.kernel), ("body_part", h.body_part)):
        if value:
            meta[key] = value
    if h.slice_thickness:
        meta["slice_thickness_mm"] = h.slice_thickness
    if h.kvp:
        meta["kvp"] = h.kvp
    if h.padding_value is not None:
        meta["pixel_padding_value_hu"] = float(h.padding_value * h.slope + h.intercept)
    if plan.shifts_px is not None:
        meta["gantry_tilt_deg"] = round(plan.tilt_deg, 2)
    if not any(x.has_rescale for x in headers):
        notes.append("no RescaleSlope/RescaleIntercept tags: stored values taken as HU")
    meta["notes"] = notes
    return meta


def _with_skipped(error: CTSynthError, notes: list[str]) -> CTSynthError:
    """A geometry refusal (a gap, uneven steps) that also names the files skipped on the way: a slice that
    seems missing is often a file of the series that was skipped or set aside (another SeriesInstanceUID, no
    position; see `ctsynth.io.dicom_select.stray_notes`)."""
    skipped = [n for n in notes if n.startswith(("skipped", "unreadable", "set aside"))]
    if not skipped:
        return error
    return CTSynthError(f"{error.problem}; note: {'; '.join(skipped[:3])}", error.path, error.fix)


def read_dicom_series(source: Path | str | DicomSeriesRef, series_uid: str | None = None, *,
                      skip_unreadable: bool = False) -> CTVolume:
    """Read one CT series (a folder, a file, or a `DicomSeriesRef`) into a `CTVolume` in HU.

    ``series_uid`` picks one series when a folder holds several. Raises `CTSynthError` for anything that
    cannot be read honestly (and nothing else: see `reader_boundary`); everything it fixed or skipped on the
    way is listed in ``meta["notes"]``. A file of the series that cannot be read is refused by name unless
    ``skip_unreadable`` (then it is left out, with a note naming it).
    """
    where = source.folder if isinstance(source, DicomSeriesRef) else source
    with reader_boundary(where, "DICOM series"):
        volume = _read_dicom_series(source, series_uid, skip_unreadable)
    return check_volume(volume, where, "re-export the series; its slice positions or spacing are not a CT grid")


def _read_dicom_series(source: Path | str | DicomSeriesRef, series_uid: str | None,
                       skip_unreadable: bool) -> CTVolume:
    if isinstance(source, DicomSeriesRef):
        ref, scan_notes = source, []
    else:
        ref, scan_notes = _select_series(Path(source), series_uid, skip_unreadable)
    skipped = _broken_files(ref, skip_unreadable)
    headers = _headers_of(ref)
    notes = list(dict.fromkeys(skipped + scan_notes + ref.notes
                               + [f"{name_files([h.path], ref.folder)}: {n}" for h in headers for n in h.notes]))
    try:
        plan = plan_stack(headers, ref.folder)
    except CTSynthError as exc:
        raise _with_skipped(exc, notes) from exc
    if skipped and plan.resample_z:  # with so few slices that the median step hides it, still a slice missing
        raise CTSynthError(f"uneven slice steps once the unreadable file(s) are left out: a slice is missing; note: "
                           f"{'; '.join(skipped[:3])}", ref.unreadable[0][0], _RECOPY_FIX)
    notes.extend(plan.notes)
    problem = spacing_problem([plan.z_step], "the step between slice positions")
    if problem:  # every step is this large (or small): name the files whose positions say so
        raise CTSynthError(f"{problem} ({name_files([h.path for h in plan.headers], ref.folder)})", ref.folder,
                           "check ImagePositionPatient in these files, or re-export the series")
    hu = _decode_hu(plan.headers)
    hu = _resolve_duplicates(hu, plan, ref.folder, notes)
    if plan.shifts_px is not None:
        hu = _undo_tilt(hu, plan)
    if plan.resample_z:
        hu = _resample_z(hu, plan.positions, plan.z_step)
    sy, sx = plan.spacing_yx
    source_path = ref.files[0] if (not isinstance(source, DicomSeriesRef) and Path(source).is_file()) else ref.folder
    return CTVolume(hu=hu, spacing_mm=(plan.z_step, sy, sx), origin_mm=tuple(plan.origin),
                    direction=plan.direction, source=str(source_path),
                    meta=_meta(plan.headers, plan, len({h.path for h in plan.headers}), notes))

"""Find the CT series in a tree of DICOM files, whatever the files are called.

`find_dicom_series` reads headers only, groups files by SeriesInstanceUID and returns one
`DicomSeriesRef` per CT series worth reading, plus notes naming every file it skipped and why: non-DICOM
files, DICOMDIR indexes, unreadable (truncated) headers, objects without pixels, localizers, slices whose
orientation differs from the rest of their series, colour or multi-frame images, single-slice series and
non-CT modalities.

A file that cannot be read is *broken* rather than *not DICOM* when it looks like a DICOM file (see
`looks_like_dicom`); each broken file is given to the series it belongs to (`attribute_broken_files`), and
reading that series refuses it by name unless asked to skip unreadable files (docs/dicom.md).
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CTSynthError
from .dicom_headers import BrokenDicomError, NotDicomError, SliceHeader, looks_like_ct, read_slice_headers
from .dicom_pixels import idle_cores

_ORIENTATION_TOL = 5e-3  # direction cosines closer than this (about 0.3 degrees) count as the same plane
_MAX_NAMES = 5
# Names of DICOM image files; a file so named that cannot be parsed is a broken image, not junk to ignore.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
# Extension-less files of a dataset that are not images (discovery ignores them too, with DICOMDIR).
NOT_IMAGE_NAMES = {"dicomdir", "readme", "license", "licence", "copying", "version"}


@dataclass
class DicomSeriesRef:
    """One CT series found on disk: what `read_dicom_series` needs to read it without a second search."""

    uid: str
    folder: Path
    files: list[Path]
    modality: str
    description: str
    n_slices: int
    notes: list[str] = field(default_factory=list)
    headers: list[SliceHeader] = field(default_factory=list, repr=False)
    series_number: int | None = None
    # Files of this series that could not be read (cut short, corrupt): attributed by the series UID found in
    # their bytes, or (``maybe_broken``) unreadable files in the series' folder that hold no UID to tell.
    broken: list[tuple[Path, str]] = field(default_factory=list)
    maybe_broken: list[tuple[Path, str]] = field(default_factory=list)
    set_aside: str = ""  # why the scan could not use the series at all (localizer, not CT, one slice ...)

    @property
    def unreadable(self) -> list[tuple[Path, str]]:
        """Every file that may be a slice of this series and cannot be read, its own first: a file cut short
        before its UIDs is as likely a slice of this series as anything else in its folder."""
        return self.broken + [item for item in self.maybe_broken if item not in self.broken]


@dataclass
class _Scan:
    """Everything a walk found: readable CT series, other series (non-CT), broken files and notes."""

    root: Path
    series: list[DicomSeriesRef]
    other_series: list[DicomSeriesRef]
    broken: list[tuple[Path, str]]
    notes: list[str]
    n_dicom: int
    set_aside: list[DicomSeriesRef] = field(default_factory=list)  # series dropped whole, with the reason


def name_files(paths: list[Path], root: Path | None = None, limit: int = _MAX_NAMES) -> str:
    """'a.dcm, b.dcm and 3 more', relative to root where possible."""
    names = []
    for p in paths[:limit]:
        try:
            names.append(str(p.relative_to(root)) if root is not None and p != root else str(p))
        except ValueError:
            names.append(str(p))
    text = ", ".join(names)
    if len(paths) > limit:
        text += f" and {len(paths) - limit} more"
    return text


def _relative(folder: Path, root: Path) -> str:
    """``folder`` below ``root`` for notes ('.' for the root itself); notes avoid absolute paths."""
    try:
        rel = folder.relative_to(root if root.is_dir() else root.parent)
    except ValueError:
        return str(folder)
    return str(rel) if str(rel) != "." else "the folder read"


def _walk_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden folders hold no exports (and our own atomic writers' temporaries start with a dot).
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # Regular files only: a FIFO would block the read, a dangling link has nothing to read.
        files.extend(p for p in (Path(dirpath) / name for name in sorted(filenames)) if p.is_file())
    return files


@functools.lru_cache(maxsize=4096)
def _absolute(folder: Path) -> str:
    """The resolved folder, so a stand-in series key is the same whether the tree was given as a relative
    or an absolute path, from its root or from the series' own folder."""
    return str(folder.resolve())


def _group_key(header: SliceHeader) -> tuple[str, bool]:
    """SeriesInstanceUID, or a stand-in built from folder, frame of reference, series number and size."""
    if header.series_uid:
        return header.series_uid, False
    parts = [_absolute(header.path.parent), header.frame_of_reference, header.series_number,
             f"{header.rows}x{header.columns}"]
    return "nouid-" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:12], True


def _majority_orientation(headers: list[SliceHeader]) -> np.ndarray:
    """The orientation most slices share (within ``_ORIENTATION_TOL``); vectorised over the slices."""
    left = np.stack([h.orientation for h in headers])
    best, best_count = left[0], 0
    while len(left):
        same = np.all(np.abs(left - left[0]) <= _ORIENTATION_TOL, axis=1)
        if same.sum() > best_count:
            best, best_count = left[0], int(same.sum())
        left = left[~same]
    return best


def _series_number(headers: list[SliceHeader]) -> int | None:
    try:
        return int(float(headers[0].series_number))
    except (TypeError, ValueError):
        return None


def _common_folder(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def filter_series_slices(headers: list[SliceHeader], root: Path, notes: list[str],
                         reasons: list[str] | None = None) -> list[SliceHeader]:
    """Drop files that cannot be slices of this stack (localizers, other planes, colour, multi-frame).

    ``reasons`` (optional) receives each reason once, most files first."""
    kept = []
    dropped: dict[str, list[Path]] = {}

    def drop(reason: str, h: SliceHeader) -> None:
        dropped.setdefault(reason, []).append(h.path)

    for h in headers:
        if not h.has_pixels or h.rows == 0 or h.columns == 0:
            drop("no image pixels (a report, structure set or presentation state)", h)
        elif h.is_localizer:
            drop("localizer (scout) image", h)
        elif h.samples_per_pixel != 1 or not h.photometric.startswith("MONOCHROME"):
            drop(f"colour image ({h.photometric}), e.g. a screenshot or dose report", h)
        elif h.frames > 1:
            drop(f"multi-frame image without per-frame geometry ({h.frames} frames; convert it with dcm2niix "
                 "first)", h)
        elif h.position is None or h.orientation is None or h.pixel_spacing is None:
            drop("no ImagePositionPatient/ImageOrientationPatient/PixelSpacing (not a cross-sectional "
                 "slice: a secondary capture or dose report)", h)
        else:
            kept.append(h)
    if kept:
        iop = _majority_orientation(kept)
        matches = np.all(np.abs(np.stack([h.orientation for h in kept]) - iop) <= _ORIENTATION_TOL, axis=1)
        for h, match in zip(kept, matches):
            if not match:
                drop("orientation differs from the rest of the series (a localizer or reformat)", h)
        kept = [h for h, match in zip(kept, matches) if match]
    if reasons is not None:
        reasons.extend(sorted(dropped, key=lambda r: -len(dropped[r])))
    for reason, paths in dropped.items():
        paths = list(dict.fromkeys(paths))  # the frames of one multi-frame file share a path
        notes.append(f"skipped {len(paths)} file(s), {reason}: {name_files(paths, root)}")
    return kept


# Below this, starting worker processes costs more than it saves: a header takes about 0.1 ms to parse
# (ctsynth.io.dicom_tags), starting a pool of forked workers tens of ms (a 300-file series: 0.09 s in the
# process, 0.11 s with two workers, on the idle 2-core machine). Big trees (inspect over 100,000 files) gain.
PARALLEL_MIN_FILES = 2000


def _parse_one(path: Path) -> tuple[str, object]:
    """('ok', headers or None for a DICOMDIR) | ('not', None) | ('broken', why): picklable for workers."""
    try:
        return "ok", read_slice_headers(path)
    except NotDicomError:
        return "not", None
    except BrokenDicomError as exc:
        return "broken", str(exc)


def _parse_chunk(paths: list[Path]) -> list[tuple[str, object]]:
    return [_parse_one(p) for p in paths]


def header_workers(n_files: int) -> int:
    """Processes for the header pass: parsing is pure Python (GIL-bound), so threads would not help; cores
    other programs keep busy do not pay for the processes' start and the results' transfer."""
    if n_files < PARALLEL_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(idle_cores(), 8, n_files // (PARALLEL_MIN_FILES // 2)))


def _read_headers(paths: list[Path]) -> tuple[list[Path], list[tuple[str, object]]]:
    """Parse every file's header, in worker processes for big trees (order kept). Memory stays flat: each
    worker returns only the small SliceHeader records, never a dataset or pixels."""
    from tqdm import tqdm

    workers = header_workers(len(paths))
    shared = _SharedValues()

    def compacted(path: Path, result: tuple[str, object]) -> tuple[str, object]:
        # As each result arrives, not after the pass: the per-file copies never pile up.
        if result[0] == "ok" and result[1]:
            for header in result[1]:
                shared.compact(header, path)
        return result

    # A progress bar on a terminal for big trees (100,000 files take minutes); nothing in logs or tests.
    bar = tqdm(total=len(paths), desc="DICOM headers", unit="file", leave=False, file=sys.stderr,
               disable=None if len(paths) >= 1000 else True)
    try:
        if workers == 1:
            results = []
            for p in paths:
                results.append(compacted(p, _parse_one(p)))
                bar.update()
            return paths, results
        chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
        parts = []
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
                for chunk, part in zip(chunks, pool.map(_parse_chunk, chunks)):
                    parts.append([compacted(p, r) for p, r in zip(chunk, part)])
                    bar.update(len(part))
        except (OSError, RuntimeError, BrokenProcessPool):  # no processes to be had: do it here
            return paths, [compacted(p, _parse_one(p)) for p in paths]
        return paths, [r for part in parts for r in part]
    finally:
        bar.close()


# Per-file fields: everything else in a SliceHeader is (nearly always) the same for every file of a series.
_PER_FILE = {"path", "position", "instance_number", "pixel_offset", "encapsulated_offset", "frame", "rows",
             "columns", "frames", "samples_per_pixel", "bits_allocated", "bits_stored", "pixel_representation",
             "has_rescale", "has_pixels", "explicit_vr"}


class _SharedValues:
    """One object per distinct header value across a scan, so 100,000 headers hold about 100,000 positions
    and paths plus one copy of each series' UIDs, descriptions, kernel, orientation and spacing, rather than
    a copy of each per file (every parse, and every header a worker process sends back, makes new objects;
    about half the memory of a big tree's headers was those copies). The values are immutable (strings,
    tuples, floats, and orientation arrays nothing writes to), so sharing them changes no result."""

    def __init__(self) -> None:
        self._pool: dict[tuple, object] = {}
        self._fields = [f for f in SliceHeader.__slots__ if f not in _PER_FILE]

    def compact(self, header: SliceHeader, path: Path) -> None:
        if header.path == path:
            header.path = path  # the walk's own object (a worker's header carries an unpickled copy)
        pool = self._pool
        for name in self._fields:
            value = getattr(header, name)
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
                key = (name, value.dtype.str, value.tobytes())
            else:
                key = (name, type(value), value)
            setattr(header, name, pool.setdefault(key, value))


def scan_dicom_tree(root: Path, *, allow_single_slice: bool = False) -> _Scan:
    """Walk ``root`` once; the shared engine behind `find_dicom_series` and `read_dicom_series`."""
    root = Path(root)
    if not root.exists():
        raise CTSynthError("the input does not exist", root, "check the path")
    notes: list[str] = []
    not_dicom: list[Path] = []
    dicomdirs: list[Path] = []
    broken: list[tuple[Path, str]] = []
    groups: dict[str, list[SliceHeader]] = {}
    synthetic_keys: set[str] = set()
    n_dicom = 0
    for path, (status, file_headers) in zip(*_read_headers(_walk_files(root))):
        if status == "not":
            not_dicom.append(path)
            continue
        if status == "broken":
            broken.append((path, file_headers))
            continue
        if file_headers is None:
            dicomdirs.append(path)
            continue
        n_dicom += 1
        for header in file_headers:
            key, synthetic = _group_key(header)
            if synthetic:
                synthetic_keys.add(key)
            groups.setdefault(key, []).append(header)
    not_dicom = _promote_dicom_looking(not_dicom, broken, {h.path.parent for hs in groups.values() for h in hs})
    if not_dicom:
        notes.append(f"skipped {len(not_dicom)} non-DICOM file(s): {name_files(not_dicom, root)}")
    if dicomdirs:
        notes.append(f"skipped DICOMDIR index file(s) (the images are read directly): "
                     f"{name_files(dicomdirs, root)}")

    series: list[DicomSeriesRef] = []
    other: list[DicomSeriesRef] = []
    set_aside: list[DicomSeriesRef] = []
    for key, headers in groups.items():
        series_notes: list[str] = []
        folder = _common_folder([h.path for h in headers])
        if key in synthetic_keys:
            series_notes.append(f"{len(headers)} file(s) in {_relative(folder, root)} have no SeriesInstanceUID; "
                                "grouped them by "
                                f"folder, frame of reference, series number and image size as series {key}")
        modalities = Counter(h.modality or "" for h in headers)
        modality = modalities.most_common(1)[0][0]
        is_ct = all(looks_like_ct(h) for h in headers)
        if not modality and is_ct:
            modality = "CT"
            series_notes.append(f"series {key} has no Modality tag; read as CT because its SOP class or "
                                "rescale tags are CT's")
        description = headers[0].description
        if not is_ct:
            ref = DicomSeriesRef(uid=key, folder=folder, files=list(dict.fromkeys(h.path for h in headers)),
                                 modality=modality or "unknown", description=description,
                                 n_slices=len(headers), notes=series_notes, headers=headers)
            other.append(ref)
            set_aside.append(_set_aside_ref(key, folder, headers, modality or "unknown", description,
                                            f"modality {modality or 'unknown'}, not CT"))
            notes.append(f"skipped series {key}, modality {modality or 'unknown'}, not CT: "
                         f"{name_files(ref.files, root)}")
            continue
        reasons: list[str] = []
        kept = filter_series_slices(headers, root, series_notes, reasons)
        if not kept:
            notes.extend(series_notes)
            reason = reasons[0] if reasons else "no image slices"
            set_aside.append(_set_aside_ref(key, folder, headers, modality, description, reason))
            continue
        if len(kept) < 2 and not allow_single_slice:
            notes.extend(series_notes)
            notes.append(f"skipped single-slice series {key}: {name_files([h.path for h in kept], root)}")
            set_aside.append(_set_aside_ref(key, folder, headers, modality, description, "a single image"))
            continue
        kept.sort(key=lambda h: (str(h.path), h.frame or 0))
        series.append(DicomSeriesRef(uid=key, folder=folder, files=list(dict.fromkeys(h.path for h in kept)),
                                     modality=modality,
                                     description=description, n_slices=len(kept), notes=series_notes,
                                     headers=kept, series_number=_series_number(kept)))
        notes.extend(series_notes)
    series.sort(key=lambda r: (str(r.folder), r.uid))
    attribute_broken_files(series, broken)
    claimed = {path for ref in series for path, _ in ref.broken + ref.maybe_broken}
    for path, why in broken:  # a series' own broken files are named when that series is read
        if path not in claimed:
            notes.append(f"unreadable DICOM file (truncated or corrupt header: {why}): {name_files([path], root)}")
    return _Scan(root=root, series=series, other_series=other, broken=broken, notes=notes, n_dicom=n_dicom,
                 set_aside=set_aside)


def looks_like_dicom(path: Path, dicom_folders: set[Path]) -> bool:
    """Whether a file that does not parse as DICOM is still meant to be one (so a broken image, never junk).

    The 'DICM' marker makes a file DICOM before this is asked (`read_slice_headers` calls it broken). Else:
    a DICOM name (.dcm, .dicom, .dic, .ima), or no extension, or a numeric one (UID-named files such as
    1.2.840.113619.2.55.17), in a folder that holds readable DICOM files, unless it is a known dataset file
    (README, LICENSE, DICOMDIR); never a hidden file. A file cut to a few bytes, or whose marker was damaged,
    has lost the marker."""
    if path.name.startswith("."):  # hidden: macOS' ._IM0001.dcm resource forks, editors' temporaries
        return False
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    bare = suffix == "" or suffix[1:].isdigit()
    return bare and path.parent in dicom_folders and path.name.lower() not in NOT_IMAGE_NAMES


def _promote_dicom_looking(not_dicom: list[Path], broken: list[tuple[Path, str]],
                           dicom_folders: set[Path]) -> list[Path]:
    """Move the files of ``not_dicom`` that look like DICOM (`looks_like_dicom`) to ``broken``; the rest."""
    rest = []
    for path in not_dicom:
        if looks_like_dicom(path, dicom_folders):
            broken.append((path, _why_not_dicom(path)))
        else:
            rest.append(path)
    return rest


def _why_not_dicom(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "the file is empty"
    return f"no DICOM header in its {size} bytes (cut short, or its start is corrupt)"


def _set_aside_ref(key: str, folder: Path, headers: list[SliceHeader], modality: str, description: str,
                   reason: str) -> DicomSeriesRef:
    return DicomSeriesRef(uid=key, folder=folder, files=list(dict.fromkeys(h.path for h in headers)),
                          modality=modality, description=description, n_slices=len(headers),
                          headers=headers, series_number=_series_number(headers), set_aside=reason)


_ATTRIBUTION_BYTES = 1 << 20  # a header (where the UIDs are) is far shorter; pixel data is not searched


def attribute_broken_files(series: list[DicomSeriesRef], broken: list[tuple[Path, str]]) -> None:
    """Give each unreadable file to the series it belongs to, so that reading that series names the file.

    A file cut short in its header still holds the tags before the cut: if the bytes of a series' UID are
    among them, the file is that series'. Otherwise it goes to ``maybe_broken`` of the series in its folder
    that lacks slices, where exactly one does (a flat dump: the other series there stays readable), else of
    every series in its folder; reading any of them refuses it (`DicomSeriesRef.unreadable`).
    """
    if not broken or not series:
        return
    for path, why in broken:
        try:
            with open(path, "rb") as fh:
                data = fh.read(_ATTRIBUTION_BYTES)
        except OSError:
            data = b""
        owners = [ref for ref in series if ref.uid and not ref.uid.startswith("nouid-")
                  and ref.uid.encode() in data]
        if len(owners) == 1:
            owners[0].broken.append((path, why))
            continue
        beside = [ref for ref in series if path.parent in {f.parent for f in ref.files}]
        gapped = [ref for ref in beside if _lacks_slices(ref)] if len(beside) > 1 else []
        for ref in gapped if len(gapped) == 1 else beside:
            ref.maybe_broken.append((path, why))


def _lacks_slices(ref: DicomSeriesRef) -> bool:
    """Whether the series' slice positions show a gap (where an unreadable file of its folder would fit)."""
    from .dicom_geometry import plan_stack

    try:
        plan_stack(list(ref.headers), ref.folder)
    except CTSynthError as exc:
        return "missing" in exc.problem
    return False


def find_dicom_series(root: Path) -> tuple[list[DicomSeriesRef], list[str]]:
    """Every CT series under ``root`` (a file or a folder tree), and notes on what was skipped and why."""
    scan = scan_dicom_tree(Path(root))
    return scan.series, scan.notes

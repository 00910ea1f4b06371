"""Find the CT studies under a data folder: DICOM series, NIfTI files and TIFF slice series.

A *study* is one training volume, the unit every later stage works on. Its ``id`` is its path below the
root without extension, '/'-separated (``case_0001``, ``patient1/SR_2``). Its ``patient`` groups the
volumes of one person, so that splits never put one patient on both sides.

DICOM comes from the headers: series are grouped into studies by StudyInstanceUID and into patients by
PatientID, whatever the folders or file names; the series a study is trained on is chosen by the rules of
:mod:`ctsynth.io.dicom_select` (scouts, reformats, sharp kernels set aside with a note). A DICOM study is
named by its folder where it has one to itself (identifiers in the path replaced by tokens), else by the
token of its StudyInstanceUID; its patient is the token of its PatientID (:mod:`ctsynth.io.identity`).
Clear identifiers stay in memory (``StudyRef.identity()``, for label sheets keyed by PatientID,
StudyInstanceUID or AccessionNumber); ``Discovery.redact`` turns them into tokens in text bound for output.

NIfTI, TIFF, and DICOM files without those tags, keep the folder rules: the patient is a ``patientN`` folder
or name part where there is one (COVID-CTset), else the first folder below the root that is neither a label
folder (``COVID/``, ``normal/``) nor a container (``train/``, ``images/``, ``dicom/``...) nor shared by every
study, else the study id itself (see :func:`assign_patients`).

Skipped, with a note: hidden files and folders, ``ground_truth/``, ``segmentations/`` and ``masks/`` folders
(the phantom cohort's and TotalSegmentator's masks), ``__MACOSX``, NIfTI files named like masks
(``case1_seg.nii.gz``, ``mask_case1.nii.gz``), folders that cannot be read, and files that are not CT images
(pictures, archives, documents). The dataset's own files at the root (labels CSV, Patients_metadata.csv,
phantom.json) are used, not reported.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CTSynthError
from ..volume import CTVolume
from .dicom_select import (SeriesRules, describe_set_aside, folder_of, parse_series_option, select_series,
                           stray_notes)
from .dicom_series import NOT_IMAGE_NAMES
from .identity import DicomIdentity, Redactor
from .labels import (LabelTable, find_labels_file, is_label_folder, label_from_path, match_labels,
                     parse_label_map, read_labels_csv)
from .nifti import is_nifti_path, read_nifti
from .tiff import (FLAT_NAME, METADATA_NAME, CovidCTsetMetadata, find_metadata_near, is_tiff_path, natural_key,
                   read_tiff_files, series_identity)

SKIP_DIRS = {"ground_truth", "__macosx", "segmentations", "masks"}
# NIfTI names that mark a segmentation beside its CT (case1_seg.nii.gz, mask_case1.nii.gz): not CT.
MASK_NAME = re.compile(r"(?:[_-](?:seg|segmentation|mask|masks|label|labels|gt)$)|(?:^(?:seg|mask|label)[_-])",
                       re.IGNORECASE)
# Files that are part of a dataset but not images: used elsewhere or ignored without a note.
DATASET_FILES = {"labels.csv", "patient_details.csv", METADATA_NAME.lower(), "phantom.json", "ctsynth_tiff.json",
                 "all.csv", "readme.md", "readme.txt", "license.txt"} | NOT_IMAGE_NAMES
DATASET_SUFFIXES = (".csv", ".json", ".md", ".txt", ".yaml", ".yml", ".npz", ".npy", ".log")
NOT_CT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pdf", ".zip", ".tar", ".gz", ".7z", ".rar",
                   ".html", ".htm", ".xml", ".doc", ".docx", ".xls", ".xlsx", ".py", ".sh", ".exe",
                   ".mp4", ".avi", ".db", ".ini", ".mha", ".mhd", ".nrrd", ".raw", ".img", ".hdr", ".mgz", ".h5")
CONTAINER_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "data", "dataset",
                   "images", "imagestr", "imagests", "studies", "scans", "volumes", "dicom", "nifti", "nii", "tiff",
                   "ct", "raw"}
_PATIENT = re.compile(r"(?<![a-z])patient\d+(?!\d)", re.IGNORECASE)


@dataclass
class StudyRef:
    """One 3D series found by :func:`discover_studies`; ``read()`` loads it as a labelled CTVolume."""

    id: str
    patient: str
    kind: str  # "dicom" | "nifti" | "tiff"
    path: Path
    label: str | None = None
    notes: list[str] = field(default_factory=list)
    series: str = ""  # what identifies the series to a person: SR_k, a DICOM description, ...
    series_uid: str | None = None
    n_slices: int | None = None
    files: list[Path] | None = None
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    dicom_ref: Any = field(default=None, repr=False)

    def read(self, canonical: bool = True) -> CTVolume:
        """Read the study into HU (label filled in, discovery notes added to ``meta['notes']``).

        ``canonical``: reoriented to axial (:func:`ctsynth.io.orientation.to_canonical_axial`), as every
        volume reaches ``prepare``; False keeps the geometry as stored (``convert``)."""
        if self.options.get("problem"):
            raise CTSynthError(self.options["problem"], self.path,
                               "run 'ctsynth inspect' to see the series, and choose one with --series")
        if self.kind == "nifti":
            volume = read_nifti(self.path)
        elif self.kind == "tiff":
            volume = read_tiff_files(self.files or [], source=self.path, **self.options)
        elif self.kind == "dicom":
            from .dicom_reader import read_dicom_series

            volume = read_dicom_series(self.dicom_ref if self.dicom_ref is not None else self.path,
                                       self.series_uid, skip_unreadable=self.options.get("skip_unreadable", False))
        else:
            raise ValueError(f"unknown study kind {self.kind!r}")
        if canonical:
            from .orientation import to_canonical_axial

            volume = to_canonical_axial(volume)
        volume.label = self.label
        notes = list(volume.meta.get("notes", []))
        volume.meta["notes"] = notes + [n for n in self.notes if n not in notes]
        return volume

    def identity(self) -> DicomIdentity | None:
        """The clear DICOM identifiers (in memory only; never written): for grouping and label matching."""
        return self.options.get("identity")


@dataclass
class Discovery:
    """Everything :func:`discover` found: the studies plus notes about the tree as a whole."""

    root: Path
    studies: list[StudyRef]
    notes: list[str]
    labels_file: Path | None = None
    metadata_file: Path | None = None
    redact: Redactor = field(default_factory=Redactor)  # clear identifiers -> tokens, for text bound for outputs


def _skipped_dir(name: str) -> bool:
    return name.startswith(".") or name.lower() in SKIP_DIRS


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return root.name if rel == "." else rel


def _patient_folders(study_id: str, label_map: dict[str, str]) -> list[str]:
    """The folders on a study's path (below the root) that may name its patient: not label folders (``COVID``),
    not common container names (``train``, ``images``, ``dicom``...)."""
    parts = study_id.split("/")[:-1]
    return [p for p in parts if not is_label_folder(p, label_map) and p.strip().lower() not in CONTAINER_NAMES]


def assign_patients(studies: list["StudyRef"], label_map: dict[str, str]) -> None:
    """Fill ``patient`` for studies that have none (see the module docstring).

    A ``patientN`` part of the path wins. Otherwise the patient is the first candidate folder below the root;
    while that would put every study into one patient, the level below is tried (a container folder such as
    ``studies/`` in ``studies/CT-0/study_0001.nii.gz``); a study with no folder left is its own patient.
    """
    todo = [s for s in studies if not s.patient]
    for study in todo:
        match = next((m for m in map(_PATIENT.search, (study.options.get("folder_id") or study.id).split("/")) if m),
                     None)
        if match:
            study.patient = match.group(0).lower()
    todo = [s for s in todo if not s.patient]
    folders = {id(s): _patient_folders(s.options.get("folder_id") or s.id, label_map) for s in todo}
    level = 0
    while True:
        chosen = {id(s): (folders[id(s)][level] if len(folders[id(s)]) > level else None) for s in todo}
        named = [c for c in chosen.values() if c is not None]
        if len(todo) > 1 and named and len(set(named)) == 1 and len(named) == len(todo):
            level += 1
            continue
        break
    for study in todo:
        # A folder name alone: equal names in different places (COVID/p1, normal/p1) count as one patient,
        # which can only make a split more cautious.
        study.patient = chosen[id(study)] or study.options.get("folder_id") or study.id


def _strip_nifti_suffix(name: str) -> str:
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4]


def discover(
    root: str | Path,
    *,
    labels: str | Path | None = None,
    metadata: str | Path | None = None,
    label_map: str | dict[str, str] | None = None,
    offset: float | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    series: str | SeriesRules | None = None,
    skip_unreadable: bool = False,
) -> Discovery:
    """Walk ``root`` and return its studies with labels and patients; see the module docstring.

    ``labels``: a CSV (``study,label``, or Patient_details.csv); default ``labels.csv`` or
    ``Patient_details.csv`` at the root. ``metadata``: COVID-CTset's Patients_metadata.csv; default the one at
    the root. ``offset``/``spacing_mm`` apply to TIFF series (see :mod:`ctsynth.io.tiff`). A DICOM study with a
    file that looks like DICOM but cannot be read fails to read, naming the file, unless ``skip_unreadable``
    (then it is read without the file, with a note naming it; docs/dicom.md).
    """
    root = Path(root)
    label_map_dict = parse_label_map(label_map)
    rules = series if isinstance(series, SeriesRules) else parse_series_option(series)
    redact = Redactor()
    if not root.exists():
        raise CTSynthError("no such file or folder", root, "check the path to the data")
    notes: list[str] = []
    studies: list[StudyRef] = []
    tiff_options: dict[str, Any] = {"offset": offset, "spacing_mm": spacing_mm}

    if root.is_file():
        if is_nifti_path(root):
            studies.append(StudyRef(id=_strip_nifti_suffix(root.name), patient=_strip_nifti_suffix(root.name),
                                    kind="nifti", path=root))
        elif is_tiff_path(root):  # a multi-page TIFF holding a whole series
            studies.append(StudyRef(id=root.stem, patient=root.stem, kind="tiff", path=root, files=[root],
                                    options=tiff_options))
        else:
            raise CTSynthError("is a single file that is neither NIfTI nor a multi-page TIFF", root,
                               "give the folder that holds the series (DICOM or TIFF slices)")
    else:
        dicom_candidates: list[Path] = []
        def unreadable(exc: OSError) -> None:
            notes.append(f"skipped folder {exc.filename} (cannot be read: {exc.strerror})")

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
            folder = Path(dirpath)
            skipped = [d for d in dirnames if _skipped_dir(d)]
            for name in skipped:
                if not name.startswith(".") and name.lower() != "__macosx":
                    notes.append(f"skipped folder {_rel(folder / name, root)}/ (not CT images)")
            dirnames[:] = sorted((d for d in dirnames if not _skipped_dir(d)), key=natural_key)
            plain_tiffs: list[Path] = []
            flat_groups: dict[str, list[Path]] = {}
            for name in sorted(filenames, key=natural_key):
                path = folder / name
                lower = name.lower()
                if name.startswith("."):
                    continue
                if is_nifti_path(lower) and MASK_NAME.search(_strip_nifti_suffix(name)):
                    notes.append(f"skipped {_rel(path, root)} (named like a segmentation mask, not a CT)")
                elif is_nifti_path(lower):
                    stem = _strip_nifti_suffix(_rel(path, root))
                    studies.append(StudyRef(id=stem, patient="", kind="nifti", path=path))
                elif is_tiff_path(lower):
                    match = FLAT_NAME.match(name)
                    if match:
                        group = name[: match.start("series")] + match["series"]
                        flat_groups.setdefault(group, []).append(path)
                    else:
                        plain_tiffs.append(path)
                elif lower in DATASET_FILES or lower.endswith(DATASET_SUFFIXES):
                    continue
                elif lower.endswith(NOT_CT_SUFFIXES):
                    notes.append(f"skipped {_rel(path, root)} (not a CT format ctsynth reads)")
                else:
                    dicom_candidates.append(path)
            if plain_tiffs:
                patient, series = series_identity(folder)
                studies.append(StudyRef(id=_rel(folder, root), patient=patient or "", kind="tiff", path=folder,
                                        files=plain_tiffs, series=series or "", n_slices=len(plain_tiffs),
                                        options=tiff_options))
            for group, files in flat_groups.items():
                study_id = group if folder == root else f"{_rel(folder, root)}/{group}"
                patient, series = series_identity(files[0])
                studies.append(StudyRef(id=study_id, patient=patient or "", kind="tiff", path=folder,
                                        files=files, series=series or "", n_slices=len(files),
                                        options=tiff_options))
        if dicom_candidates:
            studies.extend(_dicom_studies(root, dicom_candidates, notes, rules, redact, skip_unreadable))

    # Unique ids (a NIfTI 'case1.nii.gz' beside a DICOM folder 'case1/').
    seen: dict[str, int] = {}
    for study in studies:
        if study.id in seen:
            seen[study.id] += 1
            study.id = f"{study.id}_{study.kind}{seen[study.id]}"
        else:
            seen[study.id] = 1

    assign_patients(studies, label_map_dict)

    if not studies:
        detail = f" ({'; '.join(notes[:3])})" if notes else ""
        raise CTSynthError(f"no CT studies found under this folder{detail}", root,
                           "point to a folder holding DICOM series, .nii/.nii.gz files or folders of .tif slices")

    # Metadata for TIFF spacing.
    metadata_path = Path(metadata) if metadata else None
    if metadata_path is None and root.is_dir():
        metadata_path = find_metadata_near(root)
    if metadata_path is not None:
        if not metadata_path.is_file():
            raise CTSynthError("no such metadata file", metadata_path, "check the --metadata path")
        if any(s.kind == "tiff" for s in studies):
            tiff_options["metadata"] = CovidCTsetMetadata.load(metadata_path)

    # Labels: CSV first, then folder names.
    labels_path = Path(labels) if labels else (find_labels_file(root) if root.is_dir() else None)
    table: LabelTable | None = None
    if labels_path is not None:
        if not labels_path.is_file():
            raise CTSynthError("no such labels file", labels_path, "check the --labels path")
        table = read_labels_csv(labels_path, label_map_dict)
        csv_labels, label_notes = match_labels(table, [(s.id, s.patient) for s in studies],
                                               {s.id: _label_keys(s) for s in studies})
        notes.extend(label_notes)
    else:
        csv_labels = {}
    for study in studies:
        if study.id in csv_labels:
            study.label = csv_labels[study.id]
        else:
            parts = study.options.get("folder_id", study.id).split("/") if study.kind == "dicom" \
                else study.id.split("/")
            if study.kind == "tiff" and study.files and FLAT_NAME.match(study.files[0].name):
                parts = parts + [study.files[0].name]
            study.label = label_from_path(parts if root.is_dir() else [], label_map_dict)
    studies.sort(key=lambda s: natural_key(s.id))
    return Discovery(root=root, studies=studies, notes=notes, labels_file=labels_path,
                     metadata_file=metadata_path, redact=redact)


def _label_keys(study: StudyRef) -> dict[str, list[str]]:
    """What a label row may name a study by besides its id and patient: the clear DICOM identifiers."""
    identity = study.identity()
    if identity is None:
        return {}
    folder = study.options.get("folder_id") or ""
    return {"patient": [identity.patient_id], "study_uid": [identity.study_uid], "accession": [identity.accession],
            "folder": [folder, folder.rsplit("/", 1)[-1]]}


def _dicom_studies(root: Path, candidates: list[Path], notes: list[str], rules: SeriesRules,
                   redact: Redactor, skip_unreadable: bool = False) -> list[StudyRef]:
    """One StudyRef per training volume: series grouped into studies by StudyInstanceUID (by folder where a
    file has none), the volume(s) of each study chosen by :func:`ctsynth.io.dicom_select.select_series`."""
    from .dicom_series import scan_dicom_tree

    scan = scan_dicom_tree(root)
    refs, dicom_notes = scan.series, scan.notes
    # scan_dicom_tree also opens the NIfTI, TIFF and dataset files it meets and notes them as non-DICOM;
    # that note is replaced by one naming only the files that were candidates for DICOM.
    # Notes about one series travel with that study, not with the tree.
    series_notes = {n for ref in refs for n in getattr(ref, "notes", [])}
    other_notes = [n for n in dicom_notes if "non-DICOM file(s)" not in n]
    notes.extend(n for n in other_notes if n not in series_notes)
    in_series = {f for ref in refs + scan.set_aside for f in ref.files}  # Paths already: no second copy
    unused = [p for p in candidates if p not in in_series
              and not any(_rel(p, root) in note for note in other_notes)]
    if unused:
        shown = ", ".join(_rel(p, root) for p in unused[:5]) + (f" and {len(unused) - 5} more"
                                                                 if len(unused) > 5 else "")
        notes.append(f"skipped {len(unused)} file(s) that are not CT images ctsynth reads: {shown}")

    def outside_skipped_dirs(ref) -> bool:
        try:
            parts = Path(ref.folder).relative_to(root).parts
        except ValueError:
            parts = ()
        return not any(_skipped_dir(p) for p in parts)

    groups: dict[tuple[str, str], tuple[list, list]] = {}
    for ref, bucket in [(r, 0) for r in refs] + [(r, 1) for r in scan.set_aside]:
        if not outside_skipped_dirs(ref):
            continue
        study_uid = _majority(h.study_uid for h in ref.headers)
        key = ("uid", study_uid) if study_uid else ("folder", str(ref.folder))
        groups.setdefault(key, ([], []))[bucket].append(ref)

    studies = []
    planned = []
    # A study of scouts or non-CT only is not read (the tree notes name its files); a small one may be a stray
    # slice of a study beside it (its StudyInstanceUID damaged), which then names it (see stray_notes).
    orphans = select_series([], [ref for readable, aside in groups.values() if not readable for ref in aside], rules)
    for (kind, value), (readable, aside) in groups.items():
        if not readable:
            continue
        headers = [h for ref in readable + aside for h in ref.headers]
        identity = DicomIdentity(patient_id=_majority(h.patient_id for h in headers),
                                 study_uid=value if kind == "uid" else "",
                                 accession=_majority(h.accession for h in headers))
        redact.add_identity(identity, [r.uid for r in readable + aside])
        choices = select_series(readable, aside, rules)
        readable_ids = {id(ref) for ref in readable}
        planned.append((kind, identity, choices, folder_of([c for c in choices if id(c.ref) in readable_ids])))
    # A study is named by its folder (redacted: a TCIA-style folder named after the PatientID shows its token
    # instead) where that folder is its own; studies sharing a folder (a flat dump) by their token.
    shared = Counter(folder for _, _, _, folder in planned)
    for kind, identity, choices, folder in planned:
        used = [c for c in choices if c.used]
        base = _rel(folder, root)
        if kind == "uid" and shared[folder] > 1:
            base_id = identity.study_token
        else:
            base_id = redact(base)
        set_aside = describe_set_aside(choices)
        common = {"folder_id": "" if folder == root else base, "identity": identity,
                  "choices": [c.summary() for c in choices], "skip_unreadable": skip_unreadable}
        patient = identity.patient_token
        if not used:
            problem = "; ".join(set_aside) or "no series to read"
            studies.append(StudyRef(id=base_id, patient=patient, kind="dicom", path=folder, notes=[],
                                    series="", n_slices=0, files=[],
                                    options={**common, "problem": f"no series of this study can be a training "
                                             f"volume ({problem})"}))
            continue
        used.sort(key=lambda c: (c.ref.series_number is None, c.ref.series_number or 0, c.ref.description, c.ref.uid))
        for k, c in enumerate(used, start=1):
            ref = c.ref
            # Read with the series: a gap is then refused naming a stray file set aside beside it.
            ref.notes.extend(n for n in stray_notes(choices + orphans, ref) if n not in ref.notes)
            if len(used) == 1:
                study_id = base_id
            else:
                number = ref.series_number if ref.series_number is not None else k
                study_id = f"{base_id}_s{number}"
            studies.append(StudyRef(id=study_id, patient=patient, kind="dicom", path=Path(ref.folder),
                                    notes=list(dict.fromkeys(list(getattr(ref, "notes", [])) + set_aside)),
                                    series=ref.description or "", series_uid=ref.uid, n_slices=ref.n_slices,
                                    files=list(ref.files), dicom_ref=ref, options=dict(common)))
    return studies


def _majority(values) -> str:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else ""


def discover_studies(
    root: str | Path,
    *,
    labels: str | Path | None = None,
    metadata: str | Path | None = None,
    label_map: str | dict[str, str] | None = None,
    offset: float | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    series: str | SeriesRules | None = None,
    skip_unreadable: bool = False,
) -> list[StudyRef]:
    """The studies under ``root`` (see :func:`discover`, which also returns notes about the tree)."""
    return discover(root, labels=labels, metadata=metadata, label_map=label_map, offset=offset,
                    spacing_mm=spacing_mm, series=series, skip_unreadable=skip_unreadable).studies

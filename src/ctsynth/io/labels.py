"""Study labels (``covid`` / ``normal``) from folder names, a labels CSV, or COVID-CTset's Patient_details.csv.

A CSV's id column names what its ids are (:data:`KEY_KINDS`): study ids or patients (also a DICOM PatientID
or a DICOM study's folder), or DICOM StudyInstanceUIDs or AccessionNumbers.

Sources, strongest first: a CSV given with ``--labels FILE``; else ``labels.csv`` or ``Patient_details.csv``
found at the data root; then, for studies the CSV does not name, a folder name on the study's path below the
root (``COVID/``, ``normal/``, ``Positive/``... case-insensitive). Values are mapped onto the two labels by
:data:`DEFAULT_ALIASES`, extended or overridden by a ``--label-map "positive=covid,negative=normal"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import CTSynthError
from .csv_table import read_csv_table

LABELS = ("covid", "normal")
LABEL_FILE_NAMES = ("labels.csv", "Patient_details.csv")
# Matched after :func:`_norm` (lower case, no '-', '_' or spaces, a leading 'ct' dropped): so 'COVID-19',
# 'covid_19', 'CT_COVID' and 'CT_NonCOVID' (the COVID-CT dataset's folders) are all recognised.
DEFAULT_ALIASES = {
    "covid": "covid", "covid19": "covid", "positive": "covid",
    "normal": "normal", "negative": "normal", "noncovid": "normal", "noncovid19": "normal", "healthy": "normal",
}
STUDY_COLUMNS = ("study", "study_id", "id", "case", "case_id", "patient", "patient id", "patient_id", "patientid",
                 "subject", "subject id", "subject_id", "studyinstanceuid", "study instance uid", "study_uid",
                 "study uid", "accessionnumber", "accession number", "accession_number", "accession")
# What the id column's name says the ids are (docs/io.md): a study id or patient (matched against both, as
# COVID-CTset and RICORD sheets name patients in a 'patient' column), or a DICOM StudyInstanceUID /
# AccessionNumber (matched against those header values only).
KEY_KINDS = {"studyinstanceuid": "study_uid", "study instance uid": "study_uid", "study_uid": "study_uid",
             "study uid": "study_uid", "accessionnumber": "accession", "accession number": "accession",
             "accession_number": "accession", "accession": "accession"}
LABEL_COLUMNS = ("label", "class", "covid-19 infection", "diagnosis")
_SUFFIXES = (".nii.gz", ".nii", ".tiff", ".tif", ".dcm")


def parse_label_map(text: str | dict[str, str] | None) -> dict[str, str]:
    """``"positive=covid,negative=normal"`` -> ``{"positive": "covid", "negative": "normal"}`` (lower-cased)."""
    if not text:
        return {}
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for item in text.split(","):
            if not item.strip():
                continue
            name, sep, value = item.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise CTSynthError(f"--label-map entry '{item.strip()}' is not NAME=LABEL", None,
                                   'write it like --label-map "positive=covid,negative=normal"')
            pairs.append((name, value))
    mapping = {}
    for name, value in pairs:
        value = value.strip().lower()
        if value not in LABELS:
            raise CTSynthError(f"--label-map maps '{name.strip()}' to '{value}', which is not one of "
                               f"{', '.join(LABELS)}", None, "map every name to covid or normal")
        mapping[name.strip().lower()] = value
    return mapping


def _norm(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.strip().lower())


def label_aliases(label_map: dict[str, str] | None = None) -> dict[str, str]:
    """The default aliases with ``label_map`` applied on top (keys normalised by :func:`_norm`)."""
    return {**DEFAULT_ALIASES, **{_norm(k): v for k, v in (label_map or {}).items()}}


def _lookup(name: str, aliases: dict[str, str]) -> str | None:
    key = _norm(name)
    if key in aliases:
        return aliases[key]
    if key.startswith("ct") and key[2:] in aliases:
        return aliases[key[2:]]
    return None


def normalise_label(value: str, label_map: dict[str, str] | None = None) -> str | None:
    """Map a raw label value onto ``covid``/``normal``; None if it is unknown."""
    return _lookup(value, label_aliases(label_map))


def study_key(text: str) -> str:
    """Normalised key for matching CSV rows to study ids: '/'-separated, no file suffix, lower case."""
    key = text.strip().replace("\\", "/").strip("/")
    while key.startswith("./"):
        key = key[2:]
    lowered = key.lower()
    for suffix in _SUFFIXES:
        if lowered.endswith(suffix):
            lowered = lowered[: -len(suffix)]
            break
    return lowered


@dataclass
class LabelTable:
    """Labels read from one CSV: ``entries`` maps :func:`study_key` of a study or patient id to a label."""

    path: Path
    entries: dict[str, str]
    patient_details: bool = False  # COVID-CTset's dataset-wide Patient_details.csv
    rows: dict[str, str] = field(default_factory=dict)  # key -> the id as written in the file
    key_kind: str = "study"  # "study" (study id or patient), "study_uid" or "accession": see KEY_KINDS


def find_labels_file(root: Path) -> Path | None:
    """``labels.csv`` or ``Patient_details.csv`` directly in ``root`` (in that order)."""
    if not root.is_dir():
        return None
    names = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    for name in LABEL_FILE_NAMES:
        if name.lower() in names:
            return names[name.lower()]
    return None


def _pick(columns: Iterable[str], wanted: tuple[str, ...]) -> str | None:
    by_name = {c.strip().lower(): c for c in columns if c}
    return next((by_name[w] for w in wanted if w in by_name), None)


def read_labels_csv(path: str | Path, label_map: dict[str, str] | None = None) -> LabelTable:
    """Read a ``study,label`` CSV (or COVID-CTset's Patient_details.csv) into a :class:`LabelTable`."""
    path = Path(path)
    fix_map = 'map it with --label-map "VALUE=covid,OTHER=normal"'
    columns, table = read_csv_table(path, what="labels file", option="--labels",
                                    expected="a UTF-8 CSV with a 'study,label' header")
    id_column = _pick(columns, STUDY_COLUMNS)
    label_column = _pick(columns, LABEL_COLUMNS)
    if id_column is None or label_column is None:
        missing = "a study column (study, id, case or patient)" if id_column is None else \
            "a label column (label or class)"
        raise CTSynthError(f"labels CSV has no {missing}; its header is "
                           f"'{','.join(c for c in columns if c) or '(empty)'}'", path,
                           "give it a header line 'study,label' and one row per study")
    entries: dict[str, str] = {}
    rows: dict[str, str] = {}
    for line, row in enumerate(table, start=2):
        raw_id = (row.get(id_column) or "").strip()
        raw_label = (row.get(label_column) or "").strip()
        if not raw_id and not raw_label:
            continue
        if not raw_id or not raw_label:
            raise CTSynthError(f"line {line} has an empty {'study' if not raw_id else 'label'}", path,
                               "fill in or delete that line")
        label = normalise_label(raw_label, label_map)
        if label is None:
            allowed = sorted({"covid", "covid-19", "positive", "normal", "negative", "non-covid",
                              "healthy", *(label_map or {})})
            raise CTSynthError(f"line {line}: unknown label '{raw_label}' for '{raw_id}' (allowed: "
                               f"{', '.join(allowed)})", path, fix_map)
        key = study_key(raw_id)
        if entries.get(key, label) != label:
            raise CTSynthError(f"line {line}: '{raw_id}' is labelled both {entries[key]} and {label}",
                               path, "keep one label per study")
        entries[key] = label
        rows[key] = raw_id
    details = label_column.strip().lower() == "covid-19 infection"
    return LabelTable(path=path, entries=entries, patient_details=details, rows=rows,
                      key_kind=KEY_KINDS.get(id_column.strip().lower(), "study"))


def label_from_path(parts: Iterable[str], label_map: dict[str, str] | None = None) -> str | None:
    """The label named by a folder on the study's path below the root (``COVID``, ``normal``...), or by the
    class prefix of a flattened COVID-CTset name (``137covid_patient1_SR_2``); None if none or ambiguous."""
    aliases = label_aliases(label_map)
    found = set()
    for part in parts:
        label = _lookup(part, aliases)
        if label is None:
            prefix = re.match(r"^\d*([a-z][a-z_-]*?)_?patient\d+", part.strip().lower())
            label = _lookup(prefix.group(1), aliases) if prefix else None
        if label is not None:
            found.add(label)
    return found.pop() if len(found) == 1 else None


def is_label_folder(name: str, label_map: dict[str, str] | None = None) -> bool:
    """True if a folder name is a label (so it is not taken for a patient id)."""
    return _lookup(name, label_aliases(label_map)) is not None


def match_labels(table: LabelTable, studies: list[tuple[str, str]],
                 extra: dict[str, dict[str, list[str]]] | None = None) -> tuple[dict[str, str], list[str]]:
    """Labels for ``(study_id, patient)`` pairs from ``table``: by study id first, then by patient id.

    ``extra`` gives, per study id, the DICOM header values a row may name instead (``patient``: PatientID,
    ``study_uid``, ``accession``) and the study's ``folder`` (a DICOM study's id is a token, but a sheet made
    for ``case_0001/`` folders still names the folder); which ones count is the table's ``key_kind``.
    Returns ``(labels by study id, notes)``. Rows naming no study are an error for a labels CSV (a typo or
    the wrong data folder), and a note for COVID-CTset's Patient_details.csv, which lists every patient of the
    dataset even when only part of it was downloaded.
    """
    used: set[str] = set()
    labels: dict[str, str] = {}
    for study_id, patient in studies:
        values = (extra or {}).get(study_id, {})
        if table.key_kind == "study":
            candidates = [study_id, patient, *values.get("patient", []), *values.get("folder", [])]
        else:
            candidates = list(values.get(table.key_kind, []))
        for key in (study_key(c) for c in candidates if c):
            if key in table.entries:
                labels[study_id] = table.entries[key]
                used.add(key)
                break
    unused = [table.rows[k] for k in table.entries if k not in used]
    notes: list[str] = []
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        if table.patient_details:
            notes.append(f"{table.path.name}: {len(unused)} listed patients have no series here ({shown})")
        else:
            what = {"study": "studies", "study_uid": "StudyInstanceUIDs",
                    "accession": "AccessionNumbers"}[table.key_kind]
            raise CTSynthError(f"names {len(unused)} {what} that are not in the data: {shown}", table.path,
                               "fix those ids (run 'ctsynth inspect DATA' to list the study ids) or delete "
                               "their rows")
    return labels, notes

"""No identifying header field of an input reaches any output: a hospital-style DICOM export with names, IDs,
dates, institution and UIDs, converted to every format, listed by `inspect --json` and prepared into a cache
(manifest, arrays), also when the export's folders are named after the PatientID and StudyInstanceUID as
TCIA and many PACS exports name them. Patients and studies appear only as salted tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from ctsynth.cli import main
from test_dicom_support import edit, synthetic_volume, write_series

SECRETS = {
    "PatientName": "DOE^JANE^Q",
    "PatientID": "MRN-20417733",
    "PatientBirthDate": "19610214",
    "StudyDate": "20200407",
    "AccessionNumber": "ACC99812",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StationName": "CTROOM-7-WEST",
}


def _hospital_export(folder: Path, patient_id: str | None = None) -> tuple[Path, set[bytes]]:
    files = write_series(synthetic_volume(shape=(6, 24, 28)), folder)
    study_uid = pydicom.uid.generate_uid()
    secrets = {**SECRETS, **({"PatientID": patient_id} if patient_id else {})}

    def identify(ds: pydicom.Dataset) -> None:
        for keyword, value in secrets.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID = study_uid
        ds.PatientIdentityRemoved = "NO"

    for f in files:
        edit(f, identify)
    uids = {pydicom.dcmread(f).SOPInstanceUID.encode() for f in files}
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID.encode()
    return folder, {v.encode() for v in secrets.values()} | uids | {study_uid.encode(), series_uid}


def _all_bytes(root: Path) -> bytes:
    import gzip

    chunks = []
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        data = path.read_bytes()
        chunks.append(gzip.decompress(data) if path.name.endswith(".gz") else data)
    return b"\n".join(chunks)


@pytest.mark.parametrize("fmt", ["dicom", "nifti", "tiff"])
def test_convert_copies_no_identifying_field(tmp_path: Path, fmt: str, capsys) -> None:
    source, secrets = _hospital_export(tmp_path / "export")
    out = tmp_path / ("out.nii.gz" if fmt == "nifti" else "out")
    args = ["convert", str(source), str(out)] + ([] if fmt == "nifti" else ["--format", fmt])
    assert main(args) == 0, capsys.readouterr().err
    blob = _all_bytes(out)
    assert len(blob) > 1000
    leaked = [s for s in secrets if s in blob]
    assert leaked == []


def test_prepared_cache_holds_no_header_field(tmp_path: Path, capsys) -> None:
    source, secrets = _hospital_export(tmp_path / "data" / "covid" / "patient1")
    _hospital_export(tmp_path / "data" / "normal" / "patient2")
    code = main(["prepare", str(tmp_path / "data"), "--config", "tiny", "--out", str(tmp_path / "prep"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    blob = _all_bytes(tmp_path / "prep")
    assert [s for s in secrets if s in blob] == []


def _tcia_style_export(root: Path) -> tuple[Path, set[bytes]]:
    """Two patients, each in a folder named by PatientID / a study folder named by its StudyInstanceUID."""
    secrets: set[bytes] = set()
    for label, pid in (("covid", "MRN-20417733"), ("normal", "MRN-55500017")):
        tmp = root.parent / f"stage-{pid}"
        _, found = _hospital_export(tmp, patient_id=pid)
        secrets |= found
        study_uid = pydicom.dcmread(next(tmp.iterdir())).StudyInstanceUID
        tmp.rename(_mkparent(root / label / pid / study_uid))
    return root, secrets


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_inspect_json_and_cache_of_a_tcia_style_tree_hold_no_identifier(tmp_path: Path, capsys) -> None:
    from ctsynth.io.identity import token

    root, secrets = _tcia_style_export(tmp_path / "data")
    assert main(["inspect", str(root), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert sorted(r["patient"] for r in report["studies"]) == sorted([token("pat", "MRN-20417733"),
                                                                     token("pat", "MRN-55500017")])
    assert [s for s in secrets if s in out.encode()] == []
    code = main(["prepare", str(root), "--config", "tiny", "--out", str(tmp_path / "prep"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    blob = _all_bytes(tmp_path / "prep")
    assert b"pat-" in blob and [s for s in secrets if s in blob] == []

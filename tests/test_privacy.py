"""No identifying header field of an input reaches any output: a hospital-style DICOM export with names, IDs,
dates, institution and UIDs, converted to every format, listed by `inspect --json`, prepared into a cache
(manifest, arrays), trained on, sampled by `generate` (NIfTI and DICOM, with the audit against the cache)
and evaluated (report.html, metrics.json, figures), also when the export's folders are named after the
PatientID and StudyInstanceUID as TCIA and many PACS exports name them. Patients and studies appear only
as salted tokens; neither the clear values nor their salt-free hashes are in any output byte."""

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


def _hospital_export(folder: Path, patient_id: str | None = None, volume=None) -> tuple[Path, set[bytes]]:
    files = write_series(synthetic_volume(shape=(6, 24, 28)) if volume is None else volume, folder)
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


def _tcia_style_export(root: Path, patients=(("covid", "MRN-20417733"), ("normal", "MRN-55500017")),
                       volumes=None) -> tuple[Path, set[bytes]]:
    """Patients each in a folder named by PatientID / a study folder named by its StudyInstanceUID."""
    secrets: set[bytes] = set()
    for k, (label, pid) in enumerate(patients):
        tmp = root.parent / f"stage-{pid}"
        _, found = _hospital_export(tmp, patient_id=pid, volume=None if volumes is None else volumes[k])
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


def _unsalted_digests(values: set[bytes]) -> set[bytes]:
    """The salt-free hashes an identifier could leak as (what a token would be without the secret salt)."""
    import hashlib
    import hmac

    out = set()
    for v in values:
        for text in [v] + [kind + b":" + v for kind in (b"pat", b"std", b"acc", b"ser")]:
            out.add(hashlib.sha256(text).hexdigest()[:12].encode())
            out.add(hmac.new(b"", text, hashlib.sha256).hexdigest()[:12].encode())
    return out


def test_generated_volumes_and_the_evaluation_report_of_a_dicom_export_hold_no_identifier(tmp_path, capsys):
    """The whole path a user takes, from a TCIA-style DICOM export with identifying headers: prepare, train
    (the tiny GAN), generate NIfTI and DICOM (audited against the cache), evaluate the synthetic set against
    the DICOM export itself. Nothing written anywhere holds an identifier in clear or hashed without salt."""
    from _evaluate_cohorts import case

    patients = (("covid", "MRN-20417733"), ("normal", "MRN-55500017"), ("covid", "MRN-30000001"),
                ("normal", "MRN-30000002"))
    volumes = [case(200 + k, label).volume for k, (label, _) in enumerate(patients)]
    root, secrets = _tcia_style_export(tmp_path / "data", patients, volumes)
    secrets |= _unsalted_digests(secrets)
    prep, run, out = tmp_path / "prep", tmp_path / "run", tmp_path / "out"

    def ok(*argv: str) -> None:
        assert main(list(argv)) == 0, capsys.readouterr().err

    ok("prepare", str(root), "--config", "gan-tiny", "--out", str(prep), "--quiet")
    ok("train", str(prep), "--config", "gan-tiny", "--out", str(run), "--accelerator", "cpu")
    ok("generate", str(run), "--n", "2", "--label", "covid", "--audit", str(prep), "--out", str(out / "nifti"))
    ok("generate", str(run), "--n", "2", "--label", "normal", "--format", "dicom", "--out", str(out / "dicom"))
    ok("evaluate", "--real", str(root), "--synthetic", str(out / "nifti"), "--out", str(out / "report"),
       "--grid", "16,32,32", "--encoder-steps", "4", "--classifier-steps", "4", "--bootstrap", "20")
    printed = capsys.readouterr()
    report = out / "report"
    assert (report / "report.html").is_file() and (report / "metrics.json").is_file()
    assert any(p.suffix in (".png", ".svg") for p in report.rglob("*")) or b"data:image" in _all_bytes(report)
    assert list((out / "dicom").rglob("*.dcm")) and list((out / "nifti").glob("*.nii*"))
    outputs = {name: _all_bytes(folder) for name, folder in
               (("prep", prep), ("run", run), ("nifti", out / "nifti"), ("dicom", out / "dicom"), ("report", report))}
    outputs["printed"] = (printed.out + printed.err).encode()
    leaked = {name: sorted(s for s in secrets if s in blob) for name, blob in outputs.items()}
    assert leaked == {name: [] for name in outputs}

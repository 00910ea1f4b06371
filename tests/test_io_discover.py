"""Study discovery over COVID-CTset trees (nested and flattened), NIfTI folders, labels and bad trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from ctsynth.errors import CTSynthError
from ctsynth.io import discover, discover_studies, read_study, write_nifti
from ctsynth.volume import CTVolume

DETAILS = ("Patient ID,SEX,AGE,Date,COVID-19 Infection\npatient1,F,053Y,20200407,Positive\n"
           "patient3,M,066Y,20200418,Negative\n")
METADATA = ("Patient ID,SR_2 PixelSpacing,SR_4 PixelSpacing,SR_2 SliceThickness,SR_4 SliceThickness\n"
            'patient1,"[0.8, 0.8]","[0.75, 0.75]",4,1.5\npatient3,"[0.6, 0.6]","[0.6, 0.6]",5,2\n')


def _tiffs(folder: Path, names: list[str], value: int = 1000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        tifffile.imwrite(folder / name, np.full((6, 7), value + k, dtype=np.uint16))


def _covid_ctset(root: Path) -> Path:
    for patient in ("patient1", "patient3"):
        for series in ("SR_2", "SR_4"):
            _tiffs(root / patient / series, ["IM00001.tif", "IM00002.tif", "IM00010.tif"])
    (root / "Patient_details.csv").write_text(DETAILS)
    (root / "Patients_metadata.csv").write_text(METADATA)
    return root


def test_covid_ctset_tree(tmp_path: Path) -> None:
    root = _covid_ctset(tmp_path / "COVID-CTset")
    found = discover(root)
    assert [s.id for s in found.studies] == ["patient1/SR_2", "patient1/SR_4", "patient3/SR_2", "patient3/SR_4"]
    assert [s.patient for s in found.studies] == ["patient1", "patient1", "patient3", "patient3"]
    assert [s.label for s in found.studies] == ["covid", "covid", "normal", "normal"]
    assert {s.kind for s in found.studies} == {"tiff"}
    assert found.labels_file.name == "Patient_details.csv" and found.metadata_file.name == "Patients_metadata.csv"
    volume = found.studies[1].read()
    assert volume.label == "covid" and volume.shape == (3, 6, 7)
    assert volume.spacing_mm == (1.5, 0.75, 0.75)
    np.testing.assert_array_equal(volume.hu[:, 0, 0], [1000 - 1024, 1001 - 1024, 1002 - 1024])


def test_flattened_names(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _tiffs(root, [f"137covid_patient1_SR_2_IM{k:05d}.tif" for k in (10, 9, 1)])
    _tiffs(root, [f"137covid_patient1_SR_3_IM{k:05d}.tif" for k in (1, 2)])
    _tiffs(root, [f"200normal_patient7_SR_2_IM{k:05d}.tif" for k in (1, 2)])
    studies = discover_studies(root, spacing_mm=(5.0, 0.7, 0.7))
    assert [(s.id, s.patient, s.series, s.label, s.n_slices) for s in studies] == [
        ("137covid_patient1_SR_2", "patient1", "SR_2", "covid", 3),
        ("137covid_patient1_SR_3", "patient1", "SR_3", "covid", 2),
        ("200normal_patient7_SR_2", "patient7", "SR_2", "normal", 2),
    ]
    assert [p.name for p in studies[0].files] == ["137covid_patient1_SR_2_IM00001.tif",
                                                 "137covid_patient1_SR_2_IM00009.tif",
                                                 "137covid_patient1_SR_2_IM00010.tif"]
    assert studies[0].read().spacing_mm == (5.0, 0.7, 0.7)


def test_label_folders_csv_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "data"
    volume = CTVolume(hu=np.zeros((2, 3, 4), dtype=np.int16), spacing_mm=(1, 1, 1))
    for rel in ("COVID/a.nii.gz", "Normal/b.nii", "c.nii.gz", ".hidden/x.nii.gz", "ground_truth/d.nii.gz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(volume, root / rel)
    write_nifti(volume, root / "c_seg.nii.gz")
    (root / "picture.png").write_bytes(b"\x89PNG")
    found = discover(root)
    assert [(s.id, s.patient, s.label) for s in found.studies] == [
        ("c", "c", None), ("COVID/a", "COVID/a", "covid"), ("Normal/b", "Normal/b", "normal")]
    assert any("picture.png" in n for n in found.notes) and any("ground_truth" in n for n in found.notes)
    assert any("c_seg.nii.gz (named like a segmentation mask" in n for n in found.notes)

    (root / "labels.csv").write_text("study,label\nc,covid\nCOVID/a,normal\n")
    studies = discover_studies(root)
    assert {s.id: s.label for s in studies} == {"c": "covid", "COVID/a": "normal", "Normal/b": "normal"}

    other = tmp_path / "other.csv"
    other.write_text("case,class\nc,positive\n")
    studies = discover_studies(root, labels=other)
    assert {s.id: s.label for s in studies}["c"] == "covid"


def test_labels_csv_errors(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_nifti(CTVolume(hu=np.zeros((2, 3, 4), dtype=np.int16), spacing_mm=(1, 1, 1)), root / "case_0001.nii.gz")
    (root / "labels.csv").write_text("study,label\ncase_0001,covid\ncase_0002,normal\n")
    with pytest.raises(CTSynthError, match=r"labels.csv: names 1 studies that are not in the data: case_0002"):
        discover(root)
    (root / "labels.csv").write_text("study,label\ncase_0001,maybe\n")
    with pytest.raises(CTSynthError, match=r"unknown label 'maybe'.*--label-map"):
        discover(root)
    assert discover(root, label_map="maybe=covid").studies[0].label == "covid"


def test_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CTSynthError, match=r"empty: no CT studies found under this folder.*fix:"):
        discover(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(CTSynthError, match=r"no CT studies found.*notes.pdf"):
        discover(tmp_path / "docs")
    with pytest.raises(CTSynthError, match="no such file or folder"):
        discover(tmp_path / "nowhere")


def test_read_study_dispatch(tmp_path: Path) -> None:
    root = _covid_ctset(tmp_path / "ds")
    volume = read_study(root / "patient3" / "SR_4")
    assert volume.shape == (3, 6, 7) and volume.spacing_mm == (2.0, 0.6, 0.6)  # metadata found 2 levels up
    with pytest.raises(CTSynthError, match=r"patient1: holds 2 studies \(SR_2, SR_4\), not one"):
        read_study(root / "patient1")
    path = write_nifti(CTVolume(hu=np.ones((2, 3, 4), dtype=np.int16), spacing_mm=(2, 1, 1)), tmp_path / "v.nii.gz")
    assert read_study(path).shape == (2, 3, 4)
    with pytest.raises(CTSynthError, match="single TIFF slice"):
        read_study(root / "patient1" / "SR_2" / "IM00001.tif")


def test_dicom_series_mixed_with_nifti_and_junk(tmp_path: Path) -> None:
    import shutil

    import pydicom

    from ctsynth.io.dicom_writer import write_dicom_series
    from ctsynth.io.identity import token

    rng = np.random.default_rng(5)
    volume = CTVolume(hu=rng.integers(-1024, 1500, (4, 12, 10)).astype(np.float32), spacing_mm=(2.5, 0.75, 0.8),
                      origin_mm=(-50.0, -60.0, 100.0))
    root = tmp_path / "export"
    write_dicom_series(volume, root / "COVID" / "p1" / "series")
    two = root / "normal" / "p2"
    two.mkdir(parents=True)
    study_uid = pydicom.uid.generate_uid()
    for name in ("a", "b"):  # two series of one study in one folder, files without extension
        write_dicom_series(volume, tmp_path / name, series_description=f"SYN {name}")
        for f in (tmp_path / name).iterdir():
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.PatientID = study_uid, "P2"
            ds.save_as(two / f"{name}{f.stem}")
    write_nifti(volume, root / "p3.nii.gz")
    (root / "junk.bin").write_bytes(b"not dicom")
    (root / "labels.csv").write_text("study,label\np3,covid\n")
    found = discover(root)
    one = pydicom.dcmread(next((root / "COVID" / "p1" / "series").iterdir()))
    # A study that has its folder to itself is named by it; the patient is always the PatientID's token.
    assert [(s.id, s.patient, s.kind, s.label) for s in found.studies] == [
        ("COVID/p1/series", token("pat", one.PatientID), "dicom", "covid"),
        ("normal/p2", token("pat", "P2"), "dicom", "normal"),
        ("p3", "p3", "nifti", "covid"),
    ]
    assert found.notes == ["skipped 1 file(s) that are not CT images ctsynth reads: junk.bin"]
    p2 = next(s for s in found.studies if s.patient == token("pat", "P2"))
    # One study, two equal series: one is used, the other set aside with the reason.
    assert p2.series in {"SYNTHETIC SYN a", "SYNTHETIC SYN b"}
    assert [c["used"] for c in p2.options["choices"]].count(True) == 1
    assert any(n.startswith("set aside series 1 'SYNTHETIC SYN") for n in p2.notes)
    for study in found.studies:
        back = study.read()
        np.testing.assert_array_equal(back.hu, volume.hu)
        assert back.spacing_mm == pytest.approx(volume.spacing_mm) and back.label == study.label
    other = next(c for c in p2.options["choices"] if not c["used"])["description"]
    uid = pydicom.dcmread(next(f for f in two.iterdir() if f.name.startswith(other[-1]))).SeriesInstanceUID
    assert read_study(two, series_uid=uid).shape == (4, 12, 10)
    assert read_study(two).shape == (4, 12, 10)  # the chosen series of the one study
    write_dicom_series(volume, two / "another_study")
    with pytest.raises(CTSynthError, match="holds 2 studies"):
        read_study(two)


def test_top_level_exports() -> None:
    import ctsynth
    import ctsynth.io

    assert ctsynth.read_study is ctsynth.io.read_study and ctsynth.write_volume is ctsynth.io.write_volume
    with pytest.raises(AttributeError):
        ctsynth.no_such_name  # noqa: B018


@pytest.mark.parametrize("layout, patients", [
    (["a.nii.gz", "b.nii.gz"], ["a", "b"]),
    (["COVID/1.nii.gz", "normal/1.nii.gz"], ["COVID/1", "normal/1"]),
    (["p001/ct.nii.gz", "p001/ct_followup.nii.gz", "p002/ct.nii.gz"], ["p001", "p001", "p002"]),
    (["studies/CT-0/study_0001.nii.gz", "studies/CT-1/study_0002.nii.gz"], ["studies/CT-0/study_0001",
                                                                            "studies/CT-1/study_0002"]),
    (["train/covid/x.nii.gz", "test/normal/y.nii.gz"], ["train/covid/x", "test/normal/y"]),
    (["export/p1/ct.nii.gz", "export/p2/ct.nii.gz"], ["p1", "p2"]),
    (["sub-01/ses-1/sub-01_ct.nii.gz", "sub-02/ses-1/sub-02_ct.nii.gz"], ["sub-01", "sub-02"]),
])
def test_patient_grouping(tmp_path: Path, layout: list[str], patients: list[str]) -> None:
    volume = CTVolume(hu=np.zeros((2, 2, 2), dtype=np.int16), spacing_mm=(1, 1, 1))
    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(volume, tmp_path / rel)
    studies = discover_studies(tmp_path, label_map="CT-0=normal,CT-1=covid")
    by_id = {s.id: s.patient for s in studies}
    assert [by_id[rel.replace(".nii.gz", "")] for rel in layout] == patients

"""Hospital exports (issue #14): studies and patients from the DICOM headers whatever the file layout, label
sheets keyed by patient / StudyInstanceUID / AccessionNumber, one series per study by stated rules, and an
unreadable file named in the problem line. Known answers on constructed series."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctsynth.cli import main
from ctsynth.errors import CTSynthError
from ctsynth.io.dicom_select import SeriesRules, kernel_class, parse_series_option
from ctsynth.io.discover import discover
from ctsynth.io.identity import token
from ctsynth.split import patient_split
from test_dicom_support import synthetic_volume, write_series


def add_series(dest: Path, volume, *, study: str, patient: str, number: int = 2, description: str = "AXIAL",
               kernel: str = "STANDARD", thickness: float | None = None, image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
               accession: str = "", names: random.Random | None = None, tmp: Path | None = None) -> list[Path]:
    """Write ``volume`` as one series of study ``study`` / patient ``patient`` into ``dest`` (random file names
    when ``names`` is given, as a flat PACS dump has them); returns the files in slice order."""
    staging = (tmp or dest.parent) / f".staging-{random.random():.12f}"
    files = write_series(volume, staging)
    dest.mkdir(parents=True, exist_ok=True)
    series_uid = pydicom.uid.generate_uid()
    out = []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.PatientID, ds.SeriesInstanceUID = study, patient, series_uid
        ds.SeriesNumber, ds.SeriesDescription, ds.ConvolutionKernel = number, description, kernel
        ds.ImageType = image_type.split("\\")
        ds.AccessionNumber = accession
        if thickness is not None:
            ds.SliceThickness = thickness
        name = f"{names.getrandbits(48):012x}" if names else f"S{number}_{k:04d}.dcm"
        ds.save_as(dest / name, enforce_file_format=True)
        out.append(dest / name)
    shutil.rmtree(staging)
    return out


def _coronal(volume):
    """The same anatomy stored as coronal slices (ImageOrientationPatient 1\\0\\0\\0\\0\\-1)."""
    from ctsynth.volume import CTVolume

    hu = np.ascontiguousarray(np.transpose(volume.hu, (1, 0, 2))[:, ::-1, :])  # (y, -z, x)
    sz, sy, sx = volume.spacing_mm
    top = np.array(volume.origin_mm) + np.array([0, 0, sz * (volume.shape[0] - 1)])
    direction = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # columns: x -> L, y -> I, z -> P
    return CTVolume(hu=hu, spacing_mm=(sy, sz, sx), origin_mm=tuple(top), direction=direction)


def _sagittal(volume):
    """The same anatomy stored as sagittal slices (ImageOrientationPatient 0\\1\\0\\0\\0\\-1, slices right-ward)."""
    from ctsynth.volume import CTVolume

    # array (x', y', z') with x' -> P (volume y), y' -> I (volume -z), z' -> R (volume -x)
    hu = np.ascontiguousarray(np.transpose(volume.hu, (2, 0, 1))[::-1, ::-1, :])
    sz, sy, sx = volume.spacing_mm
    nz, ny, nx = volume.shape
    corner = np.array(volume.origin_mm) + np.array([sx * (nx - 1), 0, sz * (nz - 1)])
    direction = np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]])
    return CTVolume(hu=hu, spacing_mm=(sx, sz, sy), origin_mm=tuple(corner), direction=direction)


# --- 1. identity from the headers -------------------------------------------------------------------------


def test_flat_dump_groups_series_by_study_and_patient_whatever_the_names(tmp_path: Path) -> None:
    names = random.Random(1)
    flat = tmp_path / "dump"
    vol = synthetic_volume(shape=(5, 16, 16))
    add_series(flat, vol, study="1.2.3.1", patient="MRN-0001", number=2, names=names)
    add_series(flat, vol, study="1.2.3.1", patient="MRN-0001", number=3, kernel="BONE", names=names)
    add_series(flat, vol, study="1.2.3.2", patient="MRN-0001", number=2, names=names)  # follow-up
    add_series(flat, vol, study="1.2.3.3", patient="MRN-0002", number=2, names=names)
    found = discover(flat)
    rows = sorted((s.id, s.patient) for s in found.studies)
    assert rows == sorted([(token("std", "1.2.3.1"), token("pat", "MRN-0001")),
                           (token("std", "1.2.3.2"), token("pat", "MRN-0001")),
                           (token("std", "1.2.3.3"), token("pat", "MRN-0002"))])
    # The one split groups by that patient: both studies of MRN-0001 land on one side, whatever the seed.
    for seed in range(6):
        sides = patient_split(((s.id, s.patient, "covid") for s in found.studies), 0.5, seed=seed)
        assert sides[token("std", "1.2.3.1")] == sides[token("std", "1.2.3.2")]


def test_one_study_split_over_folders_is_one_study(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(5, 16, 16))
    add_series(tmp_path / "export" / "a" / "x", vol, study="1.2.9", patient="P9", number=2)
    add_series(tmp_path / "export" / "b", vol, study="1.2.9", patient="P9", number=4, kernel="LUNG")
    add_series(tmp_path / "export" / "c", vol, study="1.2.10", patient="P9", number=2)
    found = discover(tmp_path / "export")
    assert len(found.studies) == 2 and {s.patient for s in found.studies} == {token("pat", "P9")}
    first = next(s for s in found.studies if s.identity().study_uid == "1.2.9")
    assert first.series == "AXIAL" and any("LUNG" in n for n in first.notes)


def test_tokens_are_salted_and_stable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import hashlib

    from ctsynth.io import identity

    a = token("pat", "MRN-0001")
    assert a == token("pat", "MRN-0001") and a.startswith("pat-") and len(a) == 16
    assert a[4:] not in hashlib.sha256(b"MRN-0001").hexdigest() + hashlib.sha256(b"pat:MRN-0001").hexdigest()
    monkeypatch.setenv(identity.SALT_ENV, "another secret")
    assert token("pat", "MRN-0001") != a
    # Without the variable: a random salt created once in the config folder, then reused.
    monkeypatch.delenv(identity.SALT_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    first = token("pat", "MRN-0001")
    identity._salt_cache.clear()
    assert token("pat", "MRN-0001") == first and (tmp_path / "cfg" / "ctsynth" / "id_salt").stat().st_size == 32
    assert repr(identity.DicomIdentity("MRN-0001", "1.2.3")).count("MRN") == 0


# --- 2. labels keyed by patient, StudyInstanceUID or AccessionNumber --------------------------------------


@pytest.mark.parametrize("header, rows", [
    ("patient,label", ["MRN-0001,covid", "MRN-0002,normal"]),
    ("PatientID,diagnosis", ["MRN-0001,COVID-19", "MRN-0002,negative"]),
    ("StudyInstanceUID,label", ["1.2.3.1,covid", "1.2.3.2,covid", "1.2.3.3,normal"]),
    ("AccessionNumber,label", ["A1,covid", "A2,covid", "A3,normal"]),
])
def test_labels_sheet_keyed_by_what_its_header_says(tmp_path: Path, header: str, rows: list[str]) -> None:
    flat = tmp_path / "dump"
    vol = synthetic_volume(shape=(4, 12, 12))
    for study, patient, acc in (("1.2.3.1", "MRN-0001", "A1"), ("1.2.3.2", "MRN-0001", "A2"),
                                ("1.2.3.3", "MRN-0002", "A3")):
        add_series(flat, vol, study=study, patient=patient, accession=acc, names=random.Random(study))
    (tmp_path / "sheet.csv").write_text("\n".join([header, *rows]) + "\n")
    found = discover(flat, labels=tmp_path / "sheet.csv")
    labels = {s.identity().study_uid: s.label for s in found.studies}
    assert labels == {"1.2.3.1": "covid", "1.2.3.2": "covid", "1.2.3.3": "normal"}


def test_labels_sheet_naming_an_absent_study_uid_is_one_line(tmp_path: Path) -> None:
    add_series(tmp_path / "d", synthetic_volume(shape=(4, 12, 12)), study="1.2.3.1", patient="P1")
    (tmp_path / "sheet.csv").write_text("StudyInstanceUID,label\n1.2.3.1,covid\n9.9.9,normal\n")
    with pytest.raises(CTSynthError, match=r"names 1 StudyInstanceUIDs that are not in the data: 9.9.9"):
        discover(tmp_path / "d", labels=tmp_path / "sheet.csv")


# --- 3. series selection ------------------------------------------------------------------------------------


def _hospital_study(root: Path) -> dict[str, list[Path]]:
    """One study as a PACS sends it: routine soft-tissue 1.25 mm, thin bone, thick 5 mm, a soft 1 mm series
    with a slice missing, a derived axial MIP, a coronal reformat and a scout."""
    vol = synthetic_volume(shape=(8, 16, 16), spacing=(1.25, 0.7, 0.7))
    common = dict(study="1.2.840.1", patient="P1", names=random.Random(7))
    files = {
        "routine": add_series(root, vol, number=2, description="ROUTINE CHEST", thickness=1.25, **common),
        "bone": add_series(root, synthetic_volume(shape=(16, 16, 16), spacing=(0.625, 0.7, 0.7)), number=3,
                           description="THIN BONE", kernel="BONEPLUS", thickness=0.625, **common),
        "thick": add_series(root, synthetic_volume(shape=(3, 16, 16), spacing=(5.0, 0.7, 0.7)), number=4,
                            description="5MM", thickness=5.0, **common),
        "gap": add_series(root, synthetic_volume(shape=(9, 16, 16), spacing=(1.0, 0.7, 0.7)), number=5,
                          description="SOFT 1MM", kernel="SOFT", thickness=1.0, **common),
        "mip": add_series(root, vol, number=6, description="AX MIP", image_type="DERIVED\\SECONDARY\\AXIAL\\MIP",
                          thickness=1.25, **common),
        "minip": add_series(root, vol, number=7, description="AX MinIP 5mm", image_type="DERIVED\\SECONDARY\\AXIAL",
                            thickness=1.25, **common),
        "coronal": add_series(root, _coronal(vol), number=604, description="COR 3X3",
                              image_type="DERIVED\\SECONDARY\\REFORMATTED", thickness=3.0, **common),
        "scout": add_series(root, synthetic_volume(shape=(1, 16, 16)), number=1, description="SCOUT",
                            image_type="ORIGINAL\\PRIMARY\\LOCALIZER", **common),
    }
    files["gap"][4].unlink()
    return files


def test_default_rules_pick_the_routine_axial_series_and_say_why_not_the_others(tmp_path: Path) -> None:
    _hospital_study(tmp_path / "dump")
    (study,) = discover(tmp_path / "dump").studies
    assert study.series == "ROUTINE CHEST"
    why = {c["description"]: c["why_not"] for c in study.options["choices"]}
    assert why["ROUTINE CHEST"] is None
    assert why["THIN BONE"].startswith("a bone or lung (sharp) kernel (BONEPLUS)")
    assert why["5MM"] == "slice thickness 5 mm is outside 1-3 mm"
    assert why["SOFT 1MM"].startswith("incomplete: 1 slice(s) missing")
    assert why["AX MIP"].startswith("projection images") and why["AX MinIP 5mm"].startswith("projection images")
    assert why["COR 3X3"].startswith("coronal reformat")
    assert why["SCOUT"] == "localizer (scout) image"
    assert len([n for n in study.notes if n.startswith("set aside ")]) == 7
    assert study.read().shape == (8, 16, 16)


def test_series_option_chooses_otherwise(tmp_path: Path) -> None:
    _hospital_study(tmp_path / "dump")
    axial = discover(tmp_path / "dump", series="axial").studies
    assert sorted(s.series for s in axial) == ["5MM", "ROUTINE CHEST", "SOFT 1MM", "THIN BONE"]
    assert sorted(s.id.rsplit("_s", 1)[1] for s in axial) == ["2", "3", "4", "5"]
    every = discover(tmp_path / "dump", series="all").studies
    assert "COR 3X3" in {s.series for s in every} and "AX MIP" not in {s.series for s in every}
    (bone,) = discover(tmp_path / "dump", series="*bone*").studies
    assert bone.series == "THIN BONE"
    uid = bone.series_uid
    assert [s.series for s in discover(tmp_path / "dump", series=uid).studies] == ["THIN BONE"]
    # inspect shows the series only as a token; that token chooses it too (also for convert / read_study).
    assert [s.series for s in discover(tmp_path / "dump", series=token("ser", uid)).studies] == ["THIN BONE"]
    from ctsynth.io.read import read_study

    assert read_study(tmp_path / "dump", series_uid=token("ser", uid)).shape == (16, 16, 16)
    assert parse_series_option("1.2.3.4").mode == "uid" and parse_series_option(None) == SeriesRules()
    with pytest.raises(CTSynthError, match="not increasing"):
        SeriesRules(thickness_mm=(3.0, 1.0))


def test_thinnest_within_range_wins_and_soft_beats_sharp(tmp_path: Path) -> None:
    common = dict(study="1.2.5", patient="P5")
    add_series(tmp_path / "d", synthetic_volume(shape=(4, 12, 12), spacing=(2.0, 0.7, 0.7)), number=7,
               description="TWO", thickness=2.0, **common)
    add_series(tmp_path / "d", synthetic_volume(shape=(6, 12, 12), spacing=(1.5, 0.7, 0.7)), number=8,
               description="ONE AND A HALF", kernel="B31f", thickness=1.5, **common)
    add_series(tmp_path / "d", synthetic_volume(shape=(8, 12, 12), spacing=(1.0, 0.7, 0.7)), number=9,
               description="ONE SHARP", kernel="B70f", thickness=1.0, **common)
    (study,) = discover(tmp_path / "d").studies
    assert study.series == "ONE AND A HALF"
    why = {c["description"]: c["why_not"] for c in study.options["choices"]}
    assert why["TWO"] == "thicker slices (2 mm) than the series used (1.5 mm)"


@pytest.mark.parametrize("kernel, description, expected", [
    ("STANDARD", "", "soft"), ("SOFT", "", "soft"), ("BONEPLUS", "", "sharp"), ("LUNG", "", "sharp"),
    ("CHEST", "", "sharp"), ("B30f", "", "soft"), ("Br40d", "", "soft"), ("I31f", "", "soft"),
    ("B70f", "", "sharp"), ("Bl57d", "", "sharp"), ("FC03", "", "soft"), ("FC52", "", "sharp"), ("B", "", "soft"),
    ("L", "", "sharp"), ("DETAIL", "", "medium"), ("", "ROUTINE CHEST", "medium"), ("", "CHEST LUNG 1MM", "sharp"),
    ("", "AX SOFT TISSUE", "soft"),
])
def test_kernel_classes(kernel: str, description: str, expected: str) -> None:
    assert kernel_class(kernel, description) == expected


def test_inspect_json_shows_the_choice_and_no_identifier(tmp_path: Path, capsys) -> None:
    _hospital_study(tmp_path / "dump")
    assert main(["inspect", str(tmp_path / "dump"), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    (row,) = report["studies"]
    assert row["series"] == "ROUTINE CHEST" and row["patient"] == token("pat", "P1")
    assert [c["used"] for c in row["series_choice"]].count(True) == 1
    assert "1.2.840.1" not in out and '"P1"' not in out


# --- 5. an unreadable file inside a series is named with the fix ------------------------------------------


@pytest.mark.parametrize("cut", [400, 1200])
def test_file_cut_short_is_named_not_reported_as_a_gap(tmp_path: Path, cut: int) -> None:
    files = add_series(tmp_path / "d", synthetic_volume(shape=(6, 16, 16)), study="1.2.6", patient="P6",
                       names=random.Random(3))
    middle = files[3]
    middle.write_bytes(middle.read_bytes()[:cut])  # 400: before the series UID; 1200: after it
    (study,) = discover(tmp_path / "d").studies
    with pytest.raises(CTSynthError) as err:
        study.read()
    text = str(err.value)
    assert text.startswith(str(middle)) and "cannot be read" in text
    assert "copy this file again from the archive" in text


def test_cut_short_file_in_the_preferred_series_is_named_when_it_is_set_aside(tmp_path: Path) -> None:
    names = random.Random(9)
    vol = synthetic_volume(shape=(6, 16, 16), spacing=(1.25, 0.7, 0.7))
    soft = add_series(tmp_path / "d", vol, study="1.2.11", patient="P11", number=2, description="SOFT",
                      thickness=1.25, names=names)
    add_series(tmp_path / "d", vol, study="1.2.11", patient="P11", number=3, description="BONE", kernel="BONE",
               thickness=1.25, names=names)
    soft[2].write_bytes(soft[2].read_bytes()[:400])  # cut before its series UID: found beside the gap
    (study,) = discover(tmp_path / "d").studies
    assert study.series == "BONE"
    why = {c["description"]: c["why_not"] for c in study.options["choices"]}
    assert why["SOFT"].startswith(f"incomplete: file {soft[2]} cannot be read")


# --- issue #15: a broken file is never dropped silently by read_study (convert, inspect, prepare) ---------------


def _four_slices(folder: Path) -> list[Path]:
    return write_series(synthetic_volume(shape=(4, 12, 10)), folder)


def _refused_by_read_study(folder: Path, broken: Path) -> str:
    from ctsynth.io.read import read_study

    with pytest.raises(CTSynthError) as err:
        read_study(folder)
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(broken)) and "cannot be read" in text, text
    assert "remove it if it does not belong to the series" in text and "--skip-unreadable" in text, text
    return text


@pytest.mark.parametrize("which", [2, 3])  # the 3rd file (a gap between readable slices), the last (no gap)
def test_read_study_names_a_file_cut_to_300_bytes(tmp_path: Path, which: int) -> None:
    files = _four_slices(tmp_path / "s")
    files[which].write_bytes(files[which].read_bytes()[:300])
    _refused_by_read_study(tmp_path / "s", files[which])


def test_skip_unreadable_reads_the_rest_with_a_note_naming_the_file(tmp_path: Path) -> None:
    from ctsynth.io.read import read_study

    files = _four_slices(tmp_path / "s")
    files[3].write_bytes(files[3].read_bytes()[:300])
    volume = read_study(tmp_path / "s", skip_unreadable=True)
    assert volume.shape[0] == 3
    assert any(files[3].name in n and n.startswith("skipped unreadable file") for n in volume.meta["notes"])


def test_skipping_a_file_in_the_middle_still_refuses_the_gap_naming_it(tmp_path: Path) -> None:
    from ctsynth.io.read import read_study

    files = _four_slices(tmp_path / "s")
    files[2].write_bytes(files[2].read_bytes()[:300])
    with pytest.raises(CTSynthError) as err:
        read_study(tmp_path / "s", skip_unreadable=True)
    assert "missing" in str(err.value) and files[2].name in str(err.value)


@pytest.mark.parametrize("cut", [0, 100])  # no 'DICM' marker left to tell: the name says DICOM
def test_a_file_cut_before_its_marker_is_broken_not_junk(tmp_path: Path, cut: int) -> None:
    files = add_series(tmp_path / "d", synthetic_volume(shape=(4, 12, 10)), study="1.2.15", patient="P15",
                       names=random.Random(15))  # extension-less names, as a flat PACS dump has them
    files[3].write_bytes(files[3].read_bytes()[:cut])
    _refused_by_read_study(tmp_path / "d", files[3])
    named = tmp_path / "s"
    dcm = _four_slices(named)
    dcm[1].write_bytes(dcm[1].read_bytes()[:cut])
    _refused_by_read_study(named, dcm[1])


def test_dataset_files_beside_the_series_are_still_ignored(tmp_path: Path) -> None:
    from ctsynth.io.read import read_study

    files = _four_slices(tmp_path / "s")
    for name in ("README.txt", "README", "LICENSE", "info.json", "thumb.png"):
        (tmp_path / "s" / name).write_text("not an image\n")
    (tmp_path / "s" / "DICOMDIR").write_bytes(b"\0" * 200)
    volume = read_study(tmp_path / "s")
    assert volume.shape[0] == len(files)


def test_inspect_and_prepare_report_the_broken_study_and_go_on(tmp_path: Path, capsys) -> None:
    from ctsynth.config import load_config
    from ctsynth.preprocess.prepare import prepare_cache

    good = _four_slices(tmp_path / "data" / "good")
    bad = _four_slices(tmp_path / "data" / "bad")
    bad[3].write_bytes(bad[3].read_bytes()[:300])
    (tmp_path / "data" / "labels.csv").write_text("study,label\ngood,covid\nbad,normal\n")
    assert main(["inspect", str(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert f"bad: problem: {bad[3]}" in out and "good" in out
    manifest = prepare_cache(tmp_path / "data", load_config("tiny"), tmp_path / "prep", progress=False)
    assert [e["id"] for e in manifest.studies] == ["good"] and len(good) == 4
    assert manifest.skipped[0]["id"] == "bad" and bad[3].name in manifest.skipped[0]["reason"]
    assert main(["inspect", str(tmp_path / "data"), "--skip-unreadable"]) == 0
    assert f"bad: note: skipped unreadable file {bad[3].name}" in capsys.readouterr().out
    # cached without the broken file (as asked), then prepared again without the option: refused, not kept
    skipped = prepare_cache(tmp_path / "data", load_config("tiny"), tmp_path / "prep2", progress=False,
                            skip_unreadable=True)
    assert sorted(e["id"] for e in skipped.studies) == ["bad", "good"]
    again = prepare_cache(tmp_path / "data", load_config("tiny"), tmp_path / "prep2", progress=False)
    assert [e["id"] for e in again.studies] == ["good"] and bad[3].name in again.skipped[0]["reason"]


def test_convert_prints_the_note_of_a_skipped_file(tmp_path: Path, capsys) -> None:
    files = _four_slices(tmp_path / "s")
    files[0].write_bytes(files[0].read_bytes()[:300])
    assert main(["convert", str(tmp_path / "s"), str(tmp_path / "ct.nii.gz"), "--skip-unreadable"]) == 0
    assert f"ctsynth convert: note: skipped unreadable file {files[0].name}" in capsys.readouterr().err

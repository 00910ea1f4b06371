"""`ctsynth inspect` and `ctsynth convert`: output, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ctsynth.cli import main
from ctsynth.io import read_study, write_nifti
from ctsynth.volume import CTVolume


def _volume(seed: int = 0, shape=(4, 12, 10)) -> CTVolume:
    rng = np.random.default_rng(seed)
    return CTVolume(hu=rng.integers(-1024, 1500, shape).astype(np.float32), spacing_mm=(2.5, 0.75, 0.8),
                    origin_mm=(-50.0, -60.0, 100.0))


def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"ctsynth {command}: error:")]
    assert len(lines) == 1, err
    assert "(fix:" in lines[0]
    return lines[0]


def test_inspect_table_and_json(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_nifti(_volume(0), root / "case_0001.nii.gz")
    write_nifti(_volume(1), root / "case_0002.nii.gz")
    (root / "labels.csv").write_text("study,label\ncase_0001,covid\ncase_0002,normal\n")
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "case_0001  nifti" in out and "4x12x10" in out and "2.5x0.75x0.8" in out
    assert "2 studies from 2 patients: 1 covid, 1 normal, 0 unlabelled; 0 could not be read" in out

    assert main(["inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    first = report["studies"][0]
    volume = _volume(0)
    assert first["id"] == "case_0001" and first["label"] == "covid" and first["shape"] == [4, 12, 10]
    assert first["spacing_mm"] == [2.5, 0.75, 0.8]
    assert first["hu"]["min"] == volume.hu.min() and first["hu"]["max"] == volume.hu.max()
    assert first["hu"]["p1"] == pytest.approx(np.percentile(volume.hu, 1))
    assert report["labels_file"].endswith("labels.csv")


def test_inspect_lists_unreadable_study_and_exits_1(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    (root / "patient1" / "SR_2").mkdir(parents=True)
    for k in (1, 2):
        tifffile.imwrite(root / "patient1" / "SR_2" / f"IM{k:05d}.tif", np.zeros((5, 5), dtype=np.uint16))
    (root / "patient1" / "SR_2" / "IM00003.tif").write_bytes(b"II*\0broken")
    write_nifti(_volume(0), root / "good.nii.gz")
    assert main(["inspect", str(root)]) == 1
    captured = capsys.readouterr()
    assert "patient1/SR_2: problem:" in captured.out and "IM00003.tif" in captured.out
    assert "FAILED" in captured.out and "good" in captured.out
    assert "1 of 2 studies could not be read" in captured.err
    assert "spacing unknown" not in captured.out  # the broken study never got that far


def test_inspect_default_spacing_warning_is_printed(tmp_path: Path, capsys) -> None:
    root = tmp_path / "p"
    root.mkdir()
    for k in (1, 2):
        tifffile.imwrite(root / f"IM{k}.tif", np.zeros((5, 5), dtype=np.uint16))
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "note: spacing unknown: assumed 5 x 0.7 x 0.7 mm" in out
    assert main(["inspect", str(root), "--spacing", "3,0.5,0.5"]) == 0
    assert "3x0.5x0.5" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "missing_studies", "unknown_label", "bad_label_map"])
def test_inspect_bad_input_exit_2_one_line(tmp_path: Path, capsys, case: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    args = ["inspect", str(root)]
    if case != "empty":
        write_nifti(_volume(0), root / "case_0001.nii.gz")
    if case == "missing_studies":
        (root / "labels.csv").write_text("study,label\ncase_0001,covid\ncase_0042,normal\n")
    if case == "unknown_label":
        (root / "labels.csv").write_text("study,label\ncase_0001,unsure\n")
    if case == "bad_label_map":
        args += ["--label-map", "yes"]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err, "inspect")
    expected = {"empty": "no CT studies found", "missing_studies": "case_0042", "unknown_label": "'unsure'",
                "bad_label_map": "--label-map"}[case]
    assert expected in line


def test_convert_nifti_tiff_round_trip(tmp_path: Path, capsys) -> None:
    volume = _volume(2)
    source = write_nifti(volume, tmp_path / "in.nii.gz")
    assert main(["convert", str(source), str(tmp_path / "slices"), "--format", "tiff"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "slices")
    assert main(["convert", str(tmp_path / "slices"), str(tmp_path / "back")]) == 2
    assert "--format" in _one_error_line(capsys.readouterr().err, "convert")
    assert main(["convert", str(tmp_path / "slices"), str(tmp_path / "back"), "--format", "nifti"]) == 0
    back = read_study(tmp_path / "back.nii.gz")
    np.testing.assert_array_equal(back.hu, volume.hu)
    assert back.spacing_mm == volume.spacing_mm and back.origin_mm == volume.origin_mm


def test_convert_refuses_existing_and_unwritable(tmp_path: Path, capsys) -> None:
    source = write_nifti(_volume(0), tmp_path / "in.nii.gz")
    existing = write_nifti(_volume(1), tmp_path / "out.nii.gz")
    before = existing.read_bytes()
    assert main(["convert", str(source), str(existing)]) == 2
    assert "already exists" in _one_error_line(capsys.readouterr().err, "convert")
    assert existing.read_bytes() == before
    assert main(["convert", str(source), str(existing), "--overwrite"]) == 0
    assert existing.read_bytes() != before
    capsys.readouterr()

    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    for args in (["convert", str(source), str(blocker / "x.nii.gz")],
                 ["convert", str(source), str(blocker / "sub" / "series"), "--format", "tiff"]):
        assert main(args) == 2
        assert "blocker" in _one_error_line(capsys.readouterr().err, "convert")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "in.nii.gz", "out.nii.gz"]


def test_convert_missing_input(tmp_path: Path, capsys) -> None:
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "o.nii.gz")]) == 2
    assert "no such file or folder" in _one_error_line(capsys.readouterr().err, "convert")


def test_convert_to_dicom_and_back(tmp_path: Path, capsys) -> None:
    volume = _volume(4)
    source = write_nifti(volume, tmp_path / "in.nii.gz")
    assert main(["convert", str(source), str(tmp_path / "dcm"), "--format", "dicom"]) == 0
    assert main(["convert", str(tmp_path / "dcm"), str(tmp_path / "back.nii.gz")]) == 0
    back = read_study(tmp_path / "back.nii.gz")
    np.testing.assert_array_equal(back.hu, volume.hu)
    assert back.spacing_mm == pytest.approx(volume.spacing_mm, abs=1e-5)
    assert back.origin_mm == pytest.approx(volume.origin_mm, abs=1e-4)
    assert main(["convert", str(source), str(tmp_path / "dcm"), "--format", "dicom"]) == 2
    assert "already exists" in _one_error_line(capsys.readouterr().err, "convert")


def test_inspect_real_nifti_folder_and_single_file(real_ct: Path, capsys) -> None:
    import nibabel as nib

    folder = real_ct / "totalseg_nifti"
    assert main(["inspect", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    by_id = {row["id"]: row for row in report["studies"]}
    assert set(by_id) == {"aorta_ct_cropped", "example_ct", "example_ct_sm", "pulmonary_ct_cropped"}
    for study_id, row in by_id.items():
        header = nib.load(folder / f"{study_id}.nii.gz").header
        assert row["shape"] == list(header.get_data_shape()[::-1])
        assert row["spacing_mm"] == pytest.approx([float(z) for z in header.get_zooms()[::-1]])
        assert row["hu"]["min"] < -900 and row["problem"] is None
    assert by_id["aorta_ct_cropped"]["spacing_mm"] == [1.5, 1.5, 1.5]

    assert main(["inspect", str(folder / "example_ct_sm.nii.gz")]) == 0
    assert "30x101x122" in capsys.readouterr().out


def test_convert_unreadable_tiff_leaves_nothing(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "SR_2"
    folder.mkdir()
    tifffile.imwrite(folder / "IM00001.tif", np.zeros((5, 5), dtype=np.uint16))
    (folder / "IM00002.tif").write_bytes(b"II*\0broken")
    assert main(["convert", str(folder), str(tmp_path / "out.nii.gz")]) == 2
    line = _one_error_line(capsys.readouterr().err, "convert")
    assert "IM00002.tif: unreadable TIFF" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SR_2"]

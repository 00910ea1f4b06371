"""DICOM problems through the command line: one line on stderr naming the file and the fix, exit 2, no output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctsynth.cli import main
from ctsynth.io.dicom_reader import find_dicom_series, read_dicom_series
from test_dicom_support import synthetic_volume, write_series


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "(fix: " in err[0]
    return err[0]


def test_convert_two_series_then_pick_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_series(synthetic_volume(shape=(3, 8, 8), seed=1), tmp_path / "in" / "a")
    b = synthetic_volume(shape=(4, 8, 8), seed=2)
    write_series(b, tmp_path / "in" / "b")
    line = _one_line_error(capsys, ["convert", str(tmp_path / "in"), str(tmp_path / "out.nii.gz")])
    assert str(tmp_path / "in") in line and "--series" in line
    assert not (tmp_path / "out.nii.gz").exists()
    uid = pydicom.dcmread(tmp_path / "in" / "b" / "IM00001.dcm").SeriesInstanceUID
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out"), "--format", "dicom", "--series", uid]) == 0
    back = read_dicom_series(tmp_path / "out")
    assert np.array_equal(back.hu, np.rint(b.hu))
    (ref,), _ = find_dicom_series(tmp_path / "out")
    assert ref.uid != uid  # a fresh series, not a copy of the input's identity


def test_convert_missing_slice_and_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = write_series(synthetic_volume(shape=(5, 8, 8)), tmp_path / "in")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _one_line_error(capsys, ["convert", str(tmp_path / "in"), str(blocker / "out"), "--format", "dicom"])
    assert str(blocker) in line
    files[2].unlink()
    line = _one_line_error(capsys, ["convert", str(tmp_path / "in"), str(tmp_path / "out"), "--format", "dicom"])
    assert str(tmp_path / "in") in line and "missing" in line
    assert not (tmp_path / "out").exists()

"""The header pass reads only the needed elements (ctsynth.io.dicom_tags) and must give exactly the headers a
full ``dcmread`` gives, on our own files, every real CT file in the shared test data and edited quirks."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from ctsynth.io import dicom_headers
from ctsynth.io.dicom_headers import BrokenDicomError, NotDicomError, read_slice_headers
from ctsynth.io.dicom_tags import read_needed_elements
from test_dicom_support import edit, synthetic_volume, write_series

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _both(path: Path, monkeypatch: pytest.MonkeyPatch):
    def parse():
        try:
            return read_slice_headers(path)
        except (NotDicomError, BrokenDicomError) as exc:
            return type(exc).__name__

    fast = parse()
    monkeypatch.setattr(dicom_headers, "FAST_HEADERS", False)
    full = parse()
    monkeypatch.setattr(dicom_headers, "FAST_HEADERS", True)
    return fast, full


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return len(a) == len(b) and all(repr(x) == repr(y) for x, y in zip(a, b))


def test_needed_elements_give_the_same_headers_as_a_full_parse(tmp_path: Path, monkeypatch) -> None:
    files = write_series(synthetic_volume(shape=(3, 16, 16)), tmp_path / "s")

    def implicit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.PatientID, ds.AccessionNumber, ds.ConvolutionKernel = "P\u00e9rez", "A1", "B30f"

    edit(files[1], implicit)
    edit(files[2], lambda ds: ds.compress(pydicom.uid.RLELossless))
    assert read_needed_elements(files[0]) is not None  # the fast path is taken
    for f in files:
        fast, full = _both(f, monkeypatch)
        assert _same(fast, full), f


def test_real_files_same_headers_either_way(monkeypatch) -> None:
    if not REAL.is_dir():
        pytest.skip(f"shared real CT data not found at {REAL}")
    files = [p for p in sorted(REAL.rglob("*")) if p.is_file() and p.suffix.lower() not in (".md", ".csv", ".txt", ".gz", ".nii")]
    files = files[:: max(1, len(files) // 120)]  # every folder, about 120 files
    assert files
    for f in files:
        fast, full = _both(f, monkeypatch)
        assert _same(fast, full), f


def test_cut_short_header_is_broken_either_way(tmp_path: Path, monkeypatch) -> None:
    files = write_series(synthetic_volume(shape=(2, 16, 16)), tmp_path / "s")
    data = files[0].read_bytes()
    for cut in (140, 400, 900):
        files[0].write_bytes(data[:cut])
        fast, full = _both(files[0], monkeypatch)
        assert fast == full == "BrokenDicomError"


def test_header_pass_in_worker_processes_finds_the_same(tmp_path: Path, monkeypatch) -> None:
    from ctsynth.io import dicom_series

    for k in range(3):
        write_series(synthetic_volume(shape=(4, 12, 12), seed=k), tmp_path / f"s{k}")
    (tmp_path / "s1" / "junk.txt").write_text("not dicom")
    monkeypatch.setattr(dicom_series, "header_workers", lambda n: 1)
    one = dicom_series.scan_dicom_tree(tmp_path)
    monkeypatch.setattr(dicom_series, "header_workers", lambda n: 2)
    two = dicom_series.scan_dicom_tree(tmp_path)
    assert [(r.uid, r.files) for r in one.series] == [(r.uid, r.files) for r in two.series]
    assert len(one.series) == 3 and one.notes == two.notes
    assert [repr(h) for r in one.series for h in r.headers] == [repr(h) for r in two.series for h in r.headers]

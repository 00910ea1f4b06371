"""Bad DICOM input: each case is one CTSynthError line naming the file or folder and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctsynth.errors import CTSynthError
from ctsynth.io.dicom_reader import find_dicom_series, read_dicom_series
from test_dicom_support import edit, synthetic_volume, write_series


def _error(source: Path, **kwargs) -> str:
    with pytest.raises(CTSynthError) as err:
        read_dicom_series(source, **kwargs)
    text = str(err.value)
    assert "\n" not in text and "(fix: " in text
    return text


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    text = _error(tmp_path / "empty")
    assert str(tmp_path / "empty") in text and "no DICOM files" in text


def test_folder_of_only_non_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    text = _error(tmp_path)
    assert "no DICOM files" in text and "notes.txt" in text


def test_non_dicom_files_mixed_in_are_noted_and_the_series_still_reads(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(3, 8, 8))
    write_series(vol, tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("export notes")
    (tmp_path / "s" / "._IM00001.dcm").write_bytes(bytes(4096))  # macOS resource-fork junk
    back = read_dicom_series(tmp_path / "s")
    assert np.array_equal(back.hu, np.rint(vol.hu))
    note = next(n for n in back.meta["notes"] if "non-DICOM" in n)
    assert "README.txt" in note and "._IM00001.dcm" in note


def test_truncated_pixel_data_names_the_file(tmp_path: Path) -> None:
    files = write_series(synthetic_volume(shape=(3, 16, 16)), tmp_path / "s")
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-100])
    text = _error(tmp_path / "s")
    assert str(files[1]) in text and "truncated" in text


def test_truncated_header_names_the_file(tmp_path: Path) -> None:
    files = write_series(synthetic_volume(shape=(3, 16, 16)), tmp_path / "s")
    data = files[2].read_bytes()
    files[2].write_bytes(data[:300])
    text = _error(tmp_path / "s")
    assert str(files[2]) in text and ("truncated" in text or "corrupt" in text)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_compressed_file_names_the_file(tmp_path: Path) -> None:
    files = write_series(synthetic_volume(shape=(3, 16, 16)), tmp_path / "s")
    for f in files:
        edit(f, lambda ds: ds.compress(pydicom.uid.RLELossless))
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) - 200])
    text = _error(tmp_path / "s")
    assert str(files[0]) in text


def test_two_series_in_one_folder_lists_them_and_the_fix(tmp_path: Path) -> None:
    write_series(synthetic_volume(shape=(3, 8, 8), seed=1), tmp_path / "x" / "a")
    write_series(synthetic_volume(shape=(4, 8, 8), seed=2), tmp_path / "x" / "b")
    refs, _ = find_dicom_series(tmp_path / "x")
    text = _error(tmp_path / "x")
    assert "2 CT series" in text and "--series" in text
    for ref in refs:
        assert ref.uid in text
    assert "no CT series with UID" in _error(tmp_path / "x", series_uid="1.2.3")


def test_missing_slice_is_refused_with_positions(tmp_path: Path) -> None:
    files = write_series(synthetic_volume(shape=(6, 8, 8), origin=(0.0, 0.0, 0.0)), tmp_path / "s")
    files[3].unlink()
    text = _error(tmp_path / "s")
    assert str(tmp_path / "s") in text and "1 slice(s) missing" in text
    assert "4.00 and 8.00 mm" in text and "IM00003.dcm" in text and "IM00005.dcm" in text


def test_duplicate_positions_with_different_pixels_are_refused(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(4, 8, 8))
    files = write_series(vol, tmp_path / "s")

    def other_pixels(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.PixelData = (np.rint(vol.hu[2]) + 5).astype(np.int16).tobytes()

    edit(files[2], other_pixels, tmp_path / "s" / "recon2.dcm")
    text = _error(tmp_path / "s")
    assert "share the slice position" in text and "recon2.dcm" in text and "IM00003.dcm" in text


def test_non_ct_modality_is_refused(tmp_path: Path) -> None:
    files = write_series(synthetic_volume(shape=(3, 8, 8)), tmp_path / "mr")
    for f in files:
        edit(f, lambda ds: (setattr(ds, "Modality", "MR"), setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.4")))
    refs, notes = find_dicom_series(tmp_path / "mr")
    assert refs == [] and any("modality MR" in n for n in notes)
    text = _error(tmp_path / "mr")
    assert "MR" in text and "CT only" in text
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert "not CT" in _error(tmp_path / "mr", series_uid=uid)


def test_binary_junk_that_starts_like_a_raw_dataset_is_not_dicom(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(3, 8, 8))
    write_series(vol, tmp_path / "s")
    (tmp_path / "s" / "junk.bin").write_bytes(b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 100" + bytes(range(256)) * 4)
    back = read_dicom_series(tmp_path / "s")
    assert np.array_equal(back.hu, np.rint(vol.hu))
    assert any("non-DICOM" in n and "junk.bin" in n for n in back.meta["notes"])


def test_dangling_links_and_fifos_are_ignored(tmp_path: Path) -> None:
    import os

    vol = synthetic_volume(shape=(3, 8, 8))
    write_series(vol, tmp_path / "s")
    (tmp_path / "s" / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    os.mkfifo(tmp_path / "s" / "pipe")
    assert np.array_equal(read_dicom_series(tmp_path / "s").hu, np.rint(vol.hu))

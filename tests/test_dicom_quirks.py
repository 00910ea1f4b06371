"""What real exports do to a series, made from synthetic volumes: naming, order, rescale, encodings, geometry."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from ctsynth.io.dicom_reader import find_dicom_series, read_dicom_series
from ctsynth.volume import CTVolume
from test_dicom_support import edit, rotation, synthetic_volume, write_enhanced_ct, write_series


def test_order_comes_from_positions_not_names_or_instance_numbers(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(6, 16, 16))
    files = write_series(vol, tmp_path / "w")
    messy = tmp_path / "messy"
    order = [3, 0, 5, 1, 4, 2]
    for new_index, k in enumerate(order):
        target = messy / f"sub{new_index % 2}" / f"{new_index:x}zz"  # nested folders, no extension

        def change(ds: pydicom.Dataset, n=new_index) -> None:
            ds.InstanceNumber = 100 - n  # misleading instance numbers

        edit(files[k], change, target)
    refs, notes = find_dicom_series(messy)
    assert len(refs) == 1 and refs[0].n_slices == 6 and notes == []
    back = read_dicom_series(messy)
    assert np.array_equal(back.hu, np.rint(vol.hu))
    np.testing.assert_allclose(back.origin_mm, vol.origin_mm)


def test_per_slice_rescale_and_unsigned_12_bit_storage(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(4, 12, 12))
    files = write_series(vol, tmp_path / "s")
    expected = np.empty(vol.shape)
    for k, f in enumerate(files):
        slope, intercept = (1.0, -2048.0) if k % 2 == 0 else (2.0, -1100.5)
        stored = np.rint((np.rint(vol.hu[k]) - intercept) / slope).astype(np.uint16)
        assert stored.max() < 4096
        expected[k] = stored * slope + intercept

        def change(ds: pydicom.Dataset, stored=stored, slope=slope, intercept=intercept) -> None:
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
            # Junk above BitsStored must be ignored, as the standard says.
            ds.PixelData = (stored | np.uint16(0xF000)).tobytes()
            ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)

        edit(f, change)
    back = read_dicom_series(tmp_path / "s")
    assert back.hu.dtype == np.float32  # slope 2 and a fractional intercept on some slices
    np.testing.assert_allclose(back.hu, expected, atol=1e-3)
    assert np.abs(back.hu - vol.hu).max() < 1.6  # and still the volume that was written


def test_unsigned_with_integer_intercept_stays_int16(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(3, 10, 10))
    files = write_series(vol, tmp_path / "s")
    for k, f in enumerate(files):
        def change(ds: pydicom.Dataset, k=k) -> None:
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
            ds.PixelData = ((np.rint(vol.hu[k]) + 2048).astype(np.uint16) | np.uint16(0x8000)).tobytes()  # junk bit 15
            ds.RescaleIntercept = "-2048"
        edit(f, change)
    back = read_dicom_series(tmp_path / "s")
    assert back.hu.dtype == np.int16 and np.array_equal(back.hu, np.rint(vol.hu))


def test_rle_compressed_series_decodes(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(3, 16, 16))
    for f in write_series(vol, tmp_path / "s"):
        edit(f, lambda ds: ds.compress(RLELossless))
    assert pydicom.dcmread(tmp_path / "s" / "IM00001.dcm").file_meta.TransferSyntaxUID == RLELossless
    back = read_dicom_series(tmp_path / "s")
    assert np.array_equal(back.hu, np.rint(vol.hu))
    assert back.meta["transfer_syntax"] == "RLE Lossless"


def test_raw_dataset_without_preamble_or_file_meta(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(3, 10, 12))
    files = write_series(vol, tmp_path / "s")
    raw = tmp_path / "raw"
    raw.mkdir()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(raw / f"slice{k}", implicit_vr=True, little_endian=True)
        assert (raw / f"slice{k}").read_bytes()[128:132] != b"DICM"
    back = read_dicom_series(raw)
    assert np.array_equal(back.hu, np.rint(vol.hu))


def _sheared_series(tmp_path: Path, px_per_slice: int = 1) -> tuple[np.ndarray, Path, CTVolume]:
    """A gantry-tilted acquisition of a known orthogonal volume: slice k's content and IPP are shifted
    by k * px_per_slice rows along the column direction (exact integer shifts, so de-shearing is exact)."""
    truth = synthetic_volume(shape=(5, 30, 20), spacing=(3.0, 0.5, 0.6))
    hu = np.rint(truth.hu)
    acquired = np.full_like(hu, -1000.0)
    for k in range(hu.shape[0]):
        s = k * px_per_slice
        acquired[k, : hu.shape[1] - s] = hu[k, s:]  # acquired row i shows true row i + s
    files = write_series(CTVolume(hu=acquired, spacing_mm=truth.spacing_mm, origin_mm=truth.origin_mm), tmp_path / "tilt")
    for k, f in enumerate(files):
        def change(ds: pydicom.Dataset, k=k) -> None:
            ipp = np.array([float(v) for v in ds.ImagePositionPatient])
            ipp[1] += k * px_per_slice * 0.5  # moves along +y (the column direction) by whole rows
            ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        edit(f, change)
    return hu, tmp_path / "tilt", truth


def test_gantry_tilt_is_deskewed_onto_a_regular_grid(tmp_path: Path) -> None:
    truth_hu, folder, truth = _sheared_series(tmp_path)
    back = read_dicom_series(folder)
    assert back.shape == truth.shape
    np.testing.assert_allclose(back.spacing_mm, truth.spacing_mm, atol=1e-6)
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-9)
    # Where the acquisition saw the true rows, the de-sheared stack equals the truth.
    for k in range(back.shape[0]):
        np.testing.assert_allclose(back.hu[k, k:], truth_hu[k, k:], atol=1e-3)
    assert back.meta["gantry_tilt_deg"] == pytest.approx(math.degrees(math.atan2(0.5, 3.0)), abs=0.01)
    assert any("gantry tilt" in n for n in back.meta["notes"])


def test_rounded_positions_count_as_even(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(8, 8, 8), spacing=(0.625, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    files = write_series(vol, tmp_path / "s")
    for k, f in enumerate(files):
        edit(f, lambda ds, k=k: setattr(ds, "ImagePositionPatient", ["0", "0", f"{round(k * 0.625, 1):.1f}"]))
    back = read_dicom_series(tmp_path / "s")
    assert back.shape == vol.shape and back.spacing_mm[0] == pytest.approx(0.625, abs=0.02)
    assert any("rounded positions" in n for n in back.meta["notes"])


def test_mildly_uneven_steps_are_resampled_linearly(tmp_path: Path) -> None:
    positions = [0.0, 2.0, 4.4, 6.2, 8.0, 10.0]
    ramp = np.stack([np.full((6, 6), 10.0 * p) for p in positions])  # HU = 10 * z: linear, so known after resampling
    files = write_series(CTVolume(hu=ramp, spacing_mm=(2.0, 1.0, 1.0)), tmp_path / "s")
    for f, p in zip(files, positions):
        edit(f, lambda ds, p=p: setattr(ds, "ImagePositionPatient", ["0", "0", f"{p}"]))
    back = read_dicom_series(tmp_path / "s")
    step = back.spacing_mm[0]
    assert step == pytest.approx(float(np.median(np.diff(positions))))
    z = step * np.arange(back.shape[0])
    np.testing.assert_allclose(back.hu[:, 3, 3], 10 * z, atol=1e-3)
    assert any("resampled" in n for n in back.meta["notes"])


def test_identical_duplicates_are_dropped_with_a_note(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(4, 10, 10))
    files = write_series(vol, tmp_path / "s")
    edit(files[1], lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()), tmp_path / "s" / "copy_of_2.dcm")
    back = read_dicom_series(tmp_path / "s")
    assert np.array_equal(back.hu, np.rint(vol.hu))
    assert any("duplicate" in n and ("copy_of_2.dcm" in n or "IM00002.dcm" in n) for n in back.meta["notes"])


def test_localizer_and_other_plane_slices_are_skipped(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(4, 10, 10))
    files = write_series(vol, tmp_path / "s")
    edit(files[0], lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), tmp_path / "s" / "scout.dcm")
    edit(files[1], lambda ds: setattr(ds, "ImageOrientationPatient", ["1", "0", "0", "0", "0", "-1"]),
         tmp_path / "s" / "coronal.dcm")
    back = read_dicom_series(tmp_path / "s")
    assert np.array_equal(back.hu, np.rint(vol.hu))
    notes = " ".join(back.meta["notes"])
    assert "localizer" in notes and "scout.dcm" in notes and "coronal.dcm" in notes


def test_two_series_are_listed_and_one_can_be_chosen(tmp_path: Path) -> None:
    a, b = synthetic_volume(shape=(3, 8, 8), seed=1), synthetic_volume(shape=(4, 8, 8), seed=2)
    write_series(a, tmp_path / "x" / "a")
    write_series(b, tmp_path / "x" / "b")
    refs, _ = find_dicom_series(tmp_path / "x")
    assert sorted(r.n_slices for r in refs) == [3, 4]
    ref_b = next(r for r in refs if r.n_slices == 4)
    assert np.array_equal(read_dicom_series(tmp_path / "x", series_uid=ref_b.uid).hu, np.rint(b.hu))
    assert np.array_equal(read_dicom_series(ref_b).hu, np.rint(b.hu))
    assert ref_b.folder == tmp_path / "x" / "b" and ref_b.modality == "CT"


def test_dicomdir_and_single_slice_series_are_noted(tmp_path: Path) -> None:
    write_series(synthetic_volume(shape=(3, 8, 8)), tmp_path / "d" / "series")
    single = write_series(synthetic_volume(shape=(1, 8, 8), seed=5), tmp_path / "one")
    shutil.copy(single[0], tmp_path / "d" / "lonely.dcm")
    (tmp_path / "d" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    refs, notes = find_dicom_series(tmp_path / "d")
    assert len(refs) == 1
    text = " ".join(notes)
    assert "DICOMDIR" in text and "single-slice" in text and "lonely.dcm" in text


def test_single_file_reads_as_one_slice(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(2, 8, 8))
    files = write_series(vol, tmp_path / "s")
    one = read_dicom_series(files[1])
    assert one.shape == (1, 8, 8) and np.array_equal(one.hu[0], np.rint(vol.hu[1]))
    assert one.spacing_mm[0] == pytest.approx(2.0)


def test_series_refs_carry_the_series_number(tmp_path: Path) -> None:
    files = write_series(synthetic_volume(shape=(2, 8, 8)), tmp_path / "s")
    for f in files:
        edit(f, lambda ds: setattr(ds, "SeriesNumber", 7))
    refs, _ = find_dicom_series(tmp_path / "s")
    assert refs[0].series_number == 7


def test_enhanced_multiframe_ct_reads_frame_by_frame_geometry(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(5, 12, 14), direction=rotation(0.2, 0.1))
    write_enhanced_ct(vol, tmp_path / "enh" / "volume.dcm", order=[3, 0, 4, 2, 1])
    refs, notes = find_dicom_series(tmp_path / "enh")
    assert len(refs) == 1 and refs[0].n_slices == 5 and len(refs[0].files) == 1
    back = read_dicom_series(tmp_path / "enh")
    assert back.hu.dtype == np.int16
    assert np.array_equal(back.hu, np.rint(vol.hu))
    np.testing.assert_allclose(back.spacing_mm, vol.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(back.origin_mm, vol.origin_mm, atol=1e-5)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)


def test_enhanced_ct_agrees_with_dcm2niix(tmp_path: Path) -> None:
    """An independent reader of Enhanced CT gives the same voxels in the same place."""
    import nibabel as nib
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed (apt install dcm2niix)")
    import subprocess

    vol = synthetic_volume(shape=(4, 12, 14))
    write_enhanced_ct(vol, tmp_path / "enh" / "volume.dcm", order=[2, 0, 3, 1])
    (tmp_path / "nii").mkdir()
    proc = subprocess.run(["dcm2niix", "-z", "y", "-f", "vol", "-o", str(tmp_path / "nii"), str(tmp_path / "enh")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    converted = nib.as_closest_canonical(nib.load(tmp_path / "nii" / "vol.nii.gz"))
    back = read_dicom_series(tmp_path / "enh")
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ back.index_to_lps()
    ours = nib.as_closest_canonical(nib.Nifti1Image(back.hu.astype(np.float64).transpose(2, 1, 0), ras))
    assert np.array_equal(converted.get_fdata(), ours.get_fdata())
    np.testing.assert_allclose(converted.affine, ours.affine, atol=1e-3)

"""Writer -> reader round trips, and the export read by SimpleITK and converted by dcm2niix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctsynth.errors import CTSynthError
from ctsynth.io.dicom_reader import read_dicom_series
from ctsynth.io.dicom_writer import write_dicom_series
from ctsynth.volume import CTVolume
from test_dicom_support import rotation, synthetic_volume, write_series


def _assert_same_geometry(a: CTVolume, b: CTVolume) -> None:
    np.testing.assert_allclose(a.spacing_mm, b.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def test_roundtrip_identity_direction(tmp_path: Path) -> None:
    vol = synthetic_volume()
    files = write_series(vol, tmp_path / "out")
    assert [f.name for f in files] == [f"IM{i:05d}.dcm" for i in range(1, 7)]
    back = read_dicom_series(tmp_path / "out")
    assert back.hu.dtype == np.int16
    assert back.shape == vol.shape
    assert np.abs(back.hu - vol.hu).max() <= 0.5  # HU rounded to integers, nothing else
    assert np.array_equal(back.hu, np.rint(vol.hu))
    _assert_same_geometry(back, vol)
    assert back.meta["notes"] == []


def test_roundtrip_oblique_direction(tmp_path: Path) -> None:
    vol = synthetic_volume(direction=rotation(0.3, 0.5), origin=(5.5, -7.25, 40.0))
    write_series(vol, tmp_path / "out")
    back = read_dicom_series(tmp_path / "out")
    assert np.array_equal(back.hu, np.rint(vol.hu))
    _assert_same_geometry(back, vol)


def test_left_handed_direction_comes_back_in_normal_order(tmp_path: Path) -> None:
    """Slices stacked against the IOP normal are read back sorted along it: same voxels in space."""
    direction = np.diag([1.0, 1.0, -1.0])
    vol = synthetic_volume(direction=direction)
    write_series(vol, tmp_path / "out")
    back = read_dicom_series(tmp_path / "out")
    assert np.array_equal(back.hu, np.rint(vol.hu[::-1]))
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(back.origin_mm, vol.slice_positions_lps()[-1], atol=1e-5)


def test_hu_beyond_int16_uses_the_intercept(tmp_path: Path) -> None:
    hu = np.linspace(-40000, 20000, 2 * 8 * 8).reshape(2, 8, 8).round()
    vol = CTVolume(hu=hu.astype(np.float32), spacing_mm=(1.0, 1.0, 1.0))
    write_series(vol, tmp_path / "out")
    ds = pydicom.dcmread(tmp_path / "out" / "IM00001.dcm")
    assert float(ds.RescaleIntercept) != 0 and float(ds.RescaleSlope) == 1
    back = read_dicom_series(tmp_path / "out")
    assert np.array_equal(back.hu, hu)


def test_simpleitk_reads_the_export(tmp_path: Path) -> None:
    import SimpleITK as sitk
    vol = synthetic_volume(direction=rotation(0.2, -0.4))
    write_series(vol, tmp_path / "out")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "out")))
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image), np.rint(vol.hu))
    np.testing.assert_allclose(image.GetSpacing(), vol.spacing_mm[::-1], atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), vol.origin_mm, atol=1e-5)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), vol.direction, atol=1e-6)


def test_dcm2niix_converts_the_export(tmp_path: Path) -> None:
    import nibabel as nib
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed (apt install dcm2niix)")
    vol = synthetic_volume(shape=(5, 20, 26))
    write_series(vol, tmp_path / "dcm")
    (tmp_path / "nii").mkdir()
    proc = subprocess.run(["dcm2niix", "-z", "y", "-f", "vol", "-o", str(tmp_path / "nii"), str(tmp_path / "dcm")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = sorted((tmp_path / "nii").glob("*.nii.gz"))
    assert [p.name for p in outputs] == ["vol.nii.gz"]
    converted = nib.as_closest_canonical(nib.load(outputs[0]))
    # Our volume as a NIfTI: (x, y, z) array, LPS affine turned into RAS.
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.index_to_lps()
    expected = nib.as_closest_canonical(nib.Nifti1Image(np.rint(vol.hu).transpose(2, 1, 0), ras))
    assert converted.shape == expected.shape
    assert np.array_equal(np.asarray(converted.dataobj, dtype=np.float64), expected.get_fdata())
    np.testing.assert_allclose(converted.header.get_zooms()[:3], expected.header.get_zooms()[:3], atol=1e-4)
    np.testing.assert_allclose(converted.affine, expected.affine, atol=1e-3)


def test_writer_sets_the_synthetic_and_privacy_tags(tmp_path: Path) -> None:
    vol = synthetic_volume(label="covid")
    vol.meta.update({"PatientName": "DOE^JANE", "InstitutionName": "St Example Hospital",
                     "patient_id": "PAT-777", "StudyDate": "19990101", "manufacturer": "SECRETVENDOR"})
    files = write_series(vol, tmp_path / "a")
    ds = pydicom.dcmread(files[2])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "CT" and ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    assert "SYNTHETIC" in ds.SeriesDescription and ds.DeidentificationMethod
    assert str(ds.PatientName) == "SYNTHETIC^CT" and ds.PatientID.startswith("ctsynth-")
    assert ds.InstanceNumber == 3 and ds.pixel_array.dtype == np.int16
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], vol.slice_positions_lps()[2], atol=1e-6)
    np.testing.assert_allclose(float(ds.SliceLocation), vol.slice_positions_lps()[2][2], atol=1e-6)
    assert [float(v) for v in ds.PixelSpacing] == [0.75, 0.8]
    assert float(ds.SliceThickness) == 2.0 and float(ds.SpacingBetweenSlices) == 2.0
    assert ds.FrameOfReferenceUID and ds.WindowCenter and ds.WindowWidth
    assert "covid" in ds.ImageComments
    blob = b"".join(f.read_bytes() for f in files)
    for secret in (b"DOE", b"Example Hospital", b"PAT-777", b"19990101", b"SECRETVENDOR"):
        assert secret not in blob
    # Fresh UIDs per written volume.
    other = pydicom.dcmread(write_series(vol, tmp_path / "b")[0])
    first = pydicom.dcmread(files[0])
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID", "PatientID"):
        assert getattr(other, tag) != getattr(first, tag)
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == len(files)


def test_writer_description_always_says_synthetic_and_extra_is_guarded(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(2, 8, 8))
    write_dicom_series(vol, tmp_path / "a", series_description="chest", extra={"ImageComments": "hello"})
    ds = pydicom.dcmread(tmp_path / "a" / "IM00001.dcm")
    assert ds.SeriesDescription == "SYNTHETIC chest" and ds.ImageComments == "hello"
    with pytest.raises(CTSynthError, match="PatientName"):
        write_dicom_series(vol, tmp_path / "b", extra={"PatientName": "DOE^JANE"})
    with pytest.raises(CTSynthError, match="not a DICOM keyword"):
        write_dicom_series(vol, tmp_path / "c", extra={"NotATag": 1})
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_writer_refuses_an_existing_output_unless_overwrite(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(2, 8, 8))
    write_series(vol, tmp_path / "out")
    before = sorted(p.read_bytes() for p in (tmp_path / "out").iterdir())
    with pytest.raises(CTSynthError, match="already exists"):
        write_dicom_series(vol, tmp_path / "out")
    assert sorted(p.read_bytes() for p in (tmp_path / "out").iterdir()) == before
    write_dicom_series(synthetic_volume(shape=(3, 8, 8)), tmp_path / "out", overwrite=True)
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_writer_output_under_a_file_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    target = blocker / "series"
    with pytest.raises(CTSynthError) as err:
        write_dicom_series(synthetic_volume(shape=(2, 8, 8)), target)
    assert str(blocker) in str(err.value) and "fix:" in str(err.value) and "\n" not in str(err.value)
    assert blocker.read_text() == "x"


def test_writer_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_save = pydicom.Dataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(CTSynthError, match="disk is full"):
        write_dicom_series(synthetic_volume(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_a_non_orthonormal_direction(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(2, 8, 8), direction=np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(CTSynthError, match="orthonormal"):
        write_dicom_series(vol, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_writer_refuses_nan_hu(tmp_path: Path) -> None:
    vol = synthetic_volume(shape=(2, 8, 8))
    vol.hu[1, 2, 3] = np.nan
    with pytest.raises(CTSynthError, match="NaN"):
        write_dicom_series(vol, tmp_path / "out")
    assert not (tmp_path / "out").exists()

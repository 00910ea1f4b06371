"""Real scanner files (../shared/data/real-ct, see its README): shapes, spacing, HU, encodings and quirks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ctsynth.errors import CTSynthError
from ctsynth.io.dicom_reader import find_dicom_series, read_dicom_series

COMPRESSED = ("CT1_J2KI.dcm", "CT1_J2KR.dcm", "CT1_JLSL.dcm", "CT1_JPLL.dcm", "CT1_RLE.dcm")


def _simpleitk_array(folder: Path) -> tuple[np.ndarray, tuple]:
    import SimpleITK as sitk
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def test_totalsegmentator_jpeg2000_series(real_ct: Path) -> None:
    folder = real_ct / "totalseg_dicom20"
    vol = read_dicom_series(folder)
    assert vol.shape == (20, 512, 512) and vol.hu.dtype == np.int16
    np.testing.assert_allclose(vol.spacing_mm, (2.0, 0.9765625, 0.9765625))  # 2 mm steps, not the 3 mm thickness
    assert (int(vol.hu.min()), int(vol.hu.max())) == (-1024, 1839)
    np.testing.assert_allclose(vol.origin_mm, (-249.51171875, -437.51171875, -804.5))  # lowest slice first
    assert vol.meta["slice_thickness_mm"] == 3.0 and "JPEG 2000" in vol.meta["transfer_syntax"]
    assert any("no SeriesInstanceUID" in n for n in vol.meta["notes"])  # the export blanked it
    expected, spacing = _simpleitk_array(folder)
    assert np.array_equal(vol.hu, expected)
    np.testing.assert_allclose(spacing, vol.spacing_mm[::-1])


def test_dcmqi_three_slices_with_padding(real_ct: Path) -> None:
    folder = real_ct / "dcmqi_ct3slice"
    vol = read_dicom_series(folder)
    assert vol.shape == (3, 512, 512)
    np.testing.assert_allclose(vol.spacing_mm, (1.0, 0.810547, 0.810547), atol=1e-6)
    assert vol.meta["pixel_padding_value_hu"] == -3024.0
    assert vol.hu.min() == -3024  # padding kept as stored, recorded in meta
    expected, _ = _simpleitk_array(folder)
    assert np.array_equal(vol.hu, expected)


def test_each_compressed_transfer_syntax_decodes(real_ct: Path) -> None:
    folder = real_ct / "quirk_compressed_wg04_ct1_chest"
    slices = {name: read_dicom_series(folder / name) for name in COMPRESSED}
    for name, vol in slices.items():
        assert vol.shape == (1, 512, 512), name
        np.testing.assert_allclose(vol.spacing_mm, (5.0, 0.661468, 0.661468), atol=1e-6)
    lossless = [slices[n].hu for n in COMPRESSED if n != "CT1_J2KI.dcm"]
    for other in lossless[1:]:
        assert np.array_equal(other, lossless[0])  # four lossless codecs, one image
    ref = lossless[0].astype(np.float64)
    assert (ref.min(), ref.max()) == (-3024.0, 1254.0)
    lossy = slices["CT1_J2KI.dcm"].hu.astype(np.float64)
    assert not np.array_equal(lossy, ref)
    body = ref > -900
    assert np.abs(lossy - ref)[body].mean() < 60  # lossy but the same chest


def test_compressed_folder_duplicates_refused_and_single_slice_noted(real_ct: Path) -> None:
    folder = real_ct / "quirk_compressed_wg04_ct1_chest"
    refs, notes = find_dicom_series(folder)
    assert len(refs) == 1 and refs[0].n_slices == 4
    assert any("single-slice" in n and "CT1_RLE.dcm" in n for n in notes)
    with pytest.raises(CTSynthError) as err:
        read_dicom_series(folder)
    text = str(err.value)
    assert "share the slice position" in text and "CT1_J2KI.dcm" in text and "(fix:" in text


def test_lossless_duplicates_collapse_to_one_slice(real_ct: Path, tmp_path: Path) -> None:
    for name in ("CT1_J2KR.dcm", "CT1_JLSL.dcm", "CT1_JPLL.dcm"):
        shutil.copy(real_ct / "quirk_compressed_wg04_ct1_chest" / name, tmp_path / name)
    vol = read_dicom_series(tmp_path)
    assert vol.shape == (1, 512, 512)
    assert any("dropped 2 duplicate" in n for n in vol.meta["notes"])


def test_stripped_meta_reads_as_ct(real_ct: Path) -> None:
    vol = read_dicom_series(real_ct / "quirk_stripped_meta_lungmask2")
    assert vol.shape == (2, 512, 512)
    np.testing.assert_allclose(vol.spacing_mm, (1.0, 0.625, 0.625))
    assert vol.hu.min() == -2048
    assert any("no Modality tag" in n for n in vol.meta["notes"])


def test_gantry_tilt_head_with_joined_spacings_is_refused(real_ct: Path) -> None:
    folder = real_ct / "quirk_gantry_tilt_variable_spacing_head"
    with pytest.raises(CTSynthError) as err:
        read_dicom_series(folder)
    text = str(err.value)
    assert text.startswith(str(folder))
    assert "4.00 mm x13 (01.dcm..14.dcm)" in text and "7.00 mm x13 (15.dcm..28.dcm)" in text
    assert "gantry tilt 18.5 degrees" in text
    assert "(fix: read each evenly spaced part on its own" in text


def test_gantry_tilt_head_even_part_is_deskewed(real_ct: Path, tmp_path: Path) -> None:
    for i in range(1, 15):
        shutil.copy(real_ct / "quirk_gantry_tilt_variable_spacing_head" / f"{i:02d}.dcm", tmp_path / f"{i:02d}.dcm")
    vol = read_dicom_series(tmp_path)
    assert vol.shape == (14, 512, 512) and vol.hu.dtype == np.float32
    # 4.22 mm table steps times cos(18.5 degrees): 4.00 mm between the tilted planes.
    np.testing.assert_allclose(vol.spacing_mm, (4.0, 0.4882812, 0.4882812), atol=0.01)
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.1)  # agrees with GantryDetectorTilt
    np.testing.assert_allclose(vol.direction[:, 2], np.cross(vol.direction[:, 0], vol.direction[:, 1]))
    # The slice planes are tilted: the normal leans 18.5 degrees from the patient's z axis.
    assert np.degrees(np.arccos(vol.direction[2, 2])) == pytest.approx(18.5, abs=0.1)


def test_find_over_the_whole_folder(real_ct: Path) -> None:
    refs, notes = find_dicom_series(real_ct)
    assert sorted(r.n_slices for r in refs) == [2, 3, 4, 20, 28]
    assert all(r.modality == "CT" for r in refs)
    assert any("non-DICOM" in n and "README.md" in n for n in notes)


def test_stand_in_uid_is_stable_across_roots(real_ct: Path) -> None:
    """A series without SeriesInstanceUID gets a stand-in UID that works from the tree root too."""
    (ref,), _ = find_dicom_series(real_ct / "totalseg_dicom20")
    assert ref.uid.startswith("nouid-")
    assert read_dicom_series(real_ct, series_uid=ref.uid).shape == (20, 512, 512)

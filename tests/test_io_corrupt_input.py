"""Known answers for the corrupt inputs of issue #15: each is refused naming the file, or read right.

The files are made here from constructed series (ctsynth's writer) and edited byte by byte with the fuzzer's
element walker, so values pydicom itself would refuse to write ("abc" in a DS) can be planted.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ctsynth.errors import CTSynthError
from ctsynth.io.dicom_reader import read_dicom_series
from ctsynth.io.fuzz import replace_value, walk_elements
from ctsynth.io.nifti import read_nifti, write_nifti
from ctsynth.io.tiff import read_tiff_slices, write_tiff_slices
from test_dicom_support import synthetic_volume, write_series

TAGS = {"RescaleSlope": (0x0028, 0x1053), "RescaleIntercept": (0x0028, 0x1052), "SeriesNumber": (0x0020, 0x0011),
        "PixelRepresentation": (0x0028, 0x0103), "BitsAllocated": (0x0028, 0x0100), "BitsStored": (0x0028, 0x0101),
        "PixelSpacing": (0x0028, 0x0030), "TransferSyntaxUID": (0x0002, 0x0010), "PixelData": (0x7FE0, 0x0010),
        "ImagePositionPatient": (0x0020, 0x0032), "MediaStorageSOPClassUID": (0x0002, 0x0002)}


def _set(path: Path, name: str, value: bytes) -> None:
    data = path.read_bytes()
    element = next(e for e in walk_elements(data) if e.tag == TAGS[name])
    path.write_bytes(replace_value(data, element, value))


def _series(tmp_path: Path, n: int = 3, **kwargs) -> tuple[Path, list[Path]]:
    folder = tmp_path / "s"
    return folder, write_series(synthetic_volume(shape=(n, 12, 10), **kwargs), folder)


def _refused(folder: Path, corrupt: Path, *words: str) -> str:
    with pytest.raises(CTSynthError) as err:
        read_dicom_series(folder)
    text = str(err.value)
    assert "\n" not in text and corrupt.name in text and "(fix: " in text, text
    for word in words:
        assert word in text, text
    return text


@pytest.mark.parametrize("name,value,words", [
    ("RescaleSlope", b"nan", ["RescaleSlope", "not a finite number"]),
    ("RescaleSlope", b"-3e38", ["RescaleSlope"]),
    ("RescaleSlope", b"0", ["RescaleSlope"]),
    ("RescaleIntercept", b"1e30", ["RescaleIntercept"]),
    ("RescaleIntercept", b"abc", ["RescaleIntercept 'abc' is not a number"]),
    ("RescaleIntercept", b"1e309", ["RescaleIntercept"]),
    ("BitsStored", b"na", ["BitsStored"]),
    ("PixelSpacing", b"1e6\\1e6", ["PixelSpacing", "plausible"]),
    ("PixelSpacing", b"0\\0", ["PixelSpacing", "not positive"]),
    ("PixelSpacing", b"abc", ["PixelSpacing"]),
    ("ImagePositionPatient", b"0\\0\\1e6", ["ImagePositionPatient"]),
    ("TransferSyntaxUID", b"1.2.840.10008.1.2.1.99", ["corrupt"]),  # relabelled deflate: zlib.error before
    ("TransferSyntaxUID", b"1.2.3.4", ["unknown TransferSyntaxUID"]),
    ("BitsAllocated", b"\x08\x00", ["BitsStored 16 does not fit BitsAllocated 8"]),
])
def test_bad_header_values_are_refused_by_name(tmp_path: Path, name: str, value: bytes, words: list[str]) -> None:
    folder, files = _series(tmp_path)
    _set(files[1], name, value)
    _refused(folder, files[1], *words)


def test_bits_allocated_8_on_16_bit_data_is_a_length_mismatch(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    _set(files[1], "BitsAllocated", b"\x08\x00")
    _set(files[1], "BitsStored", b"\x08\x00")
    _refused(folder, files[1], "pixel data holds 240 bytes, not the 120")


def test_series_number_1e309_is_no_overflow(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    reference = read_dicom_series(folder)
    _set(files[1], "SeriesNumber", b"1e309")
    np.testing.assert_array_equal(read_dicom_series(folder).hu, reference.hu)


def test_missing_pixel_representation(tmp_path: Path) -> None:
    """Signed data without the tag is ambiguous (refused); data below the sign bit is not (read)."""
    folder, files = _series(tmp_path)  # signed int16 with air at -1000: the top bit is in use
    data = files[0].read_bytes()
    element = next(e for e in walk_elements(data) if e.tag == TAGS["PixelRepresentation"])
    files[0].write_bytes(data[:element.offset] + data[element.value_at + element.length:])
    _refused(folder, files[0], "PixelRepresentation is missing", "ambiguous")

    folder2 = tmp_path / "u"
    files2 = write_series(synthetic_volume(shape=(3, 12, 10)), folder2)
    reference = read_dicom_series(folder2).hu
    for f in files2:  # unsigned storage, intercept -2048, values well below the sign bit, no tag
        ds = pydicom.dcmread(f)
        ds.PixelData = (ds.pixel_array.astype(np.int32) + 2048).astype(np.uint16).tobytes()
        ds.RescaleIntercept = "-2048"
        del ds.PixelRepresentation
        ds.save_as(f, enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom_series(folder2).hu, reference)


def test_rle_with_empty_pixel_data_is_refused(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(pydicom.uid.RLELossless)
        ds.save_as(f, enforce_file_format=True)
    _set(files[2], "PixelData", b"")
    _refused(folder, files[2])


def test_unknown_vr_in_file_meta_is_refused(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    data = files[1].read_bytes()
    element = next(e for e in walk_elements(data) if e.tag == TAGS["MediaStorageSOPClassUID"])
    files[1].write_bytes(data[:element.offset + 4] + b"\xd0\xde" + data[element.offset + 6:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak as a warning either
        _refused(folder, files[1])


def test_explicit_data_relabelled_implicit_reads_right_with_a_note(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    reference = read_dicom_series(folder)
    _set(files[1], "TransferSyntaxUID", b"1.2.840.10008.1.2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = read_dicom_series(folder)
    np.testing.assert_array_equal(volume.hu, reference.hu)
    assert any(files[1].name in n and "implicit" in n.lower() for n in volume.meta["notes"])


def test_a_file_cut_short_inside_a_series_is_named(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    files[1].write_bytes(files[1].read_bytes()[:533])
    _refused(folder, files[1])


def test_absurd_slice_step_is_refused(tmp_path: Path) -> None:
    folder, files = _series(tmp_path, n=2, spacing=(20000.0, 0.7, 0.7))
    text = _refused(folder, files[0], "step between slice positions", "plausible")
    assert files[1].name in text  # two slices: either may be the odd one, both are named


# ------------------------------------------------------------------------------------------------- NIfTI


def _nifti_with(tmp_path: Path, change, fill: int = 0) -> Path:
    """A small .nii whose stored header ``change`` edits in place (no nibabel repairs on the way)."""
    from ctsynth.volume import CTVolume

    path = write_nifti(CTVolume(hu=np.full((4, 5, 6), fill, np.int16), spacing_mm=(2.5, 0.7, 0.7)),
                       tmp_path / "ct.nii")
    data = bytearray(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(data[:348])), check=False)
    change(header)
    data[:348] = header.binaryblock
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("voxel", [0.0, -0.7, 1e30, float("nan")])
def test_nifti_qform_only_bad_voxel_size_is_refused_without_stderr(tmp_path: Path, capfd, voxel: float) -> None:
    def qform_only(header) -> None:
        header["sform_code"] = 0
        header["pixdim"][2] = voxel

    path = _nifti_with(tmp_path, qform_only)
    with pytest.raises(CTSynthError) as err:
        read_nifti(path)
    assert str(err.value).startswith(str(path)) and "voxel size" in str(err.value)
    assert capfd.readouterr().err == ""


def test_nifti_absurd_sform_voxel_is_refused(tmp_path: Path) -> None:
    def huge(header) -> None:
        header["srow_x"] = np.array([-1e30, 0, 0, 0])

    with pytest.raises(CTSynthError, match="plausible CT range"):
        read_nifti(_nifti_with(tmp_path, huge))


def test_nifti_changed_dim_is_refused(tmp_path: Path) -> None:
    def fewer_slices(header) -> None:
        header["dim"][3] = 3

    with pytest.raises(CTSynthError, match="bytes of voxel data"):
        read_nifti(_nifti_with(tmp_path, fewer_slices))


def test_nifti_negative_pixdim_beside_a_valid_sform_is_a_note(tmp_path: Path, capfd) -> None:
    def negative(header) -> None:
        header["pixdim"][1] = -0.7

    volume = read_nifti(_nifti_with(tmp_path, negative))
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.7))
    assert any("pixdim" in n for n in volume.meta["notes"])
    assert capfd.readouterr().err == ""


def test_nifti_gzip_corruption_is_refused(tmp_path: Path) -> None:
    from ctsynth.volume import CTVolume

    rng = np.random.default_rng(0)
    path = write_nifti(CTVolume(hu=rng.integers(-1000, 1000, (6, 16, 16)).astype(np.int16),
                                spacing_mm=(2.5, 0.7, 0.7)), tmp_path / "ct.nii.gz")
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, len(data) - 8, struct.unpack_from("<I", data, len(data) - 8)[0] ^ 1)  # the CRC
    path.write_bytes(bytes(data))
    with pytest.raises(CTSynthError, match="not a readable NIfTI"):
        read_nifti(path)


# -------------------------------------------------------------------------------------------------- TIFF


def test_tiff_folder_with_mixed_dtypes_is_refused(tmp_path: Path) -> None:
    import tifffile

    from ctsynth.volume import CTVolume

    folder = write_tiff_slices(CTVolume(hu=np.zeros((3, 8, 8), np.int16), spacing_mm=(2.5, 0.7, 0.7)),
                               tmp_path / "t")
    tifffile.imwrite(folder / "IM00002.tif", np.zeros((8, 8), np.int16))
    with pytest.raises(CTSynthError) as err:
        read_tiff_slices(folder)
    assert str(err.value).startswith(str(folder / "IM00002.tif")) and "int16" in str(err.value)


@pytest.mark.parametrize("key,value", [("spacing_mm", [60.0, 0.7, 0.7]), ("direction", [[1e6, 0, 0], [0, 1, 0], [0, 0, 1]]),
                                       ("offset_hu", "abc"), ("origin_mm", [1e309, 0, 0])])
def test_tiff_sidecar_with_bad_values_is_refused_by_name(tmp_path: Path, key: str, value) -> None:
    import json

    from ctsynth.volume import CTVolume

    folder = write_tiff_slices(CTVolume(hu=np.zeros((3, 8, 8), np.int16), spacing_mm=(2.5, 0.7, 0.7)),
                               tmp_path / "t")
    sidecar = json.loads((folder / "ctsynth_tiff.json").read_text())
    sidecar[key] = value
    (folder / "ctsynth_tiff.json").write_text(json.dumps(sidecar).replace("Infinity", "1e309"))
    with pytest.raises(CTSynthError) as err:
        read_tiff_slices(folder)
    assert "ctsynth_tiff.json" in str(err.value)


def test_hu_beyond_a_million_are_refused_by_file(tmp_path: Path) -> None:
    folder, files = _series(tmp_path)
    _set(files[1], "RescaleSlope", b"999")  # within the slope range, but bone at 1200 stored -> 1.2 million HU
    _refused(folder, files[1], "not Hounsfield units")

    def huge_scaling(header) -> None:
        header["scl_slope"] = 1e30

    path = _nifti_with(tmp_path, huge_scaling, fill=40)
    with pytest.raises(CTSynthError, match="not Hounsfield units"):
        read_nifti(path)


def test_values_of_other_modalities_do_not_stop_the_ct_series(tmp_path: Path) -> None:
    """A PET series (slope 2e-5, outside the CT range) beside a CT series: skipped with a note, not 'broken'."""
    from test_dicom_support import edit

    write_series(synthetic_volume(shape=(3, 8, 8)), tmp_path / "ct")
    for f in write_series(synthetic_volume(shape=(2, 8, 8), seed=2), tmp_path / "pet"):
        edit(f, lambda ds: (setattr(ds, "Modality", "PT"), setattr(ds, "RescaleSlope", "0.00002"),
                            setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.128")))
    volume = read_dicom_series(tmp_path)
    assert volume.shape == (3, 8, 8) and any("modality PT" in n for n in volume.meta["notes"])


@pytest.mark.parametrize("fmt", ["nifti", "dicom", "tiff"])
def test_no_writer_stores_non_finite_hu(tmp_path: Path, fmt: str) -> None:
    from ctsynth.io.write import write_volume
    from ctsynth.volume import CTVolume

    hu = np.zeros((2, 4, 4), np.float32)
    hu[1, 2, 3] = np.inf
    target = tmp_path / ("out.nii.gz" if fmt == "nifti" else "out")
    with pytest.raises(CTSynthError, match="NaN or infinite HU"):
        write_volume(CTVolume(hu=hu, spacing_mm=(1.0, 1.0, 1.0)), target, fmt)
    assert list(tmp_path.iterdir()) == []


def test_enhanced_ct_with_a_wrong_frame_count_is_refused(tmp_path: Path) -> None:
    from test_dicom_support import write_enhanced_ct

    path = write_enhanced_ct(synthetic_volume(shape=(3, 8, 8)), tmp_path / "enh" / "volume.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 1000000000  # would build a billion frame headers
    ds.save_as(path, enforce_file_format=True)
    _refused(tmp_path / "enh", path, "NumberOfFrames")

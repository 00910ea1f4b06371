"""COVID-CTset-style TIFF slices: natural order, offset, spacing rules, Patients_metadata.csv, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ctsynth.errors import CTSynthError
from ctsynth.io.tiff import (DEFAULT_SPACING_MM, SIDECAR_NAME, CovidCTsetMetadata, natural_key, read_tiff_slices,
                             write_tiff_slices)
from ctsynth.volume import CTVolume

METADATA = (
    "Patient ID,SR_2 PatientBirthDate,SR_2 PixelSpacing,SR_3 PixelSpacing,SR_2 SliceThickness,"
    "SR_3 SliceThickness,SR_2 RescaleIntercept,SR_3 RescaleIntercept\n"
    'patient1,19670407,"[0.814453125, 0.814453125]","[0.75, 0.75]",4,1.5,-1024,-1024\n'
    'patient3,19540418,"[0.58, 0.58]","[0.58, 0.58]",6,5,-1000,-1000\n'
)


def _slices(folder: Path, names: list[str], shape=(8, 10), seed: int = 0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for name in names:
        image = rng.integers(0, 4096, shape).astype(np.uint16)
        tifffile.imwrite(folder / name, image)
        images.append(image)
    return images


def test_natural_sort() -> None:
    names = ["IM10.tif", "IM2.tif", "IM1.tif", "x_patient1_SR_2_IM00010.tif", "x_patient1_SR_2_IM00009.tif"]
    assert sorted(names, key=natural_key) == ["IM1.tif", "IM2.tif", "IM10.tif", "x_patient1_SR_2_IM00009.tif",
                                              "x_patient1_SR_2_IM00010.tif"]


def test_reads_in_natural_order_with_offset(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    images = _slices(folder, ["IM2.tif", "IM10.tif", "IM1.tif"])
    volume = read_tiff_slices(folder, spacing_mm=(5.0, 0.7, 0.7))
    expected = np.stack([images[2], images[0], images[1]]).astype(np.int32) - 1024
    np.testing.assert_array_equal(volume.hu, expected)
    assert volume.spacing_mm == (5.0, 0.7, 0.7) and volume.meta["spacing_source"] == "given"
    other = read_tiff_slices(folder, offset=-1000, spacing_mm=(5.0, 0.7, 0.7))
    np.testing.assert_array_equal(other.hu, expected + 24)


def test_default_spacing_is_a_warning(tmp_path: Path) -> None:
    _slices(tmp_path / "s", ["IM00001.tif", "IM00002.tif"])
    volume = read_tiff_slices(tmp_path / "s")
    assert volume.spacing_mm == DEFAULT_SPACING_MM
    assert any("spacing unknown" in note and "--spacing" in note for note in volume.meta["notes"])


def test_metadata_lookup(tmp_path: Path) -> None:
    (tmp_path / "Patients_metadata.csv").write_text(METADATA)
    metadata = CovidCTsetMetadata.load(tmp_path / "Patients_metadata.csv")
    assert metadata.lookup("patient1", "SR_2").pixel_spacing_yx == (0.814453125, 0.814453125)
    assert metadata.lookup("Patient1", "sr_3").slice_thickness == 1.5
    assert metadata.lookup("patient9", "SR_2") is None
    images = _slices(tmp_path / "patient3" / "SR_3", ["IM00001.tif", "IM00002.tif"])
    # Found by itself two levels up; its RescaleIntercept (-1000) is the offset when none is given.
    volume = read_tiff_slices(tmp_path / "patient3" / "SR_3")
    assert volume.spacing_mm == (5.0, 0.58, 0.58)
    assert volume.meta["spacing_source"] == "Patients_metadata.csv" and volume.meta["notes"] == []
    np.testing.assert_array_equal(volume.hu[1], images[1].astype(np.int32) - 1000)
    # Explicit spacing wins over the metadata.
    assert read_tiff_slices(tmp_path / "patient3" / "SR_3", spacing_mm=(1, 2, 3)).spacing_mm == (1, 2, 3)


def test_metadata_without_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "meta.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(CTSynthError, match=r"meta.csv: is not a COVID-CTset Patients_metadata.csv.*fix:"):
        CovidCTsetMetadata.load(path)


def test_round_trip_with_sidecar(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 3000, (4, 6, 5)).astype(np.float32)
    hu[0, 0, 0] = -3000  # below the offset: clipped to stored 0
    direction = np.diag([1.0, 1.0, -1.0])
    volume = CTVolume(hu=hu, spacing_mm=(1.25, 0.6, 0.9), origin_mm=(1.0, 2.0, 3.0), direction=direction)
    folder = write_tiff_slices(volume, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["IM00001.tif", "IM00002.tif", "IM00003.tif",
                                                        "IM00004.tif", SIDECAR_NAME]
    stored = tifffile.imread(folder / "IM00001.tif")
    assert stored.dtype == np.uint16 and stored[0, 0] == 0
    sidecar = json.loads((folder / SIDECAR_NAME).read_text())
    assert sidecar["offset_hu"] == -1024 and sidecar["clipped_voxels"] == 1
    back = read_tiff_slices(folder)
    expected = hu.copy()
    expected[0, 0, 0] = -1024
    np.testing.assert_array_equal(back.hu, expected)
    assert back.spacing_mm == volume.spacing_mm and back.origin_mm == volume.origin_mm
    np.testing.assert_array_equal(back.direction, direction)


def test_writer_offset_and_refusals(tmp_path: Path) -> None:
    volume = CTVolume(hu=np.full((2, 3, 3), -500.0, dtype=np.float32), spacing_mm=(1, 1, 1))
    folder = write_tiff_slices(volume, tmp_path / "o", offset=-2048)
    assert tifffile.imread(folder / "IM00001.tif")[0, 0] == 1548
    np.testing.assert_array_equal(read_tiff_slices(folder).hu, volume.hu)
    with pytest.raises(CTSynthError, match="already exists"):
        write_tiff_slices(volume, folder)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(CTSynthError, match="blocker"):
        write_tiff_slices(volume, blocker / "series")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "o"]


def test_bad_slices(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    _slices(folder, ["IM00001.tif", "IM00002.tif"])
    (folder / "IM00003.tif").write_bytes(b"II*\0garbage")
    with pytest.raises(CTSynthError, match=r"IM00003.tif: unreadable TIFF.*fix:"):
        read_tiff_slices(folder)

    truncated = tmp_path / "truncated"
    _slices(truncated, ["IM00001.tif", "IM00002.tif"], shape=(64, 64))
    data = (truncated / "IM00002.tif").read_bytes()
    (truncated / "IM00002.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(CTSynthError, match=r"IM00002.tif: unreadable TIFF"):
        read_tiff_slices(truncated)

    mixed = tmp_path / "mixed"
    _slices(mixed, ["IM00001.tif"], shape=(8, 10))
    _slices(mixed, ["IM00002.tif"], shape=(8, 12))
    with pytest.raises(CTSynthError, match=r"IM00002.tif: slice shape \(8, 12\) differs"):
        read_tiff_slices(mixed)

    eight = tmp_path / "eight"
    eight.mkdir()
    tifffile.imwrite(eight / "IM00001.tif", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(CTSynthError, match="uint8 pixels, not 16-bit"):
        read_tiff_slices(eight)

    display = tmp_path / "display"
    display.mkdir()
    tifffile.imwrite(display / "IM00001.tif", np.full((4, 4), 0.5, dtype=np.float32))
    with pytest.raises(CTSynthError, match=r"float32 pixels: a display copy.*fix: use the 16-bit"):
        read_tiff_slices(display)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CTSynthError, match="no .tif"):
        read_tiff_slices(empty)


def test_multipage_stack_and_signed_note(tmp_path: Path) -> None:
    from ctsynth.io import read_study

    stack = np.arange(3 * 6 * 7, dtype=np.int16).reshape(3, 6, 7) - 100
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    volume = read_study(tmp_path / "stack.tif", offset=0, spacing_mm=(2.0, 0.5, 0.5))
    np.testing.assert_array_equal(volume.hu, stack)
    assert any("--offset 0" in note for note in volume.meta["notes"])
    from ctsynth.io import discover_studies

    (study,) = discover_studies(tmp_path / "stack.tif", offset=0)
    assert study.kind == "tiff" and study.id == "stack" and study.read().shape == (3, 6, 7)


def test_broken_sidecar(tmp_path: Path) -> None:
    _slices(tmp_path / "s", ["IM00001.tif", "IM00002.tif"])
    (tmp_path / "s" / SIDECAR_NAME).write_text('{"spacing_mm": [1, 2]}')
    with pytest.raises(CTSynthError, match=r"ctsynth_tiff.json: cannot read the TIFF geometry file.*spacing_mm"):
        read_tiff_slices(tmp_path / "s")

"""NIfTI reader/writer: round trips, real sform-only files, other readers agree, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctsynth.errors import CTSynthError
from ctsynth.io.nifti import read_nifti, reorient_to_lps, write_nifti
from ctsynth.volume import CTVolume


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _volume(direction: np.ndarray | None = None, shape=(6, 9, 11), seed: int = 0) -> CTVolume:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 3000, shape).astype(np.float32)
    return CTVolume(hu=hu, spacing_mm=(2.5, 0.7, 0.8), origin_mm=(10.0, -20.5, 30.25),
                    direction=np.eye(3) if direction is None else direction)


@pytest.mark.parametrize("direction", [np.eye(3), _rotation_z(20.0)], ids=["identity", "oblique20"])
def test_round_trip_exact(tmp_path: Path, direction: np.ndarray) -> None:
    volume = _volume(direction)
    path = write_nifti(volume, tmp_path / "ct.nii.gz")
    back = read_nifti(path)
    assert back.hu.dtype == np.int16
    np.testing.assert_array_equal(back.hu, volume.hu)
    assert back.spacing_mm == pytest.approx(volume.spacing_mm, abs=1e-6)
    assert back.spacing_mm == (2.5, 0.7, 0.8)  # float32 storage comes back as the decimal that was written
    assert back.origin_mm == pytest.approx(volume.origin_mm, abs=1e-4)
    np.testing.assert_allclose(back.direction, direction, atol=1e-6)


def test_written_header(tmp_path: Path) -> None:
    volume = _volume()
    volume.hu[0, 0, 0] = 40000.0  # out of int16 range: clipped
    volume.hu[0, 0, 1] = -12.6  # rounded
    path = write_nifti(volume, tmp_path / "ct")
    assert path.name == "ct.nii.gz"
    image = nib.load(path)
    header = image.header
    assert header.get_data_dtype() == np.int16
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    assert header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
    data = np.asanyarray(image.dataobj)
    assert data[0, 0, 0] == 32767 and data[1, 0, 0] == -13


def test_flipped_axes_are_reoriented_keeping_world_positions(tmp_path: Path) -> None:
    flipped = np.diag([1.0, -1.0, -1.0])  # y anterior, z inferior: how many pipelines store CT
    volume = _volume(flipped)
    back = read_nifti(write_nifti(volume, tmp_path / "f.nii.gz"))
    np.testing.assert_allclose(back.direction, np.eye(3), atol=1e-6)
    np.testing.assert_array_equal(back.hu, volume.hu[::-1, ::-1, :])
    z, y, x = 2, 3, 4
    world_in = volume.index_to_lps() @ [x, y, z, 1]
    nz, ny, _ = volume.shape
    world_out = back.index_to_lps() @ [x, ny - 1 - y, nz - 1 - z, 1]
    np.testing.assert_allclose(world_out, world_in, atol=1e-4)


def test_sagittal_storage_becomes_axial() -> None:
    # Index x runs superior, y posterior, z left: axial after reorientation.
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    volume = _volume(direction, shape=(4, 5, 6))
    out = reorient_to_lps(volume)
    np.testing.assert_allclose(out.direction, np.eye(3))
    assert out.shape == (6, 5, 4)
    assert out.spacing_mm == (0.8, 0.7, 2.5)
    for zyx in [(0, 0, 0), (1, 2, 3), (3, 4, 5)]:
        z, y, x = zyx
        world = volume.index_to_lps() @ [x, y, z, 1]
        index = np.linalg.solve(out.index_to_lps(), world)
        i = np.rint(index[:3]).astype(int)
        assert out.hu[i[2], i[1], i[0]] == volume.hu[z, y, x]


def test_simpleitk_and_nibabel_read_our_export_the_same(tmp_path: Path) -> None:
    import SimpleITK as sitk
    volume = _volume(_rotation_z(15.0))
    path = write_nifti(volume, tmp_path / "ct.nii.gz")
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.hu)
    assert image.GetSpacing() == pytest.approx(volume.spacing_mm[::-1], abs=1e-5)
    assert image.GetOrigin() == pytest.approx(volume.origin_mm, abs=1e-4)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), volume.direction, atol=1e-5)
    nib_image = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(nib_image.dataobj).transpose(2, 1, 0), volume.hu)
    assert nib_image.header.get_zooms() == pytest.approx(volume.spacing_mm[::-1], abs=1e-6)


def test_scaled_and_float_storage(tmp_path: Path) -> None:
    stored = np.arange(24, dtype=np.uint16).reshape(2, 3, 4) * 100
    image = nib.Nifti1Image(stored, np.diag([-0.5, -0.5, 2.0, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)
    nib.save(image, tmp_path / "scaled.nii")
    volume = read_nifti(tmp_path / "scaled.nii")
    np.testing.assert_allclose(volume.hu, stored.transpose(2, 1, 0) - 1024.0)
    assert volume.spacing_mm == (2.0, 0.5, 0.5)

    values = np.linspace(-1000, 500, 24, dtype=np.float32).reshape(2, 3, 4, 1)  # 4D with one volume
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "float.nii.gz")
    volume = read_nifti(tmp_path / "float.nii.gz")
    assert volume.hu.dtype == np.float32 and volume.shape == (4, 3, 2)


def test_qform_only(tmp_path: Path) -> None:
    affine = np.diag([-0.75, -0.75, 3.0, 1.0])
    affine[:3, 3] = [100.0, 120.0, -50.0]
    image = nib.Nifti1Image(np.zeros((4, 5, 6), dtype=np.int16), None)
    image.set_qform(affine, code=1)
    image.set_sform(None, code=0)
    nib.save(image, tmp_path / "q.nii.gz")
    volume = read_nifti(tmp_path / "q.nii.gz")
    assert volume.spacing_mm == (3.0, 0.75, 0.75)
    assert volume.origin_mm == pytest.approx((-100.0, -120.0, -50.0))


def test_real_sform_only_nifti(real_ct: Path) -> None:
    path = real_ct / "totalseg_nifti" / "aorta_ct_cropped.nii.gz"
    header = nib.load(path).header
    assert int(header["qform_code"]) == 0 and int(header["sform_code"]) > 0
    volume = read_nifti(path)
    assert volume.shape == tuple(header.get_data_shape()[::-1]) == (164, 126, 120)
    assert volume.spacing_mm == (1.5, 1.5, 1.5)
    assert -1100 < float(volume.hu.min()) < -900 and float(volume.hu.max()) > 1000


def test_real_int32_nifti_stored_left_to_right(real_ct: Path) -> None:
    path = real_ct / "totalseg_nifti" / "example_ct.nii.gz"
    image = nib.load(path)
    assert image.header.get_data_dtype() == np.int32
    volume = read_nifti(path)
    assert volume.spacing_mm == (3.0, 3.0, 3.0)
    np.testing.assert_allclose(volume.direction, np.eye(3))
    raw = np.asanyarray(image.dataobj)  # RAS+ axes: x and y flipped relative to LPS
    np.testing.assert_array_equal(volume.hu, raw.transpose(2, 1, 0)[:, ::-1, ::-1])


def test_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti at all")
    with pytest.raises(CTSynthError, match="junk.nii.gz"):
        read_nifti(junk)

    good = write_nifti(_volume(), tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CTSynthError, match="truncated.nii.gz"):
        read_nifti(truncated)

    nan = np.zeros((3, 3, 3), dtype=np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(CTSynthError, match=r"nan.nii.gz: 1 voxels are NaN"):
        read_nifti(tmp_path / "nan.nii.gz")

    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), dtype=np.int16), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(CTSynthError, match="holds 2 volumes"):
        read_nifti(tmp_path / "4d.nii.gz")

    nib.save(nib.Nifti1Image(np.zeros((3, 3), dtype=np.int16), np.eye(4)), tmp_path / "2d.nii.gz")
    with pytest.raises(CTSynthError, match="2D"):
        read_nifti(tmp_path / "2d.nii.gz")


def test_write_refuses_existing_and_unwritable(tmp_path: Path) -> None:
    volume = _volume()
    path = write_nifti(volume, tmp_path / "ct.nii.gz")
    before = path.read_bytes()
    with pytest.raises(CTSynthError, match="already exists"):
        write_nifti(volume, path)
    assert path.read_bytes() == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CTSynthError, match="file"):
        write_nifti(volume, blocker / "ct.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "file"]


def test_gzip_of_garbage_names_file(tmp_path: Path) -> None:
    path = tmp_path / "gz.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\0" * 400)
    with pytest.raises(CTSynthError, match="gz.nii.gz"):
        read_nifti(path)


def test_misnamed_compression_is_read_by_content(tmp_path: Path) -> None:
    volume = _volume()
    good = write_nifti(volume, tmp_path / "ct.nii.gz")
    plain = tmp_path / "plain_called_gz.nii.gz"
    plain.write_bytes(gzip.decompress(good.read_bytes()))
    gzipped = tmp_path / "gzip_called_nii.nii"
    gzipped.write_bytes(good.read_bytes())
    for path in (plain, gzipped):
        back = read_nifti(path)
        np.testing.assert_array_equal(back.hu, volume.hu)
        assert back.spacing_mm == (2.5, 0.7, 0.8)


@pytest.mark.parametrize("name", ["aorta_ct_cropped", "example_ct"])
def test_real_nifti_matches_simpleitk_voxel_by_world_position(real_ct: Path, name: str) -> None:
    import SimpleITK as sitk
    path = real_ct / "totalseg_nifti" / f"{name}.nii.gz"
    volume = read_nifti(path)
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    assert sorted(array.shape) == sorted(volume.shape)
    rng = np.random.default_rng(0)
    affine = volume.index_to_lps()
    for _ in range(50):
        z, y, x = (int(rng.integers(0, n)) for n in volume.shape)
        world = affine @ [x, y, z, 1.0]
        i, j, k = image.TransformPhysicalPointToIndex(tuple(float(v) for v in world[:3]))
        assert array[k, j, i] == volume.hu[z, y, x]

"""NIfTI (.nii, .nii.gz) to and from :class:`~ctsynth.volume.CTVolume`, with nibabel.

nibabel gives the voxel array indexed ``(i, j, k)`` and an affine mapping ``(i, j, k)`` to RAS millimetres.
CTVolume speaks LPS with arrays indexed ``(z, y, x)``, so the reader flips the first two world axes
(RAS -> LPS) and transposes the array. It then reorients the volume to the nearest LPS-aligned index order
(x towards the patient's left, y posterior, z superior: how axial DICOM is stored) by permuting and flipping
axes only. That changes no voxel value and no voxel's world position, and it means that a NIfTI saved
sagittally, or with flipped axes as many pipelines write it, arrives in the same orientation as a DICOM
series, which the models and the lung-box crop rely on. Oblique (rotated) directions stay as they are.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import CTSynthError
from ..volume import CTVolume
from .atomic import atomic_file
from .orientation import reorient_to_lps  # noqa: F401  (the one owner; re-exported for callers)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def is_nifti_path(path: str | Path) -> bool:
    """True for names ending in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _load(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise CTSynthError("no such NIfTI file", path, "check the path")
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        if gzipped != path.name.lower().endswith(".gz"):
            # Misnamed: a plain .nii called .nii.gz, or a gzipped file called .nii. Read by content.
            raw = path.read_bytes()
            image = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if gzipped else raw)
        else:
            image = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, nib.wrapstruct.WrapStructError, nib.spatialimages.HeaderDataError,
            EOFError, OSError, ValueError, zlib.error) as exc:
        raise CTSynthError(f"not a readable NIfTI file ({exc})", path,
                           "re-export it as .nii or .nii.gz, or remove it from the data folder") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CTSynthError(f"not a NIfTI-1/2 image ({type(image).__name__})", path, "convert it to .nii.gz")
    return image


def _f32(value: float) -> float:
    """The shortest decimal that rounds to the same float32: NIfTI stores geometry as float32, so 0.7 mm comes
    back as 0.7, not 0.699999988."""
    return float(str(np.float32(value)))


def read_nifti(path: str | Path, *, reorient: bool = True) -> CTVolume:
    """Read a .nii/.nii.gz CT into HU (scl_slope/scl_inter applied) with LPS geometry.

    Any affine is accepted (sform, qform or both; nibabel picks sform when its code is set). Integer data
    without scaling stays int16 when it fits; everything else becomes float32. A 4D file with a single
    volume is accepted; more volumes, fewer than 3 dimensions, or NaN/inf voxels are refused.
    """
    path = Path(path)
    image = _load(path)
    shape = image.shape
    if len(shape) < 3:
        raise CTSynthError(f"is {len(shape)}D (shape {shape}), not a 3D CT volume", path,
                           "give a 3D NIfTI volume")
    if len(shape) > 3 and int(np.prod(shape[3:])) != 1:
        raise CTSynthError(f"holds {int(np.prod(shape[3:]))} volumes (shape {shape}), not one 3D CT", path,
                           "split it into one 3D file per volume (e.g. fslsplit) and give one")
    try:
        data = np.asanyarray(image.dataobj)
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise CTSynthError(f"the voxel data cannot be read; the file looks truncated or corrupt ({exc})", path,
                           "re-export or re-download the file") from exc
    data = data.reshape(shape[:3])
    if np.issubdtype(data.dtype, np.integer):
        if data.dtype.itemsize <= 2 and data.dtype != np.uint16:
            data = data.astype(np.int16, copy=False)
        elif data.size and data.min() >= -32768 and data.max() <= 32767:
            data = data.astype(np.int16)
        else:
            data = data.astype(np.float32)
    elif np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32, copy=False)
        bad = ~np.isfinite(data)
        if bad.any():
            raise CTSynthError(f"{int(bad.sum())} voxels are NaN or infinite", path,
                               "fix or mask those voxels in the file (e.g. replace them with -1024)")
    else:
        raise CTSynthError(f"voxel type {data.dtype} is not a CT intensity type", path,
                           "give a NIfTI with integer or float voxels in HU")

    affine = _RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)[:3, :]
    columns = affine[:3, :3]
    spacing_xyz = np.linalg.norm(columns, axis=0)
    if not np.all(spacing_xyz > 0) or not np.all(np.isfinite(affine)):
        raise CTSynthError(f"the affine is degenerate (voxel sizes {spacing_xyz.tolist()})", path,
                           "fix the file's sform/qform (e.g. with nibabel or fslorient)")
    header = image.header
    notes = []
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        notes.append("no sform or qform in the header: orientation unknown, geometry from the voxel sizes only")
    meta = {
        "notes": notes,
        "format": "nifti",
        "nifti_storage_dtype": str(header.get_data_dtype()),
        "nifti_sform_code": int(header["sform_code"]),
        "nifti_qform_code": int(header["qform_code"]),
    }
    volume = CTVolume(
        hu=np.ascontiguousarray(np.transpose(data, (2, 1, 0))),
        spacing_mm=(_f32(spacing_xyz[2]), _f32(spacing_xyz[1]), _f32(spacing_xyz[0])),
        origin_mm=tuple(_f32(v) for v in affine[:3, 3]),
        direction=columns / spacing_xyz[None, :],
        source=str(path),
        meta=meta,
    )
    return reorient_to_lps(volume) if reorient else volume


def nifti_affine(volume: CTVolume) -> np.ndarray:
    """The 4x4 RAS affine nibabel expects for ``volume`` stored as an (x, y, z) array."""
    affine = volume.index_to_lps()
    affine[:3, :] = _RAS_TO_LPS @ affine[:3, :]
    return affine


def hu_to_int16(hu: np.ndarray) -> np.ndarray:
    """Round and clip HU to int16 (the storage type of every ctsynth export)."""
    if hu.dtype == np.int16:
        return hu
    info = np.iinfo(np.int16)
    out = np.empty(hu.shape, dtype=np.int16)
    for k in range(hu.shape[0]):  # slice by slice: no full-size float temporaries
        out[k] = np.clip(np.rint(hu[k]), info.min, info.max)
    return out


def write_nifti(volume: CTVolume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``volume`` as int16 HU NIfTI with both sform and qform (code 1, scanner) and mm units.

    ``path`` keeps a .nii or .nii.gz suffix; any other name gets ``.nii.gz`` appended. Atomic: the file is
    written beside the target and renamed into place. No metadata from the input is copied.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        path = path.with_name(path.name + ".nii.gz")
    if path.exists() and not overwrite:
        raise CTSynthError("the output already exists; nothing was written", path,
                           "remove it, choose another name, or pass --overwrite")
    if path.is_dir():
        raise CTSynthError("the output is a folder, not a file name", path, "give a file name ending in .nii.gz")
    data = np.ascontiguousarray(np.transpose(hu_to_int16(volume.hu), (2, 1, 0)))
    affine = nifti_affine(volume)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    image = nib.Nifti1Image(data, affine, header)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(1.0, 0.0)
    image.header["descrip"] = b"ctsynth"
    with atomic_file(path) as tmp:
        nib.save(image, str(tmp))
    return path

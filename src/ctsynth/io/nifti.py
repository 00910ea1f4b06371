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

from ..errors import CTSynthError, reader_boundary
from ..volume import CTVolume
from .atomic import atomic_file
from .library_messages import collect_messages
from .orientation import reorient_to_lps  # noqa: F401  (the one owner; re-exported for callers)
from .plausible import check_finite_hu, check_volume, spacing_problem

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def is_nifti_path(path: str | Path) -> bool:
    """True for names ending in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _raw_header(path: Path, block: bytes):
    """The header as stored, before nibabel's fixes (which turn a negative voxel size positive)."""
    import nibabel as nib

    if len(block) < 348:
        raise CTSynthError(f"the file holds {len(block)} bytes, less than a NIfTI header", path,
                           "re-export or re-download the file")
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        for order in ("<", ">"):
            if int(np.frombuffer(block[:4], dtype=f"{order}i4")[0]) == size:
                return klass(binaryblock=block[:size], endianness=order, check=False)
    raise CTSynthError("not a NIfTI file (its header size is neither 348 nor 540)", path,
                       "re-export it as .nii or .nii.gz, or remove it from the data folder")


def _check_raw_geometry(header, path: Path) -> None:
    """Refuse voxel sizes that only nibabel's silent repairs would make usable.

    When no sform is used, the geometry comes from pixdim (with the qform's rotation): a zero, negative or
    non-finite pixdim is then a corrupt header, not something to take the absolute value of or to replace
    with 1 mm. With a valid sform, pixdim is not used, and the sform itself is checked by `check_volume`.
    """
    if int(header["sform_code"]) > 0:
        return
    pixdim = [float(v) for v in header["pixdim"][1:4]]
    if not all(np.isfinite(pixdim)) or min(pixdim) <= 0:
        form = "qform" if int(header["qform_code"]) > 0 else "pixdim (no sform or qform)"
        raise CTSynthError(f"the voxel size pixdim[1:4] = {pixdim} is not positive and finite, and the geometry "
                           f"comes from the {form}", path,
                           "fix the header's voxel sizes (e.g. nibabel set_zooms) or re-export the file")
    if int(header["qform_code"]) > 0:
        quatern = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                                              "qoffset_z")]
        if not all(np.isfinite(quatern)) or sum(q * q for q in quatern[:3]) > 1.0 + 1e-3:
            raise CTSynthError(f"the qform quaternion or offset {quatern} is not a rotation and a position", path,
                               "fix the header's qform or re-export the file")


def _check_data_size(path: Path, header, file_size: int) -> None:
    """The voxel bytes after vox_offset must be what dim x datatype say; a changed dim otherwise reads a
    smaller volume out of the same bytes without a word."""
    shape = header.get_data_shape()
    needed = int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    have = file_size - int(header["vox_offset"])
    if have != needed:
        raise CTSynthError(f"the file holds {have} bytes of voxel data, but its header (dim {list(shape)}, "
                           f"{header.get_data_dtype()}) needs {needed}: the header or the data is corrupt", path,
                           "re-export or re-download the file")


def _load(path: Path):
    """The nibabel image, after the raw header and the data size are checked.

    A .nii is memory-mapped by nibabel. A .nii.gz (or a gzipped file by any name) is decompressed here in
    full: that checks the gzip CRC, which nibabel's partial reads skip, so a flipped byte in the compressed
    stream is an error instead of silently different voxels.
    """
    import nibabel as nib

    if not path.is_file():
        raise CTSynthError("no such NIfTI file", path, "check the path")
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        plain = gzip.decompress(path.read_bytes()) if gzipped else None
        if plain is None:
            with open(path, "rb") as fh:
                block = fh.read(540)
            file_size = path.stat().st_size
        else:
            block, file_size = plain[:540], len(plain)
        raw_header = _raw_header(path, block)
        _check_raw_geometry(raw_header, path)
        _check_data_size(path, raw_header, file_size)
        if plain is not None:
            klass = nib.Nifti2Image if isinstance(raw_header, nib.Nifti2Header) else nib.Nifti1Image
            image = klass.from_bytes(plain)
        elif path.name.lower().endswith(".gz"):  # a plain .nii called .nii.gz: read by content
            image = nib.Nifti1Image.from_bytes(path.read_bytes()) if isinstance(raw_header, nib.Nifti1Header) \
                else nib.Nifti2Image.from_bytes(path.read_bytes())
        else:
            image = nib.load(str(path))
    except CTSynthError:
        raise
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
    with reader_boundary(path, "NIfTI file"), collect_messages("nibabel", "nibabel.global") as messages:
        volume = _read_nifti(path)
    if messages:
        volume.meta["notes"] = volume.meta["notes"] + [f"nibabel: {m}" for m in dict.fromkeys(messages)]
    check_volume(volume, path, "fix the file's sform/qform and voxel sizes, or re-export it")
    return reorient_to_lps(volume) if reorient else volume


def _read_nifti(path: Path) -> CTVolume:
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
    problem = spacing_problem(spacing_xyz[::-1], "voxel size (z, y, x)")
    if problem:
        raise CTSynthError(problem, path, "fix the file's sform/qform and voxel sizes, or re-export it")
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
    return CTVolume(
        hu=np.ascontiguousarray(np.transpose(data, (2, 1, 0))),
        spacing_mm=(_f32(spacing_xyz[2]), _f32(spacing_xyz[1]), _f32(spacing_xyz[0])),
        origin_mm=tuple(_f32(v) for v in affine[:3, 3]),
        direction=columns / spacing_xyz[None, :],
        source=str(path),
        meta=meta,
    )


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
    check_finite_hu(volume.hu, path)
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
    with atomic_file(path, needed_bytes=data.nbytes + 352) as tmp:  # uncompressed size: an upper bound
        nib.save(image, str(tmp))
    return path

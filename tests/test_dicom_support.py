"""Builders for the DICOM tests: small synthetic volumes, written with ctsynth's writer, edited with pydicom.

Kept in a test module (collected, but it holds no tests of its own beyond a self-check) so the other
test_dicom_* files can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pydicom

from ctsynth.io.dicom_writer import write_dicom_series
from ctsynth.volume import CTVolume


def synthetic_volume(shape: tuple[int, int, int] = (6, 24, 28), spacing: tuple[float, float, float] = (2.0, 0.75, 0.8),
                     origin: tuple[float, float, float] = (-12.0, 30.0, -100.0), direction: np.ndarray | None = None,
                     seed: int = 0, label: str | None = None) -> CTVolume:
    """A body-like phantom: air, an ellipse of soft tissue with a darker 'lung' inside and a bone dot, noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    body = (y / 0.9) ** 2 + (x / 0.8) ** 2 < 1
    hu[body] = 40.0
    hu[body & ((y / 0.5) ** 2 + ((x - 0.3) / 0.3) ** 2 < 1)] = -850.0
    hu[(y + 0.6) ** 2 + x ** 2 < 0.02] = 1200.0
    hu += 10.0 * z  # a slow ramp along z so that slice order matters
    hu += rng.normal(0, 15, shape)
    return CTVolume(hu=hu.astype(np.float32), spacing_mm=spacing, origin_mm=origin,
                    direction=np.eye(3) if direction is None else direction, label=label)


def rotation(ax: float = 0.3, az: float = 0.5) -> np.ndarray:
    """A proper rotation (det +1): about x by ``ax`` then about z by ``az`` radians."""
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def write_series(volume: CTVolume, folder: Path) -> list[Path]:
    """Write ``volume`` with ctsynth's writer; returns the files in slice order."""
    write_dicom_series(volume, folder)
    return sorted(folder.glob("IM*.dcm"))


def edit(path: Path, change: Callable[[pydicom.Dataset], None], target: Path | None = None) -> Path:
    """Load a file, let ``change`` edit it, save it (in place or to ``target``)."""
    ds = pydicom.dcmread(path)
    change(ds)
    out = target or path
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_synthetic_volume_is_deterministic() -> None:
    a, b = synthetic_volume(seed=3), synthetic_volume(seed=3)
    assert np.array_equal(a.hu, b.hu)
    assert not np.array_equal(a.hu, synthetic_volume(seed=4).hu)


def write_enhanced_ct(volume: CTVolume, path: Path, order: list[int] | None = None) -> Path:
    """An Enhanced CT Image Storage file (one multi-frame file) holding ``volume``, frames in ``order``.

    Orientation, pixel measures and rescale are shared functional groups; positions are per frame.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    order = list(range(volume.shape[0])) if order is None else order
    stored = np.rint(volume.hu).astype(np.int16) + 1024  # intercept -1024, like many scanners
    positions = volume.slice_positions_lps()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName, ds.PatientID = "TEST^ENHANCED", "enh"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in (*volume.direction[:, 0], *volume.direction[:, 1])]
    measures = Dataset()
    measures.PixelSpacing = [f"{volume.spacing_mm[1]:g}", f"{volume.spacing_mm[2]:g}"]
    measures.SliceThickness = f"{volume.spacing_mm[0]:g}"
    rescale = Dataset()
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = "-1024", "1", "HU"
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = stored[order].astype("<i2").tobytes()
    ds["PixelData"].VR = "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path

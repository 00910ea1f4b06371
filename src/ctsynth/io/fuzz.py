"""A seeded mutation fuzzer for the readers: DICOM series, NIfTI files and TIFF slice folders.

Each case builds valid input from a small constructed volume (written with ctsynth's own writers), corrupts
one file in one way (truncation, flipped bytes, a changed tag value or VR, a zero or huge length, a
relabelled transfer syntax, missing pixel data, inconsistent Rows/Columns, bad spacing strings ...), reads
it the way a user does (``read_study``) and sorts the result into an outcome:

- ``clean_error``: one-line `CTSynthError` naming the corrupt file;
- ``identical``: read as if nothing had happened; ``noted``: read, with a note naming the file;
- ``changed``: read without a note, values differ (a flipped pixel byte cannot be detected; informational);
- bad outcomes, which the tests and the benchmark require to be zero: ``traceback`` (any other exception),
  ``silent_drop`` (fewer slices than files, no note naming the file), ``nonfinite_hu``,
  ``absurd_geometry`` (spacing outside 0.05-50 mm or non-finite geometry accepted), ``error_names_other``
  (the refusal names another file, not the corrupt one), ``error_unnamed`` (names no file of the input),
  ``multi_line_error``, ``warning_leaked`` (a library warning escaped the reader).

A DICOM folder is read through discovery as a user's folder is: a file of the series that looks like DICOM but
cannot be read must be refused by name there too (issue #15), so there is no second reading to excuse it.

The engine is deterministic for a seed: case ``i`` of seed ``s`` is always the same bytes and mutation
(DICOM UIDs and dates are derived from the case; `benchmarks/fuzz_readers.py --start i --cases 1` replays it).
Used by ``tests/test_fuzz_readers.py`` (a few hundred cases) and ``benchmarks/fuzz_readers.py``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import shutil
import struct
import tempfile
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CTSynthError
from ..volume import CTVolume

# The limits, kept apart from io/plausible.py on purpose: the oracle must not move with the code it judges.
SPACING_RANGE_MM = (0.05, 50.0)
BAD_OUTCOMES = ("traceback", "silent_drop", "nonfinite_hu", "absurd_geometry", "error_names_other",
                "error_unnamed", "multi_line_error", "warning_leaked")
FORMATS = ("dicom", "nifti", "tiff")

_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"UC", b"UR", b"SQ", b"SV", b"UV"}
_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
        b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
        b"UL", b"UN", b"UR", b"US", b"UT", b"UV"]
_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                      "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70",
                      "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.3.4.5", "", "abc", "1.2.840.10008.1.2.4.201"]
_NUMBERS = ["abc", "nan", "NaN", "inf", "-inf", "1e30", "-3e38", "1e309", "-1e309", "0", "-0", "-1", "1e6", "1e-9",
            "", " ", "1\\2", "0x10", "12345678901234567890", "3.4e38", "-1024", "1", "2.5"]
_SPACINGS = ["abc", "0\\0", "1e6\\1e6", "-1\\-1", "nan\\nan", "0.7", "0.7\\", "\\0.7", "inf\\1", "1e-9\\1e-9",
             "0.7\\0.7\\0.7", "0.04\\0.04", "60\\60", "0.7\\abc", "1e309\\1"]
# Tags (group, element) worth aiming at, with their usual VR.
_DICOM_TARGETS = {
    "RescaleSlope": ((0x0028, 0x1053), b"DS"), "RescaleIntercept": ((0x0028, 0x1052), b"DS"),
    "PixelRepresentation": ((0x0028, 0x0103), b"US"), "BitsAllocated": ((0x0028, 0x0100), b"US"),
    "BitsStored": ((0x0028, 0x0101), b"US"), "HighBit": ((0x0028, 0x0102), b"US"),
    "Rows": ((0x0028, 0x0010), b"US"), "Columns": ((0x0028, 0x0011), b"US"),
    "SamplesPerPixel": ((0x0028, 0x0002), b"US"), "PhotometricInterpretation": ((0x0028, 0x0004), b"CS"),
    "PixelSpacing": ((0x0028, 0x0030), b"DS"), "SliceThickness": ((0x0018, 0x0050), b"DS"),
    "SpacingBetweenSlices": ((0x0018, 0x0088), b"DS"), "ImagePositionPatient": ((0x0020, 0x0032), b"DS"),
    "ImageOrientationPatient": ((0x0020, 0x0037), b"DS"), "SeriesNumber": ((0x0020, 0x0011), b"IS"),
    "InstanceNumber": ((0x0020, 0x0013), b"IS"), "SeriesInstanceUID": ((0x0020, 0x000E), b"UI"),
    "Modality": ((0x0008, 0x0060), b"CS"), "SOPClassUID": ((0x0008, 0x0016), b"UI"),
    "NumberOfFrames": ((0x0028, 0x0008), b"IS"), "PixelData": ((0x7FE0, 0x0010), b"OW"),
    "TransferSyntaxUID": ((0x0002, 0x0010), b"UI"), "SpecificCharacterSet": ((0x0008, 0x0005), b"CS"),
    "ImageType": ((0x0008, 0x0008), b"CS"), "PixelPaddingValue": ((0x0028, 0x0120), b"SS"),
}


@dataclass
class Element:
    """Where one top-level element of a DICOM file sits in its bytes."""

    offset: int  # the tag's first byte
    tag: tuple[int, int]
    vr: bytes | None  # None for implicit VR
    length_at: int
    length_size: int
    value_at: int
    length: int


def walk_elements(data: bytes) -> list[Element]:
    """The top-level elements of a Part 10 file (explicit or implicit VR little endian), in order.

    Stops at the first element it cannot follow; sequences with undefined length end the walk (ctsynth's
    writer puts none at the top level).
    """
    out: list[Element] = []
    pos = 132 if data[128:132] == b"DICM" else 0
    implicit = False
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if group != 0x0002 and implicit:
            length_at, size = pos + 4, 4
            vr = None
        elif vr in _LONG_VRS:
            length_at, size = pos + 8, 4
        else:
            length_at, size = pos + 6, 2
        (length,) = struct.unpack_from("<I" if size == 4 else "<H", data, length_at)
        value_at = length_at + size
        out.append(Element(pos, (group, elem), vr, length_at, size, value_at, length))
        if (group, elem) == (0x0002, 0x0010):
            implicit = data[value_at:value_at + length].rstrip(b"\x00 ") == b"1.2.840.10008.1.2"
        if length == 0xFFFFFFFF:
            break
        pos = value_at + length
    return out


def replace_value(data: bytes, element: Element, value: bytes, *, fix_meta_length: bool = True) -> bytes:
    """``data`` with ``element``'s value replaced (length field updated; padded to even length)."""
    if len(value) % 2:
        value += b"\x00" if element.vr in (b"UI", b"OB", None) else b" "
    if element.length_size == 2 and len(value) > 0xFFFF:
        value = value[:0xFFFE]
    length = struct.pack("<I" if element.length_size == 4 else "<H", len(value))
    out = data[:element.length_at] + length + value + data[element.value_at + element.length:]
    if fix_meta_length and element.tag[0] == 0x0002:
        out = _fix_meta_group_length(out)
    return out


def _fix_meta_group_length(data: bytes) -> bytes:
    elements = walk_elements(data)
    if not elements or elements[0].tag != (0x0002, 0x0000):
        return data
    end = max((e.value_at + e.length for e in elements if e.tag[0] == 0x0002), default=0)
    group_length = end - (elements[0].value_at + elements[0].length)
    at = elements[0].value_at
    return data[:at] + struct.pack("<I", group_length) + data[at + 4:]


def _find(elements: list[Element], tag: tuple[int, int]) -> Element | None:
    return next((e for e in elements if e.tag == tag), None)


# ----------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One fuzz case: the input to read, the file that was corrupted, how, and what a clean read gives."""

    index: int
    fmt: str
    source: Path  # what is passed to read_study
    target: Path  # the corrupted file
    mutation: str
    expected: CTVolume  # the volume a read of the uncorrupted input gives
    n_files: int


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str = ""


def _volume(rng: np.random.Generator) -> CTVolume:
    """A small body-like volume: air, a soft-tissue ellipse, a lung, a bone dot, noise; integer HU."""
    z = int(rng.integers(2, 6))
    y, x = int(rng.integers(8, 25)), int(rng.integers(8, 25))
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z), np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    hu = np.full((z, y, x), -1000.0)
    body = (yy / 0.9) ** 2 + (xx / 0.8) ** 2 < 1
    hu[body] = 40.0
    hu[body & ((yy / 0.5) ** 2 + ((xx - 0.3) / 0.3) ** 2 < 1)] = -850.0
    hu[(yy + 0.6) ** 2 + xx ** 2 < 0.05] = 1200.0
    hu += 10 * zz + rng.normal(0, 15, hu.shape)
    spacing = (float(rng.choice([1.0, 1.25, 2.5, 5.0])), 0.7, 0.7)
    return CTVolume(hu=np.rint(hu).astype(np.int16), spacing_mm=spacing, origin_mm=(-10.0, 20.0, -50.0),
                    direction=np.eye(3))


def _flip_bytes(data: bytes, rng: np.random.Generator, lo: int = 0, hi: int | None = None) -> tuple[bytes, str]:
    hi = len(data) if hi is None else hi
    buf = bytearray(data)
    n = int(rng.integers(1, 9))
    where = sorted(int(p) for p in rng.integers(lo, max(lo + 1, hi), n))
    for p in where:
        buf[p] ^= 1 << int(rng.integers(0, 8)) if rng.random() < 0.5 else int(rng.integers(1, 256))
    return bytes(buf), f"flip {n} byte(s) at {where[:4]}"


def _mutate_dicom(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    elements = walk_elements(data)
    pixel = _find(elements, (0x7FE0, 0x0010))
    header_end = pixel.offset if pixel is not None else len(data)
    kind = rng.choice(["truncate", "flip_header", "flip_any", "tag_value", "tag_value", "tag_value", "vr",
                       "length", "transfer_syntax", "pixel_data", "rows_columns", "spacing", "delete_tag"])
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        return data[:cut], f"truncate to {cut} bytes"
    if kind == "flip_header":
        out, text = _flip_bytes(data, rng, 0, header_end)
        return out, f"header {text}"
    if kind == "flip_any":
        return _flip_bytes(data, rng)
    if kind == "delete_tag":
        element = elements[int(rng.integers(0, len(elements)))]
        end = element.value_at + element.length
        out = data[:element.offset] + data[end:]
        return (_fix_meta_group_length(out) if element.tag[0] == 0x0002 else out), \
            f"delete ({element.tag[0]:04X},{element.tag[1]:04X})"
    if kind == "tag_value":
        name = str(rng.choice(list(_DICOM_TARGETS)))
        element = _find(elements, _DICOM_TARGETS[name][0])
        if element is None:
            return data, f"{name} absent (no change)"
        if element.vr in (b"US", b"SS"):
            value = bytes(rng.choice([b"\x00\x00", b"\xff\xff", b"\x08\x00", b"\x0c\x00", b"\x20\x00",
                                      b"\x01\x00", b"\x02\x00", b"\x00\x80", b"\x10\x00", b"\x07\x00", b"",
                                      b"\x10\x00\x10\x00", b"\x01"]))
        elif name == "PixelData":
            value = bytes(rng.choice([b"", b"\x00" * 2, data[element.value_at:element.value_at + element.length // 2],
                                      data[element.value_at:element.value_at + element.length] * 2]))
        elif name in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"):
            value = str(rng.choice(_SPACINGS + _NUMBERS + ["1\\0\\0\\0\\1\\0", "0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0",
                                                          "0\\0\\1e6", "nan\\0\\0", "1e6\\1e6\\1e6"])).encode()
        elif name == "TransferSyntaxUID":
            value = str(rng.choice(_TRANSFER_SYNTAXES)).encode()
        else:
            value = str(rng.choice(_NUMBERS + ["CT", "MR", "", "1.2.3", "ORIGINAL\\PRIMARY\\LOCALIZER",
                                               "RGB", "MONOCHROME1", "ISO_IR 999"])).encode()
        return replace_value(data, element, value), f"{name} = {value[:40]!r}"
    if kind == "vr":
        element = elements[int(rng.integers(0, len(elements)))]
        if element.vr is None:
            return data, "implicit VR element (no change)"
        vr = _VRS[int(rng.integers(0, len(_VRS)))] if rng.random() < 0.8 else bytes(rng.integers(0, 256, 2).tolist())
        out = data[:element.offset + 4] + vr + data[element.offset + 6:]
        return out, f"VR of ({element.tag[0]:04X},{element.tag[1]:04X}) {element.vr!r} -> {vr!r}"
    if kind == "length":
        element = elements[int(rng.integers(0, len(elements)))]
        values = [0, 1, 0xFFFF, 0x7FFF, element.length + 2, max(0, element.length - 2)]
        if element.length_size == 4:
            values += [0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, len(data)]
        value = int(rng.choice(values))
        out = data[:element.length_at] + struct.pack("<I" if element.length_size == 4 else "<H", value) \
            + data[element.length_at + element.length_size:]
        return out, f"length of ({element.tag[0]:04X},{element.tag[1]:04X}) {element.length} -> {value}"
    if kind == "transfer_syntax":
        element = _find(elements, (0x0002, 0x0010))
        value = str(rng.choice(_TRANSFER_SYNTAXES)).encode()
        return replace_value(data, element, value), f"TransferSyntaxUID relabelled {value!r}"
    if kind == "pixel_data":
        if pixel is None:
            return data, "no pixel data (no change)"
        choice = rng.choice(["remove", "empty", "half", "odd"])
        if choice == "remove":
            return data[:pixel.offset], "pixel data removed"
        if choice == "empty":
            return replace_value(data, pixel, b""), "pixel data empty"
        if choice == "half":
            return replace_value(data, pixel, data[pixel.value_at:pixel.value_at + pixel.length // 2]), "pixel data halved"
        return replace_value(data, pixel, data[pixel.value_at:pixel.value_at + pixel.length] + b"\x01\x02\x03\x04"), \
            "pixel data 4 bytes longer"
    if kind == "rows_columns":
        name = str(rng.choice(["Rows", "Columns"]))
        element = _find(elements, _DICOM_TARGETS[name][0])
        current = struct.unpack_from("<H", data, element.value_at)[0]
        value = int(rng.choice([current + 1, current - 1, current * 2, current // 2, 0, 65535]))
        return replace_value(data, element, struct.pack("<H", max(0, min(65535, value)))), f"{name} {current} -> {value}"
    # spacing
    name = str(rng.choice(["PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient"]))
    element = _find(elements, _DICOM_TARGETS[name][0])
    value = str(rng.choice(_SPACINGS if name == "PixelSpacing" else _NUMBERS + ["0\\0\\1e6", "1e6\\0\\0"])).encode()
    return replace_value(data, element, value), f"{name} = {value!r}"


def _fixed_identity(ds, index: int, k: int) -> None:
    """UIDs, dates and times derived from the case, so a case is the same bytes every time it is built
    (the writer makes fresh UIDs of varying length, which would move every later byte)."""
    from pydicom.uid import generate_uid

    series = generate_uid(entropy_srcs=[f"fuzz-{index}-series"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"fuzz-{index}-study"])
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[f"fuzz-{index}-frame"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"fuzz-{index}-{k}"])
    ds.PatientID = "ctsynth-fuzz"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20261204"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"


def _dicom_case(index: int, rng: np.random.Generator, root: Path) -> Case:
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    from .dicom_writer import write_dicom_series

    volume = _volume(rng)
    folder = root / "series"
    write_dicom_series(volume, folder)
    files = sorted(folder.glob("IM*.dcm"))
    variant = rng.choice(["plain", "plain", "plain", "implicit", "rle"])
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        _fixed_identity(ds, index, k)
        if variant == "rle":
            ds.compress(RLELossless)
        elif variant == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(f, enforce_file_format=True)
    target = files[int(rng.integers(0, len(files)))]
    mutated, what = _mutate_dicom(target.read_bytes(), rng)
    target.write_bytes(mutated)
    return Case(index, "dicom", folder, target, f"{variant}: {what}", volume, len(files))


def _mutate_nifti_header(image, rng: np.random.Generator) -> str:
    header = image.header
    field_name = str(rng.choice(["pixdim", "pixdim", "qform", "sform", "scl", "dim", "vox_offset", "datatype",
                                 "qform_only", "quatern"]))
    if field_name == "pixdim":
        axis = int(rng.integers(1, 4))
        value = float(rng.choice([0.0, -1.0, -0.7, 1e30, 1e-9, np.nan, np.inf, 1e6, 0.04, 60.0]))
        header["pixdim"][axis] = value
        return f"pixdim[{axis}] = {value}"
    if field_name == "qform_only":
        header["sform_code"] = 0
        axis = int(rng.integers(1, 4))
        value = float(rng.choice([0.0, -1.0, 1e30, np.nan]))
        header["pixdim"][axis] = value
        return f"qform only, pixdim[{axis}] = {value}"
    if field_name == "quatern":
        key = str(rng.choice(["quatern_b", "quatern_c", "quatern_d", "qoffset_x"]))
        value = float(rng.choice([np.nan, np.inf, 2.0, -5.0, 1e30]))
        header[key] = value
        header["sform_code"] = 0
        return f"qform only, {key} = {value}"
    if field_name in ("qform", "sform"):
        code = int(rng.choice([0, 1, 2, 5, 99, -1]))
        header[f"{field_name}_code"] = code
        if field_name == "sform" and rng.random() < 0.5:
            row = str(rng.choice(["srow_x", "srow_y", "srow_z"]))
            header[row] = np.array([float(rng.choice([0.0, np.nan, 1e30, -1.0]))] * 4)
            return f"sform_code {code}, {row} broken"
        return f"{field_name}_code = {code}"
    if field_name == "scl":
        slope = float(rng.choice([np.nan, np.inf, 0.0, -1.0, 1e30, 1e-30, 2.0]))
        header["scl_slope"] = slope
        header["scl_inter"] = float(rng.choice([0.0, np.nan, -np.inf, 1e30, -1024.0]))
        return f"scl_slope {slope}, scl_inter {float(header['scl_inter'])}"
    if field_name == "dim":
        axis = int(rng.integers(0, 5))
        value = int(rng.choice([0, 1, 2, 4, 8, -1, 32767]))
        header["dim"][axis] = value
        return f"dim[{axis}] = {value}"
    if field_name == "vox_offset":
        value = float(rng.choice([0.0, 100.0, 1e9, 351.0, -1.0]))
        header["vox_offset"] = value
        return f"vox_offset = {value}"
    value = int(rng.choice([0, 1, 2, 16, 64, 128, 2304, 255]))
    header["datatype"] = value
    return f"datatype = {value}"


def _nifti_case(index: int, rng: np.random.Generator, root: Path) -> Case:
    import nibabel as nib

    from .nifti import write_nifti

    volume = _volume(rng)
    gz = rng.random() < 0.3
    path = write_nifti(volume, root / ("ct.nii.gz" if gz else "ct.nii"))
    kind = str(rng.choice(["header", "header", "header", "truncate", "flip", "flip_header"]))
    data = path.read_bytes()
    if kind == "header":
        plain = gzip.decompress(data) if gz else data
        raw = nib.Nifti1Image.from_bytes(plain)
        what = _mutate_nifti_header(raw, rng)
        # Write the header bytes straight over the file's (no nibabel clean-up of what we broke).
        header_bytes = raw.header.binaryblock
        plain = header_bytes + plain[len(header_bytes):]
        path.write_bytes(gzip.compress(plain) if gz else plain)
    elif kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        path.write_bytes(data[:cut])
        what = f"truncate to {cut} bytes"
    elif kind == "flip_header":
        out, what = _flip_bytes(data, rng, 0, 348 if not gz else len(data))
        path.write_bytes(out)
    else:
        out, what = _flip_bytes(data, rng)
        path.write_bytes(out)
    return Case(index, "nifti", path, path, f"{'gz' if gz else 'nii'}: {what}", volume, 1)


def _tiff_case(index: int, rng: np.random.Generator, root: Path) -> Case:
    import tifffile

    from .tiff import SIDECAR_NAME, write_tiff_slices

    volume = _volume(rng)
    folder = write_tiff_slices(volume, root / "slices")
    files = sorted(folder.glob("IM*.tif"))
    kind = str(rng.choice(["truncate", "flip", "dtype", "dtype", "shape", "empty", "sidecar", "sidecar"]))
    target = files[int(rng.integers(0, len(files)))]
    if kind == "truncate":
        data = target.read_bytes()
        cut = int(rng.integers(0, len(data)))
        target.write_bytes(data[:cut])
        what = f"truncate to {cut} bytes"
    elif kind == "flip":
        out, what = _flip_bytes(target.read_bytes(), rng)
        target.write_bytes(out)
    elif kind == "dtype":
        image = tifffile.imread(target)
        dtype = str(rng.choice(["int16", "uint8", "int32", "uint32", "float32", "float64", "int8"]))
        tifffile.imwrite(target, image.astype(dtype), photometric="minisblack")
        what = f"slice stored as {dtype}"
    elif kind == "shape":
        image = tifffile.imread(target)
        choice = str(rng.choice(["crop", "rgb", "stack"]))
        if choice == "crop":
            tifffile.imwrite(target, image[:-1], photometric="minisblack")
        elif choice == "rgb":
            tifffile.imwrite(target, np.stack([image] * 3, axis=-1), photometric="rgb")
        else:
            tifffile.imwrite(target, np.stack([image] * 2), photometric="minisblack")
        what = f"slice shape changed ({choice})"
    elif kind == "empty":
        target.write_bytes(b"")
        what = "empty file"
    else:
        target = folder / SIDECAR_NAME
        sidecar = json.loads(target.read_text())
        key = str(rng.choice(["spacing_mm", "offset_hu", "origin_mm", "direction"]))
        bad = rng.choice([0, 1e6, -1, "abc", None, 1e309, 1e-9, 60])
        if key == "offset_hu":
            sidecar[key] = bad if not isinstance(bad, float) or np.isfinite(bad) else "nan"
        elif key == "direction":
            sidecar[key] = [[float(bad) if isinstance(bad, (int, float)) and np.isfinite(bad) else 0.0] * 3] * 3
        else:
            sidecar[key] = [bad, 0.7, 0.7] if key == "spacing_mm" else [bad, 0.0, 0.0]
        text = json.dumps(sidecar).replace("Infinity", "1e309")
        target.write_text(text)
        what = f"{SIDECAR_NAME} {key} = {bad!r}"
    return Case(index, "tiff", folder, target, what, volume, len(files))


_BUILDERS: dict[str, Callable[[int, np.random.Generator, Path], Case]] = {
    "dicom": _dicom_case, "nifti": _nifti_case, "tiff": _tiff_case}


def make_case(index: int, seed: int, root: Path, fmt: str | None = None) -> Case:
    """Case ``index`` of ``seed`` built under ``root`` (an empty folder)."""
    rng = np.random.default_rng([seed, index])
    fmt = fmt or str(rng.choice(FORMATS, p=[0.6, 0.2, 0.2]))
    return _BUILDERS[fmt](index, rng, root)


# ---------------------------------------------------------------------------------------------- outcome


def _names(text: str, path: Path) -> bool:
    return path.name in text


def _plausible(volume: CTVolume) -> str | None:
    lo, hi = SPACING_RANGE_MM
    spacing = np.asarray(volume.spacing_mm, dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or spacing.min() < lo or spacing.max() > hi:
        return f"spacing {volume.spacing_mm}"
    if not np.all(np.isfinite(volume.origin_mm)) or np.abs(volume.origin_mm).max() > 1e5:
        return f"origin {volume.origin_mm}"
    direction = np.asarray(volume.direction, dtype=np.float64)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        return "direction not orthonormal"
    return None


class _PrintedRecords(logging.Handler):
    """Collects the log records a user would see: those that reach a real handler (or logging's last resort)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.printed: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        logger: logging.Logger | None = logging.getLogger(record.name)
        shown = False
        found_any = False
        while logger is not None:
            for handler in logger.handlers:
                if handler is self:
                    continue
                found_any = True
                if not isinstance(handler, logging.NullHandler) and record.levelno >= handler.level:
                    shown = True
            if not logger.propagate:
                break
            logger = logger.parent
        if shown or (not found_any and record.levelno >= logging.WARNING):
            self.printed.append(record.getMessage())


def classify(case: Case, read: Callable[[Path], CTVolume]) -> Result:
    """Read ``case.source`` with ``read`` and sort the result into an outcome (see the module docstring)."""
    stderr = io.StringIO()
    handler = _PrintedRecords()
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
            warnings.simplefilter("always")
            try:
                volume = read(case.source)
            except CTSynthError as exc:
                return _classify_error(case, str(exc))
            except Exception:  # noqa: BLE001 - the point of the fuzzer
                return Result(case, "traceback", traceback.format_exc(limit=-3))
    finally:
        root_logger.removeHandler(handler)
    leaked = [str(w.message) for w in caught] + handler.printed + \
        ([stderr.getvalue()] if stderr.getvalue().strip() else [])
    hu = np.asarray(volume.hu)
    if hu.dtype.kind == "f" and not np.all(np.isfinite(hu)):
        return Result(case, "nonfinite_hu", f"{int((~np.isfinite(hu)).sum())} voxels")
    absurd = _plausible(volume)
    if absurd:
        return Result(case, "absurd_geometry", absurd)
    if leaked:
        return Result(case, "warning_leaked", leaked[0][:200])
    notes = " ".join(volume.meta.get("notes", []))
    expected = case.expected
    same_geometry = volume.shape == expected.shape and np.allclose(volume.spacing_mm, expected.spacing_mm, atol=1e-4) \
        and np.allclose(volume.origin_mm, expected.origin_mm, atol=1e-3) \
        and np.allclose(volume.direction, expected.direction, atol=1e-5)
    if same_geometry and np.array_equal(np.rint(hu), np.rint(np.asarray(expected.hu, dtype=np.float64))):
        return Result(case, "identical")
    if _names(notes, case.target):
        return Result(case, "noted", notes[:200])
    if volume.shape[0] < expected.shape[0]:
        return Result(case, "silent_drop", f"{volume.shape[0]} of {expected.shape[0]} slices; notes: {notes[:200]}")
    return Result(case, "changed", notes[:200])


def _classify_error(case: Case, text: str) -> Result:
    if "\n" in text:
        return Result(case, "multi_line_error", text[:300])
    if _names(text, case.target):
        return Result(case, "clean_error", text[:300])
    others = [p for p in case.source.parent.rglob("*") if p.is_file() and p != case.target]
    if any(p.name in text for p in others if p.name.startswith("IM")):
        return Result(case, "error_names_other", text[:300])
    return Result(case, "error_unnamed", text[:300])


def read_as_user(source: Path) -> CTVolume:
    """What ``ctsynth convert`` does with IN."""
    from .read import read_study

    return read_study(source)


def run_case(index: int, seed: int, fmt: str | None = None, work: Path | None = None) -> Result:
    """Build, read and classify one case in a fresh temporary folder (removed afterwards)."""
    folder = Path(tempfile.mkdtemp(prefix="ctsynth-fuzz-", dir=work))
    try:
        case = make_case(index, seed, folder, fmt)
        return classify(case, read_as_user)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    by_format: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        self.counts[result.outcome] += 1
        self.by_format.setdefault(result.case.fmt, Counter())[result.outcome] += 1
        if result.outcome in BAD_OUTCOMES:
            examples = self.examples.setdefault(result.outcome, [])
            if len(examples) < 8:
                examples.append(f"case {result.case.index} {result.case.fmt} {result.case.mutation}: "
                                f"{' '.join(result.detail.split())[:300]}")

    @property
    def bad(self) -> int:
        return sum(self.counts[o] for o in BAD_OUTCOMES)


def run_cases(indices, seed: int, fmt: str | None = None) -> Summary:
    summary = Summary()
    for index in indices:
        summary.add(run_case(index, seed, fmt))
    return summary

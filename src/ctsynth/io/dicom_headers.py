"""One DICOM file's header, read without its pixels, reduced to what stacking a CT series needs.

`read_slice_headers` opens a file once, parses the header with pydicom (``stop_before_pixels``) and, for
uncompressed little-endian files, remembers where the pixel data starts so the decoder can read it with one
``seek`` + ``read`` instead of parsing the header a second time (see ``dicom_pixels``).

Nothing identifying is kept: no names or dates; the UIDs only as grouping keys and the series description
only for listing series to the user. Neither is ever copied into a volume's ``meta``.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .dicom_tags import read_needed_elements

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Image storage classes whose files must carry pixel data: one that ends without any was cut short.
_IMAGE_SOP_CLASSES = {
    CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, "1.2.840.10008.5.1.4.1.1.2.2",  # CT, enhanced, legacy enhanced
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",  # MR
    "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20",  # PET, NM
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7",  # CR, DX, SC
}
_NATIVE_LITTLE_ENDIAN = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_VALID_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
              b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
              b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV"}


FAST_HEADERS = True  # False: every header parsed in full by dcmread (tests compare the two)


class NotDicomError(Exception):
    """The file does not look like DICOM at all (no 'DICM' marker, no plausible raw dataset start)."""


class BrokenDicomError(Exception):
    """The file looks like DICOM but its header cannot be parsed (truncated or corrupt)."""


@dataclass(slots=True)  # slots: 100,000 headers of a big export stay small in memory
class SliceHeader:
    """The header fields of one image file that stacking, decoding and HU conversion need."""

    path: Path
    series_uid: str
    frame_of_reference: str
    series_number: str
    modality: str
    sop_class: str
    image_type: tuple[str, ...]
    position: np.ndarray | None  # ImagePositionPatient (x, y, z) LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float] | None  # (row spacing = y, column spacing = x) mm
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    slope: float
    intercept: float
    has_rescale: bool
    has_pixels: bool
    transfer_syntax: str
    pixel_offset: int | None  # byte offset of the (7FE0,0010) element for native little-endian files
    explicit_vr: bool
    instance_number: int | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    padding_value: float | None
    gantry_tilt: float | None
    description: str
    manufacturer: str
    model: str
    kernel: str
    kvp: float | None
    body_part: str
    frame: int | None = None  # index of this frame in a multi-frame (Enhanced CT) file; None = single-frame
    # Identity (issue #14): kept in memory to group series into studies and patients and to match label rows;
    # only salted tokens of them ever reach an output (ctsynth.io.identity).
    study_uid: str = ""
    patient_id: str = ""
    accession: str = ""
    encapsulated_offset: int | None = None  # where (7FE0,0010) starts in a compressed file (ctsynth.io.dicom_codecs)

    @property
    def is_localizer(self) -> bool:
        return any("LOCALIZER" in part.upper() for part in self.image_type)


def sniff_dicom(path: Path) -> str | None:
    """'marker' if the file has the 'DICM' marker at byte 128, 'raw' if it starts like a raw (preamble-less)
    dataset, else None (not DICOM).

    Raw datasets (old ACR-NEMA style exports, some PACS dumps) begin directly with a little-endian tag in
    group 0x0002 or 0x0008, followed either by a valid explicit VR or by a plausible implicit length. Only
    files that pass this check are handed to pydicom with ``force=True``. An unreadable file raises OSError.
    """
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "marker"
    if len(head) < 8:
        return None
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return None
    if head[4:6] in _VALID_VRS:
        return "raw"
    (length,) = struct.unpack("<I", head[4:8])
    return "raw" if length < 1024 else None


@functools.lru_cache(maxsize=None)
def _tag(keyword: str) -> BaseTag:
    """The tag of a keyword, looked up once: pydicom resolves a keyword on every access otherwise, which
    costs more than the header parse itself for a few hundred files."""
    return BaseTag(tag_for_keyword(keyword))


def _ascii(ds: pydicom.Dataset, keyword: str, encoding: str = "ascii") -> str | None:
    """A text value (DS, IS, CS, UI; LO/SH for display only) straight from the raw element when still raw.

    Converting every element through pydicom's value classes (with their validation) costs more than the
    whole parse; for these VRs the raw bytes already are the text, backslash-separated. Free text (LO, SH)
    is decoded as UTF-8 with replacement: it is only shown to the user, never used for decisions.
    """
    elem = ds.get_item(_tag(keyword), keep_deferred=True)  # an empty raw value stays None: no conversion
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode(encoding, "replace").strip(" \x00")
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _binary_int(ds: pydicom.Dataset, keyword: str, signed: bool = False) -> int | None:
    """A US/SS value (Rows, BitsStored ...) from the raw element's two bytes when still raw."""
    elem = ds.get_item(_tag(keyword), keep_deferred=True)  # an empty raw value stays None: no conversion
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        if len(value) < 2:
            return None
        if getattr(elem, "VR", None) in ("SS", "US"):
            signed = elem.VR == "SS"
        order = "little" if getattr(elem, "is_little_endian", True) else "big"
        return int.from_bytes(bytes(value[:2]), order, signed=signed)
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    return _int(value, None)


def _float(value, default: float | None = None) -> float | None:
    try:
        if value is None or value == "":
            return default
        return float(value)
    except (TypeError, ValueError):
        return default


def _int(value, default: int | None = None) -> int | None:
    try:
        if value is None or value == "":
            return default
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return default


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _vector(value, n: int) -> np.ndarray | None:
    if isinstance(value, str):
        value = value.split("\\")
    try:
        if value is None or len(value) != n:
            return None
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if np.all(np.isfinite(out)) else None


def read_slice_headers(path: Path) -> list[SliceHeader] | None:
    """One header per image in the file: one for a classic CT slice, one per frame for Enhanced CT."""
    parsed = _parse_header(Path(path))
    if parsed is None:
        return None
    header, ds = parsed
    if header.frames > 1 and header.has_pixels and "PerFrameFunctionalGroupsSequence" in ds:
        try:
            return _frame_headers(header, ds)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise BrokenDicomError(f"unreadable per-frame functional groups ({type(exc).__name__}: {exc})") from exc
    return [header]


def _functional_group(ds: pydicom.Dataset, frame_item: pydicom.Dataset | None, sequence: str) -> pydicom.Dataset | None:
    """The item of a functional group macro for one frame: per-frame if present there, else shared."""
    for holder in (frame_item, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and sequence in holder:
            item = _first(holder.get(sequence))
            if item is not None:
                return item
    return None


def _first(sequence) -> pydicom.Dataset | None:
    try:
        return sequence[0] if sequence is not None and len(sequence) else None
    except (TypeError, IndexError):
        return None


def _frame_headers(header: SliceHeader, ds: pydicom.Dataset) -> list[SliceHeader]:
    """Per-frame geometry, rescale and frame type of an Enhanced (multi-frame) CT, as one header per frame."""
    per_frame = ds.PerFrameFunctionalGroupsSequence
    out = []
    for index in range(header.frames):
        item = per_frame[index] if index < len(per_frame) else None
        position = _functional_group(ds, item, "PlanePositionSequence")
        orientation = _functional_group(ds, item, "PlaneOrientationSequence")
        measures = _functional_group(ds, item, "PixelMeasuresSequence")
        rescale = _functional_group(ds, item, "PixelValueTransformationSequence")
        frame_type = _functional_group(ds, item, "CTImageFrameTypeSequence")
        spacing = _vector(measures.get("PixelSpacing") if measures is not None else None, 2)
        image_type = header.image_type
        if frame_type is not None and frame_type.get("FrameType"):
            image_type = tuple(str(v) for v in frame_type.FrameType)
        out.append(dataclasses.replace(
            header,
            frame=index,
            frames=1,
            pixel_offset=None,
            image_type=image_type,
            position=_vector(position.get("ImagePositionPatient") if position is not None else None, 3),
            orientation=_vector(orientation.get("ImageOrientationPatient") if orientation is not None else None, 6),
            pixel_spacing=header.pixel_spacing if spacing is None else (float(spacing[0]), float(spacing[1])),
            slice_thickness=_float(measures.get("SliceThickness") if measures is not None else None,
                                   header.slice_thickness),
            slope=_float(rescale.get("RescaleSlope") if rescale is not None else None, header.slope) or 1.0,
            intercept=_float(rescale.get("RescaleIntercept") if rescale is not None else None, header.intercept),
            has_rescale=header.has_rescale or (rescale is not None and "RescaleIntercept" in rescale),
        ))
    return out


def _parse_header(path: Path) -> tuple[SliceHeader, pydicom.Dataset] | None:
    if path.name.upper() == "DICOMDIR":
        return None
    try:
        kind = sniff_dicom(path)
    except OSError as exc:
        raise BrokenDicomError(f"cannot read the file ({exc.strerror or exc})") from exc
    if kind is None:
        raise NotDicomError(str(path))
    marker = kind == "marker"
    # Only the needed elements, with pydicom's element parser (ctsynth.io.dicom_tags); None: parse in full.
    needed = read_needed_elements(path) if marker and FAST_HEADERS else None
    try:
        if needed is not None:
            ds, end_of_header, next_tag = needed
        else:
            with open(path, "rb") as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                end_of_header = fh.tell()
                next_tag = fh.read(4)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error, OverflowError,
            IndexError, AttributeError) as exc:
        if not marker:  # only a guess that it was DICOM, and the guess was wrong
            raise NotDicomError(str(path)) from exc
        raise BrokenDicomError(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise BrokenDicomError(exc.strerror or str(exc)) from exc

    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return None
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not transfer_syntax:
        # pydicom guessed the encoding of a raw dataset; record what it used.
        implicit = getattr(ds, "original_encoding", (None, None))[0]
        if implicit is None:
            implicit = ds.is_implicit_VR
        transfer_syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    has_pixels = next_tag == _PIXEL_DATA_TAG
    if not marker and not has_pixels and not ("SOPClassUID" in ds or "Modality" in ds or "Rows" in ds):
        raise NotDicomError(str(path))  # parsed "something" from a file that only looked like a raw dataset
    if not has_pixels and not next_tag:
        # pydicom stops quietly at the end of a file; an image file that ends before its pixels is truncated.
        sop_class = str(ds.get("SOPClassUID", "") or media_class)
        if sop_class in _IMAGE_SOP_CLASSES or "Rows" in ds or len(ds) == 0:
            raise BrokenDicomError(f"the file ends after {end_of_header} bytes, before its pixel data")
    native = transfer_syntax in _NATIVE_LITTLE_ENDIAN
    try:
        image_type = tuple(v.strip() for v in (_ascii(ds, "ImageType") or "").split("\\") if v.strip())
        spacing = _vector(_ascii(ds, "PixelSpacing"), 2)
        header = SliceHeader(
            path=path,
            series_uid=_text(_ascii(ds, "SeriesInstanceUID")),
            frame_of_reference=_text(_ascii(ds, "FrameOfReferenceUID")),
            series_number=_text(_ascii(ds, "SeriesNumber")),
            modality=_text(_ascii(ds, "Modality")).upper(),
            sop_class=_text(_ascii(ds, "SOPClassUID")) or media_class,
            image_type=image_type,
            position=_vector(_ascii(ds, "ImagePositionPatient"), 3),
            orientation=_vector(_ascii(ds, "ImageOrientationPatient"), 6),
            pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
            rows=_int(_binary_int(ds, "Rows"), 0) or 0,
            columns=_int(_binary_int(ds, "Columns"), 0) or 0,
            frames=_int(_ascii(ds, "NumberOfFrames"), 1) or 1,
            samples_per_pixel=_int(_binary_int(ds, "SamplesPerPixel"), 1) or 1,
            photometric=_text(_ascii(ds, "PhotometricInterpretation")).upper() or "MONOCHROME2",
            bits_allocated=_int(_binary_int(ds, "BitsAllocated"), 16) or 16,
            bits_stored=_int(_binary_int(ds, "BitsStored"), None) or _int(_binary_int(ds, "BitsAllocated"), 16) or 16,
            pixel_representation=_int(_binary_int(ds, "PixelRepresentation"), 0) or 0,
            slope=_float(_ascii(ds, "RescaleSlope"), 1.0) or 1.0,
            intercept=_float(_ascii(ds, "RescaleIntercept"), 0.0) or 0.0,
            has_rescale="RescaleIntercept" in ds,
            has_pixels=has_pixels,
            transfer_syntax=transfer_syntax,
            pixel_offset=end_of_header if (has_pixels and native) else None,
            explicit_vr=transfer_syntax != ImplicitVRLittleEndian,
            instance_number=_int(_ascii(ds, "InstanceNumber"), None),
            slice_thickness=_float(_ascii(ds, "SliceThickness")),
            spacing_between_slices=_float(_ascii(ds, "SpacingBetweenSlices")),
            padding_value=_float(_binary_int(ds, "PixelPaddingValue", signed=_binary_int(ds, "PixelRepresentation") == 1)),
            gantry_tilt=_float(_ascii(ds, "GantryDetectorTilt")),
            description=_text(_ascii(ds, "SeriesDescription", "utf-8")),
            manufacturer=_text(_ascii(ds, "Manufacturer", "utf-8")),
            model=_text(_ascii(ds, "ManufacturerModelName", "utf-8")),
            kernel=_text(_ascii(ds, "ConvolutionKernel", "utf-8")),
            kvp=_float(_ascii(ds, "KVP")),
            body_part=_text(_ascii(ds, "BodyPartExamined")).upper(),
            study_uid=_text(_ascii(ds, "StudyInstanceUID")),
            patient_id=_text(_ascii(ds, "PatientID", "utf-8")),
            accession=_text(_ascii(ds, "AccessionNumber", "utf-8")),
            encapsulated_offset=end_of_header if (has_pixels and not native) else None,
        )
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # malformed values deep in the header
        raise BrokenDicomError(f"{type(exc).__name__}: {exc}") from exc
    return header, ds


def looks_like_ct(header: SliceHeader) -> bool:
    """Modality CT, or (Modality missing) a CT SOP class or a header with rescale-to-HU tags."""
    if header.modality:
        return header.modality == "CT"
    return header.sop_class in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE) or header.has_rescale

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
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .library_messages import collect_messages

from .dicom_tags import NEEDED_BASE_TAGS, read_needed_elements

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
_PIXEL_DATA_TAG_BIG = b"\x7f\xe0\x00\x10"
RESCALE_SLOPE_RANGE = (1e-3, 1e3)  # CT slopes are 1 (rarely 0.5 or 2); outside this no stored value maps to HU
MAX_RESCALE_INTERCEPT = 1e5  # CT intercepts are 0, -1000, -1024, -8192, -32768
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
    pixel_representation_given: bool = True  # False: the tag is missing (see dicom_pixels' sign check)
    notes: tuple[str, ...] = ()  # what was odd but readable in this file (the reader lists them by name)
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
    costs more than the header parse itself for a few hundred files. The header pass's own tag objects
    where it has them (``NEEDED_BASE_TAGS``): a dict lookup with the identical key skips BaseTag.__eq__."""
    tag = tag_for_keyword(keyword)
    return NEEDED_BASE_TAGS.get(tag) or BaseTag(tag)


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


def read_slice_headers(path: Path) -> list[SliceHeader] | None:
    """One header per image in the file: one for a classic CT slice, one per frame for Enhanced CT."""
    parsed = _parse_header(Path(path))
    if parsed is None:
        return None
    header, ds = parsed
    if header.frames > 1 and header.has_pixels and "PerFrameFunctionalGroupsSequence" in ds:
        try:
            frames = _frame_headers(header, ds)
        except BrokenDicomError:
            if not looks_like_ct(header):
                return [header]  # not CT: skipped with a note either way, its frames are not judged
            raise
        except Exception as exc:  # noqa: BLE001 - any failure inside corrupt functional groups
            raise BrokenDicomError(f"unreadable per-frame functional groups ({type(exc).__name__}: {exc})") from exc
        for frame in frames:
            if looks_like_ct(frame):
                check_header_values(frame)
        return frames
    if looks_like_ct(header):  # other modalities are skipped with a note; their values are not judged
        check_header_values(header)
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
    if len(per_frame) != header.frames:  # one item per frame; a corrupt count would also loop for ever
        raise BrokenDicomError(f"NumberOfFrames {header.frames} but {len(per_frame)} per-frame functional groups")
    out = []
    for index in range(header.frames):
        item = per_frame[index] if index < len(per_frame) else None
        position = _functional_group(ds, item, "PlanePositionSequence")
        orientation = _functional_group(ds, item, "PlaneOrientationSequence")
        measures = _functional_group(ds, item, "PixelMeasuresSequence")
        rescale = _functional_group(ds, item, "PixelValueTransformationSequence")
        frame_type = _functional_group(ds, item, "CTImageFrameTypeSequence")
        spacing = _strict_vector(measures.get("PixelSpacing") if measures is not None else None, 2, "PixelSpacing")
        image_type = header.image_type
        if frame_type is not None and frame_type.get("FrameType"):
            image_type = tuple(str(v) for v in frame_type.FrameType)
        out.append(dataclasses.replace(
            header,
            frame=index,
            frames=1,
            pixel_offset=None,
            image_type=image_type,
            position=_strict_vector(position.get("ImagePositionPatient") if position is not None else None, 3,
                                    "ImagePositionPatient"),
            orientation=_strict_vector(orientation.get("ImageOrientationPatient") if orientation is not None
                                       else None, 6, "ImageOrientationPatient"),
            pixel_spacing=header.pixel_spacing if spacing is None else (float(spacing[0]), float(spacing[1])),
            slice_thickness=_float(measures.get("SliceThickness") if measures is not None else None,
                                   header.slice_thickness),
            slope=_strict_number(rescale.get("RescaleSlope") if rescale is not None else None, "RescaleSlope",
                                 header.slope),
            intercept=_strict_number(rescale.get("RescaleIntercept") if rescale is not None else None,
                                     "RescaleIntercept", header.intercept),
            has_rescale=header.has_rescale or (rescale is not None and "RescaleIntercept" in rescale),
        ))
    return out


def _lenient(parse):
    """The same parser, but a malformed value reads as absent: for files that are not CT (other modalities
    are skipped with a note, and a PET slope of 2e-5 or an odd MR header must not stop a CT series beside
    them from being read)."""
    def parse_or_absent(value, *args):
        try:
            return parse(value, *args)
        except BrokenDicomError:
            return args[-1] if parse is _strict_number else None
    return parse_or_absent


def _strict_number(value, name: str, default: float | None) -> float | None:
    """A DS value that must be a finite number when present (``default`` when absent or empty).

    A present but unreadable value ("abc", "nan", "1e309", two values) is a corrupt header, never a default:
    reading RescaleIntercept "abc" as 0 would shift every HU of the slice by 1024 without a word.
    """
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) != 1:
            raise BrokenDicomError(f"{name} holds {len(value)} values, not one")
        value = value[0]
    if value is None:
        return default
    text = str(value).strip(" \x00")
    if not text:
        return default
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise BrokenDicomError(f"{name} {text[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise BrokenDicomError(f"{name} {text[:40]!r} is not a finite number")
    return number


def _strict_vector(value, n: int, name: str) -> np.ndarray | None:
    """``n`` finite numbers when the element is present (None when absent or empty), else a corrupt header."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        parts = [str(v) for v in value]
    else:
        parts = str(value).strip(" \x00").split("\\")
    if parts in ([], [""]):
        return None
    text = "\\".join(parts)
    try:
        out = np.array([float(v) for v in parts], dtype=np.float64)
    except (TypeError, ValueError):
        raise BrokenDicomError(f"{name} {text[:60]!r} is not {n} numbers") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise BrokenDicomError(f"{name} {text[:60]!r} is not {n} finite numbers")
    return out


def _finite_text(text: str) -> str:
    """An IS/DS value kept for grouping and listing only (SeriesNumber): '' unless it is a finite number."""
    try:
        return text if math.isfinite(float(text)) else ""
    except (TypeError, ValueError):
        return ""


def check_header_values(header: SliceHeader) -> None:
    """Refuse header values no CT slice can have; a `BrokenDicomError` naming the value.

    The checks are on what decides HU and geometry: the pixel layout (BitsAllocated, BitsStored,
    PixelRepresentation, Rows, Columns), the rescale to HU, and the pixel spacing, position and
    orientation. Values that only label a file (descriptions, SeriesNumber) are never a reason to refuse.
    """
    from .plausible import MAX_COORDINATE_MM, direction_problem, spacing_problem

    h = header
    if h.has_pixels:
        if h.rows <= 0 or h.columns <= 0:
            raise BrokenDicomError(f"Rows x Columns is {h.rows} x {h.columns} but the file holds pixel data")
        if h.bits_allocated not in (8, 16, 32):
            raise BrokenDicomError(f"BitsAllocated {h.bits_allocated} is not 8, 16 or 32")
        if not 1 <= h.bits_stored <= h.bits_allocated:
            raise BrokenDicomError(f"BitsStored {h.bits_stored} does not fit BitsAllocated {h.bits_allocated}")
        if h.pixel_representation not in (0, 1):
            raise BrokenDicomError(f"PixelRepresentation {h.pixel_representation} is not 0 (unsigned) or 1 (signed)")
    lo, hi = RESCALE_SLOPE_RANGE
    if not lo <= h.slope <= hi:
        raise BrokenDicomError(f"RescaleSlope {h.slope:g} is outside {lo:g}..{hi:g}: not a CT rescale to HU")
    if abs(h.intercept) > MAX_RESCALE_INTERCEPT:
        raise BrokenDicomError(f"RescaleIntercept {h.intercept:g} is outside +-{MAX_RESCALE_INTERCEPT:g}: "
                               "not a CT rescale to HU")
    if h.pixel_spacing is not None:
        problem = spacing_problem(h.pixel_spacing, "PixelSpacing")
        if problem:
            raise BrokenDicomError(problem)
    if h.position is not None and np.max(np.abs(h.position)) > MAX_COORDINATE_MM:
        raise BrokenDicomError(f"ImagePositionPatient {h.position.tolist()} mm is not a position in a scanner")
    if h.orientation is not None:
        problem = direction_problem(h.orientation.reshape(2, 3).T, "ImageOrientationPatient")
        if problem:
            raise BrokenDicomError(problem)


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
    try:
        # pydicom warns (instead of raising) about elements running past the end of the file and about an
        # encoding that differs from the transfer syntax; both are handled below, so they stay quiet here.
        with collect_messages("pydicom") as messages:
            # Only the needed elements, with pydicom's element parser (ctsynth.io.dicom_tags); None: parse in
            # full. Both give a Dataset that _header_from_dataset turns into a header with the same checks.
            needed = read_needed_elements(path) if marker and FAST_HEADERS else None
            if needed is not None:
                ds, end_of_header, next_tag = needed
            else:
                with open(path, "rb") as fh:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                    end_of_header = fh.tell()
                    next_tag = fh.read(4)
            if any("End of file" in m for m in messages):
                raise BrokenDicomError(f"the file ends after {path.stat().st_size} bytes, inside its header")
            # Values are converted lazily; invalid ones warn here (and are judged by the checks below).
            return _header_from_dataset(path, ds, marker, end_of_header, next_tag)
    except (BrokenDicomError, NotDicomError):
        raise
    except OSError as exc:
        raise BrokenDicomError(exc.strerror or str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types (zlib.error, struct.error ...) on corrupt bytes
        if not marker:  # only a guess that it was DICOM, and the guess was wrong
            raise NotDicomError(str(path)) from exc
        raise BrokenDicomError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def _header_from_dataset(path: Path, ds: pydicom.Dataset, marker: bool, end_of_header: int,
                         next_tag: bytes) -> tuple[SliceHeader, pydicom.Dataset] | None:
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return None
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "").strip(" \x00") if meta is not None else ""
    implicit_read, little_read = _encoding_read(ds)
    notes: list[str] = []
    if not transfer_syntax:
        # pydicom guessed the encoding of a raw dataset; record what it used.
        transfer_syntax = ImplicitVRLittleEndian if implicit_read else ExplicitVRLittleEndian
    elif not UID(transfer_syntax).is_transfer_syntax:
        raise BrokenDicomError(f"unknown TransferSyntaxUID {transfer_syntax[:64]!r}")
    elif transfer_syntax in _NATIVE_LITTLE_ENDIAN and (transfer_syntax == ImplicitVRLittleEndian) != implicit_read:
        # The file meta says one VR encoding, the data set uses the other (a relabelled file): pydicom read the
        # header by what the bytes are, and the pixels are read the same way.
        notes.append(f"the file meta says {UID(transfer_syntax).name} but the data set is "
                     f"{'implicit' if implicit_read else 'explicit'} VR; read as the data set is encoded")
        transfer_syntax = ImplicitVRLittleEndian if implicit_read else ExplicitVRLittleEndian
    if little_read is False and transfer_syntax in _NATIVE_LITTLE_ENDIAN:
        raise BrokenDicomError("the file meta says little endian but the data set was read as big endian")
    has_pixels = next_tag in (_PIXEL_DATA_TAG, _PIXEL_DATA_TAG_BIG)
    # From the raw bytes like every text value here: pydicom's conversion of the UI (with its validation) cost
    # a quarter of this function, and the header records this same value.
    sop_class = _text(_ascii(ds, "SOPClassUID")) or media_class
    if not marker and not has_pixels and not ("SOPClassUID" in ds or "Modality" in ds or "Rows" in ds):
        raise NotDicomError(str(path))  # parsed "something" from a file that only looked like a raw dataset
    if not has_pixels and not next_tag:
        # pydicom stops quietly at the end of a file; an image file that ends before its pixels is truncated.
        if sop_class in _IMAGE_SOP_CLASSES or media_class in _IMAGE_SOP_CLASSES or "Rows" in ds or len(ds) == 0:
            raise BrokenDicomError(f"the file ends after {end_of_header} bytes, before its pixel data")
    native = transfer_syntax in _NATIVE_LITTLE_ENDIAN
    modality = _text(_ascii(ds, "Modality")).upper()
    number, vector = (_strict_number, _strict_vector) if modality in ("CT", "") else \
        (_lenient(_strict_number), _lenient(_strict_vector))
    if has_pixels and sop_class == CT_IMAGE_STORAGE:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if _ascii(ds, keyword) == "":  # present but empty: required (type 1) in every CT image
                raise BrokenDicomError(f"{keyword} is empty (a CT image must have it)")
    image_type = tuple(v.strip() for v in (_ascii(ds, "ImageType") or "").split("\\") if v.strip())
    spacing = vector(_ascii(ds, "PixelSpacing"), 2, "PixelSpacing")
    representation = _binary_int(ds, "PixelRepresentation")
    bits_allocated = _int(_binary_int(ds, "BitsAllocated"), 16)
    bits_stored = _int(_binary_int(ds, "BitsStored"), None)
    header = SliceHeader(
        path=path,
        series_uid=_text(_ascii(ds, "SeriesInstanceUID")),
        frame_of_reference=_text(_ascii(ds, "FrameOfReferenceUID")),
        series_number=_finite_text(_text(_ascii(ds, "SeriesNumber"))),
        modality=modality,
        sop_class=sop_class,
        image_type=image_type,
        position=vector(_ascii(ds, "ImagePositionPatient"), 3, "ImagePositionPatient"),
        orientation=vector(_ascii(ds, "ImageOrientationPatient"), 6, "ImageOrientationPatient"),
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        rows=_int(_binary_int(ds, "Rows"), 0) or 0,
        columns=_int(_binary_int(ds, "Columns"), 0) or 0,
        frames=_int(_ascii(ds, "NumberOfFrames"), 1) or 1,
        samples_per_pixel=_int(_binary_int(ds, "SamplesPerPixel"), 1) or 1,
        photometric=_text(_ascii(ds, "PhotometricInterpretation")).upper() or "MONOCHROME2",
        bits_allocated=16 if bits_allocated is None else bits_allocated,
        bits_stored=(16 if bits_allocated is None else bits_allocated) if bits_stored is None else bits_stored,
        pixel_representation=0 if representation is None else representation,
        slope=number(_ascii(ds, "RescaleSlope"), "RescaleSlope", 1.0),
        intercept=number(_ascii(ds, "RescaleIntercept"), "RescaleIntercept", 0.0),
        has_rescale="RescaleIntercept" in ds,
        has_pixels=has_pixels,
        transfer_syntax=transfer_syntax,
        pixel_offset=end_of_header if (has_pixels and native) else None,
        explicit_vr=transfer_syntax != ImplicitVRLittleEndian,
        instance_number=_int(_ascii(ds, "InstanceNumber"), None),
        slice_thickness=_finite(_float(_ascii(ds, "SliceThickness"))),
        spacing_between_slices=_finite(_float(_ascii(ds, "SpacingBetweenSlices"))),
        padding_value=_float(_binary_int(ds, "PixelPaddingValue", signed=representation == 1)),
        gantry_tilt=_finite(_float(_ascii(ds, "GantryDetectorTilt"))),
        description=_text(_ascii(ds, "SeriesDescription", "utf-8")),
        manufacturer=_text(_ascii(ds, "Manufacturer", "utf-8")),
        model=_text(_ascii(ds, "ManufacturerModelName", "utf-8")),
        kernel=_text(_ascii(ds, "ConvolutionKernel", "utf-8")),
        kvp=_finite(_float(_ascii(ds, "KVP"))),
        body_part=_text(_ascii(ds, "BodyPartExamined")).upper(),
        pixel_representation_given=representation is not None,
        notes=tuple(notes),
        study_uid=_text(_ascii(ds, "StudyInstanceUID")),
        patient_id=_text(_ascii(ds, "PatientID", "utf-8")),
        accession=_text(_ascii(ds, "AccessionNumber", "utf-8")),
        encapsulated_offset=end_of_header if (has_pixels and not native) else None,
    )
    return header, ds


def _encoding_read(ds: pydicom.Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) as pydicom actually parsed the data set.

    pydicom detects a data set whose VR encoding differs from its transfer syntax and reads it as it is,
    but records the transfer syntax's encoding on the dataset; the raw elements keep the truth.
    """
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if hasattr(elem, "is_implicit_VR") and elem.is_implicit_VR is not None:
            return bool(elem.is_implicit_VR), bool(elem.is_little_endian)
    implicit, little = getattr(ds, "original_encoding", (None, None))[:2]
    return (ds.is_implicit_VR if implicit is None else implicit), (True if little is None else little)


def _finite(value: float | None) -> float | None:
    """An informational number (SliceThickness, KVP, tilt): kept when finite, else treated as absent."""
    return value if value is not None and math.isfinite(value) else None


def looks_like_ct(header: SliceHeader) -> bool:
    """Modality CT, or (Modality missing) a CT SOP class or a header with rescale-to-HU tags."""
    if header.modality:
        return header.modality == "CT"
    return header.sop_class in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE) or header.has_rescale

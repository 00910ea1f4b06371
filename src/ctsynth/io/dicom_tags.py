"""Read only the header elements the reader needs, with a small element walker over the file's first bytes.

``pydicom.dcmread(stop_before_pixels=True)`` builds a Dataset of every element (a GE header has hundreds,
many private) and converts every tag; for a series of a few hundred files that costs more than decoding
the pixels. Even pydicom's element generator with ``specific_tags`` (a ``read``, ``tell`` and ``seek`` per
element, a Python-level tag compare) kept the uncompressed read level with SimpleITK's under load.
:func:`read_needed_elements` therefore reads the first 64 KB with one ``read`` and walks the elements in
memory: one ``struct`` unpack per element header, the length (2 bytes, or 4 after two reserved bytes for
the long-length VRs; 4 in implicit VR) gives the next element, sequences and items of undefined length are
walked to their delimiters (an undefined-length UN holds implicit VR items, PS3.5 6.2.2), and the walk
stops at the top-level pixel data element: 0.07 ms a file against the generator's 0.16 ms (ctsynth's
files) and 0.28 ms (the shared GE files, ~90 elements). The needed elements found at the top level (never
those inside sequences) become pydicom ``RawDataElement``s, exactly as pydicom's own parser would have made
them, so ``dicom_headers`` builds its SliceHeader from that Dataset as it does from a full parse. A header
longer than the first read reads more of the file (doubling), and the walk starts again.

Only the common case takes this path: a Part 10 file (``DICM`` marker) in implicit or explicit VR little
endian or an encapsulated (compressed) syntax, single-frame. Everything else (raw datasets without a
preamble, big endian, deflate, Enhanced multi-frame CT with its functional group sequences, a DICOMDIR)
returns None and is parsed in full as before; so does anything the walker does not expect (a data set
whose VR encoding differs from its file meta or switches inside a sequence, an unknown VR, tags out of
ascending order, an odd item tag, an element running past the end of the file, a few stray bytes at its
end), so that the full parse decides and its checks name a broken file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag

NEEDED_KEYWORDS = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "AccessionNumber", "Modality", "Manufacturer",
    "SeriesDescription", "ManufacturerModelName", "PatientID", "BodyPartExamined", "SliceThickness", "KVP",
    "SpacingBetweenSlices", "GantryDetectorTilt", "ConvolutionKernel", "StudyInstanceUID", "SeriesInstanceUID",
    "SeriesNumber", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID",
    "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "Rows", "Columns", "PixelSpacing",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PixelPaddingValue", "RescaleIntercept",
    "RescaleSlope", "DirectoryRecordSequence", "PerFrameFunctionalGroupsSequence",
)
NEEDED_TAGS = [tag_for_keyword(k) for k in NEEDED_KEYWORDS]
# One BaseTag object per needed tag, shared with dicom_headers' lookups: a dict finds an identical key without
# calling BaseTag.__eq__ (Python code), and the walker does not build a BaseTag per element.
NEEDED_BASE_TAGS = {tag: BaseTag(tag) for tag in NEEDED_TAGS}
# Multi-frame (NumberOfFrames, per-frame functional groups) or a DICOMDIR: the full parse handles those.
_FULL_PARSE_TAGS = frozenset({0x00280008, 0x52009230, 0x00041220})
_PIXEL_DATA = 0x7FE00010
_SIMPLE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_ENCAPSULATED_PREFIX = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")

FIRST_READ = 65536  # bytes read at once: a CT header is 2-40 KB, a GE header with its private groups ~10 KB
_UNDEFINED = 0xFFFFFFFF
# Explicit VR: these VRs have two reserved bytes and a 4-byte length; the other standard VRs a 2-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_VR_TEXT = {vr: vr.decode("ascii") for vr in _LONG_VRS | _SHORT_VRS}
_EXPLICIT_HEAD = struct.Struct("<HH2sH").unpack_from  # group, element, VR, 2-byte length
_IMPLICIT_HEAD = struct.Struct("<HHI").unpack_from  # group, element, 4-byte length (also an item's header)
_U32 = struct.Struct("<I").unpack_from


class _Short(Exception):
    """The walk needs bytes past what was read so far (``need``: the offset it needs up to)."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


class _Unexpected(Exception):
    """Something the walker does not handle: the full parse decides."""


def _more(buf: bytes, need: int, size: int) -> None:
    """Called when ``need`` > len(buf): read more if the file has more, else the file ends too early."""
    if len(buf) < size:
        raise _Short(need)
    raise _Unexpected("past the end of the file")


def read_needed_elements(path: Path) -> tuple[Dataset, int, bytes] | None:
    """(the needed elements with ``file_meta``, offset of the pixel data element (or of the end of the file),
    the next 4 bytes there), or None (parse in full)."""
    try:
        with open(path, "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            buf = fp.read(FIRST_READ)
            while True:
                try:
                    return _parse(buf, size)
                except _Short as short:  # a long header: read on (doubling), then walk again from the start
                    more = fp.read(max(short.need + FIRST_READ, 2 * len(buf)) - len(buf))
                    if not more:
                        return None
                    buf += more
    except Exception:  # anything odd: the full parse decides (and names the file if it is broken)
        return None


def _parse(buf: bytes, size: int) -> tuple[Dataset, int, bytes] | None:
    n = len(buf)
    if n < 132:
        _more(buf, 132, size)
    if buf[128:132] != b"DICM":
        return None
    # File meta: group 0002, always explicit VR little endian.
    pos, meta_values = 132, {}
    while True:
        if pos + 8 > n:
            _more(buf, pos + 8, size)
        group, elem, vr, length = _EXPLICIT_HEAD(buf, pos)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            if pos + 12 > n:
                _more(buf, pos + 12, size)
            length, value = _U32(buf, pos + 8)[0], pos + 12
        elif vr in _SHORT_VRS:
            value = pos + 8
        else:
            return None
        if length == _UNDEFINED:
            return None
        pos = value + length
        if pos > n:
            _more(buf, pos, size)
        if elem in (0x0002, 0x0010):
            meta_values[elem] = buf[value:pos]
    syntax_bytes = meta_values.get(0x0010)
    if syntax_bytes is None:
        return None
    syntax = syntax_bytes.decode("ascii", "replace").strip("\x00 ")
    if syntax not in _SIMPLE_SYNTAXES and not syntax.startswith(_ENCAPSULATED_PREFIX):
        return None
    implicit = syntax == "1.2.840.10008.1.2"
    if pos + 6 > n:
        _more(buf, pos + 6, size)
    if (0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B) == implicit:
        return None  # VR encoding differs from the file meta (a relabelled file): the full parse notes it

    elements, end_of_header = _top_level(buf, pos, implicit, size)
    ds = Dataset(elements)
    # The two file meta values the header needs, converted here: pydicom's conversion of a raw UI element
    # (with its validation) costs more than reading the rest of the header.
    meta = FileMetaDataset()
    for elem in (0x0002, 0x0010):
        value = meta_values.get(elem)
        if value:
            meta.add(DataElement(0x00020000 | elem, "UI", value.decode("ascii", "replace").strip("\x00 "),
                                 validation_mode=config.IGNORE))
    ds.file_meta = meta
    ds.set_original_encoding(implicit, True)
    return ds, end_of_header, buf[end_of_header:end_of_header + 4]


def _element_head(buf: bytes, pos: int, implicit: bool, size: int) -> tuple[int, int, bytes | None, int, int]:
    """``(group, element, VR (None in implicit VR), length, offset of the value)`` of the element at ``pos``
    (its first 8 bytes are in ``buf``). An item or delimiter tag (group FFFE) has a 4-byte length and no VR
    in either encoding; an unknown VR (an implicit VR item in an explicit VR file?) is unexpected."""
    if implicit:
        group, elem, length = _IMPLICIT_HEAD(buf, pos)
        return group, elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT_HEAD(buf, pos)
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            _more(buf, pos + 12, size)
        return group, elem, vr, _U32(buf, pos + 8)[0], pos + 12
    if vr in _SHORT_VRS:
        return group, elem, vr, length, pos + 8
    if group == 0xFFFE:
        return group, elem, None, _U32(buf, pos + 4)[0], pos + 8
    raise _Unexpected("unknown VR")


def _top_level(buf: bytes, pos: int, implicit: bool, size: int) -> tuple[dict, int]:
    """The needed top-level elements as pydicom RawDataElements, and where the pixel data element starts
    (or the file ends, when it has none)."""
    n = len(buf)
    elements: dict = {}
    last = -1
    while True:
        if pos + 8 > n:
            if pos == n == size:
                return elements, pos  # the file ends cleanly before any pixel data: dicom_headers judges
            _more(buf, pos + 8, size)
        group, elem, vr, length, value = _element_head(buf, pos, implicit, size)
        tag = group << 16 | elem
        if tag <= last or group == 0xFFFE:
            raise _Unexpected("tags out of order or an item tag at the top level")
        last = tag
        if tag == _PIXEL_DATA:
            return elements, pos
        if length == _UNDEFINED:
            if tag in NEEDED_BASE_TAGS:
                raise _Unexpected("a needed element of undefined length")
            pos = _skip_items(buf, value, implicit or vr == b"UN", size)
            continue
        end = value + length
        base_tag = NEEDED_BASE_TAGS.get(tag)
        if base_tag is not None:
            if tag in _FULL_PARSE_TAGS:
                raise _Unexpected("multi-frame or DICOMDIR")
            if end > n:
                _more(buf, end, size)
            text_vr = None if implicit else _VR_TEXT[vr]
            elements[base_tag] = RawDataElement(
                base_tag, text_vr, length, buf[value:end] if length else empty_value_for_VR(text_vr, raw=True),
                value, implicit, True)
        elif end > size:
            raise _Unexpected("an element runs past the end of the file")
        pos = end


def _skip_items(buf: bytes, pos: int, implicit: bool, size: int) -> int:
    """Past the items of an undefined-length value (a sequence, or fragments) and its sequence delimiter.

    An undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2): ``implicit`` says so.
    """
    n = len(buf)
    while True:
        if pos + 8 > n:
            _more(buf, pos + 8, size)
        group, elem, length = _IMPLICIT_HEAD(buf, pos)
        pos += 8
        if group != 0xFFFE:
            raise _Unexpected("not an item in an undefined-length value")
        if elem == 0xE0DD:
            return pos
        if elem != 0xE000:
            raise _Unexpected("an odd item tag")
        if length == _UNDEFINED:
            pos = _skip_item_dataset(buf, pos, implicit, size)
        else:
            pos += length
            if pos > size:
                raise _Unexpected("an item runs past the end of the file")


def _skip_item_dataset(buf: bytes, pos: int, implicit: bool, size: int) -> int:
    """Past the elements of an undefined-length item and its item delimiter."""
    n = len(buf)
    last = -1
    while True:
        if pos + 8 > n:
            _more(buf, pos + 8, size)
        group, elem, vr, length, value = _element_head(buf, pos, implicit, size)
        if group == 0xFFFE:
            if elem == 0xE00D:
                return pos + 8
            raise _Unexpected("an odd item tag inside an item")
        tag = group << 16 | elem
        if tag <= last:
            raise _Unexpected("tags out of order inside an item")
        last = tag
        if length == _UNDEFINED:
            pos = _skip_items(buf, value, implicit or vr == b"UN", size)
        else:
            pos = value + length
            if pos > size:
                raise _Unexpected("an element runs past the end of the file")

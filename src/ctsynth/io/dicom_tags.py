"""Read only the header elements the reader needs, with pydicom's own element parser.

``pydicom.dcmread(stop_before_pixels=True)`` builds a Dataset of every element (a GE header has hundreds,
many private) and converts every tag; for a series of a few hundred files that costs more than decoding
the pixels. :func:`read_needed_elements` runs pydicom's :func:`~pydicom.filereader.data_element_generator`
over the file with ``specific_tags`` (elements not listed are skipped with a ``seek``), stops at the pixel
data element, and returns a small Dataset of the needed elements, plus the file meta and the offset where
the pixel data starts. ``dicom_headers`` then builds its SliceHeader from that Dataset exactly as it does
from a full parse.

Only the common case takes this path: a Part 10 file (``DICM`` marker) in implicit or explicit VR little
endian or an encapsulated (compressed) syntax, single-frame. Everything else (raw datasets without a
preamble, big endian, deflate, Enhanced multi-frame CT with its functional group sequences) returns None
and is parsed in full as before; so does any trouble on the way (a data set whose VR encoding differs from
its file meta, an element running past the end of the file), so that the full parse's checks name it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import data_element_generator

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
_PIXEL_DATA = 0x7FE00010
_is_pixel_data = _PIXEL_DATA.__eq__  # int's own comparison: BaseTag's __eq__ is Python code, called per element
_SIMPLE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_ENCAPSULATED_PREFIX = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")


def read_needed_elements(path: Path) -> tuple[Dataset, int, bytes] | None:
    """(the needed elements with ``file_meta``, offset after them, the next 4 bytes), or None (parse in full)."""
    try:
        with open(path, "rb") as fp:
            if fp.read(132)[128:132] != b"DICM":
                return None
            meta_elements = {e.tag: e for e in data_element_generator(
                fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 0x0002)}
            syntax_elem = meta_elements.get(0x00020010)
            if syntax_elem is None or not isinstance(syntax_elem.value, bytes):
                return None
            syntax = syntax_elem.value.decode("ascii", "replace").strip("\x00 ")
            if syntax not in _SIMPLE_SYNTAXES and not syntax.startswith(_ENCAPSULATED_PREFIX):
                return None
            implicit = syntax == "1.2.840.10008.1.2"
            start = fp.tell()
            vr = fp.read(6)[4:6]
            if len(vr) == 2 and (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B) == implicit:
                return None  # VR encoding differs from the file meta (a relabelled file): the full parse notes it
            fp.seek(start)
            elements = {e.tag: e for e in data_element_generator(
                fp, implicit, True, stop_when=lambda tag, vr, length: _is_pixel_data(tag), specific_tags=NEEDED_TAGS)}
            end_of_header = fp.tell()
            next_tag = fp.read(4)
            if end_of_header > os.fstat(fp.fileno()).st_size:
                return None  # an element skipped past the end: truncated, the full parse names it
    except Exception:  # anything odd: the full parse decides (and names the file if it is broken)
        return None
    if 0x00280008 in elements or 0x52009230 in elements or 0x00041220 in elements:
        return None  # multi-frame or a DICOMDIR: the full parse handles those
    ds = Dataset(elements)
    # The two file meta values the header needs, converted here: pydicom's conversion of a raw UI element
    # (with its validation) costs more than reading the rest of the header.
    meta = FileMetaDataset()
    for tag in (0x00020002, 0x00020010):
        raw = meta_elements.get(tag)
        if raw is not None and isinstance(raw.value, bytes):
            meta.add(DataElement(tag, "UI", raw.value.decode("ascii", "replace").strip("\x00 "),
                                 validation_mode=config.IGNORE))
    ds.file_meta = meta
    ds.set_original_encoding(implicit, True)
    return ds, end_of_header, next_tag

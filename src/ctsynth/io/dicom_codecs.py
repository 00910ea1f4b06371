"""The fastest installed decoder for each compressed transfer syntax, fed straight from the file.

pydicom's ``pixel_array`` parses the whole file a second time and, for JPEG lossless, decodes with
libjpeg (pylibjpeg-libjpeg), which on real GE/TCIA series costs about 30 ms a slice: slower than
SimpleITK. Here the header pass has already recorded where the (7FE0,0010) element starts, so a slice
costs one ``seek`` + ``read``, pydicom's own encapsulation parser (:func:`pydicom.encaps.generate_frames`)
to get the frame, and one call into a C decoder that releases the GIL (so the reader's thread pool decodes
slices in parallel):

| transfer syntax | decoder, first installed wins |
|---|---|
| JPEG lossless (1.2.840.10008.1.2.4.57, .70) | imagecodecs ``jpeg8_decode`` (libjpeg-turbo 3, lossless), imagecodecs ``ljpeg_decode`` |
| JPEG-LS (.80, .81) | imagecodecs ``jpegls_decode`` (CharLS) |
| JPEG 2000 (.90, .91) | imagecodecs ``jpeg2k_decode`` (OpenJPEG) |
| RLE lossless (1.2.840.10008.1.2.5) | imagecodecs ``dicomrle_decode`` |

Anything else (lossy baseline JPEG, deflate, big endian, multi-frame), a decoder that is not installed, or
any failure (a file cut short, an odd codestream) returns None and the slice goes through pydicom as before,
which names the file in its error. tests/test_dicom_codecs.py checks every decoder here against the values
that were encoded, bit for bit (and against pydicom's ``pixel_array``, except for 16-bit JPEG lossless:
on streams written by libjpeg-turbo, pylibjpeg-libjpeg returns 4095 for samples above 12 bits, where
libjpeg-turbo and liblj92 both return the encoded values; the real GE series equals SimpleITK's array).
"""

from __future__ import annotations

import struct
from typing import Callable

import numpy as np

from .dicom_headers import SliceHeader

JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
RLE_LOSSLESS = ("1.2.840.10008.1.2.5",)
_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"

Decoder = Callable[[bytes, SliceHeader], np.ndarray]


def _imagecodecs(name: str, **kwargs) -> Decoder | None:
    """imagecodecs' ``<name>_decode`` if imagecodecs is installed and was built with that codec."""
    try:
        import imagecodecs
    except ImportError:
        return None
    codec = getattr(imagecodecs, name.upper(), None)
    fn = getattr(imagecodecs, f"{name}_decode", None)
    if codec is None or fn is None or not getattr(codec, "available", False):
        return None
    return lambda data, header: fn(data, **kwargs)


def _rle() -> Decoder | None:
    """imagecodecs' DICOM RLE decoder (C), given only frames whose RLE header is sound.

    Not pylibjpeg-rle: as fast here, but its Rust code panics on some corrupt segments (a backtrace on the
    terminal before Python can catch it). imagecodecs trusts the header's segment offsets and reads past the
    buffer (a segfault) when they are wrong, so :func:`_rle_header_ok` checks them first; a frame that fails
    goes to pydicom's own decoder, which names the file in its error."""
    try:
        import imagecodecs
    except ImportError:
        return None
    if not getattr(getattr(imagecodecs, "DICOMRLE", None), "available", False):
        return None

    def decode(data: bytes, header: SliceHeader) -> np.ndarray:
        if not _rle_header_ok(data, header.bits_allocated // 8):
            raise ValueError("RLE header: segment count or offsets do not fit the frame")
        dtype = f"<u{header.bits_allocated // 8}"
        out = imagecodecs.dicomrle_decode(data, dtype=dtype)  # the stored values, as bytes
        return np.frombuffer(out, dtype=dtype).reshape(header.rows, header.columns)

    return decode


def _rle_header_ok(frame: bytes, segments: int) -> bool:
    """The 64-byte RLE header (PS3.5 G.5): ``segments`` segments, the first at byte 64, offsets rising and
    inside the frame."""
    if len(frame) < 64:
        return False
    header = struct.unpack("<16I", frame[:64])
    offsets = header[1:1 + segments]
    return (header[0] == segments and offsets[0] == 64 and all(b > a for a, b in zip(offsets, offsets[1:]))
            and offsets[-1] < len(frame))


def _first(*candidates: tuple[str, Callable[[], Decoder | None]]) -> tuple[str, Decoder] | None:
    for label, make in candidates:
        decoder = make()
        if decoder is not None:
            return label, decoder
    return None


_TABLE: dict[str, tuple[str, Decoder] | None] | None = None


def decoders() -> dict[str, tuple[str, Decoder] | None]:
    """``{transfer syntax UID: (decoder name, function) or None}``, found once per process."""
    global _TABLE
    if _TABLE is None:
        jpeg = _first(("imagecodecs jpeg8 (libjpeg-turbo)", lambda: _imagecodecs("jpeg8")),
                      ("imagecodecs ljpeg", lambda: _imagecodecs("ljpeg")))
        jpegls = _first(("imagecodecs jpegls (CharLS)", lambda: _imagecodecs("jpegls")))
        j2k = _first(("imagecodecs jpeg2k (OpenJPEG)", lambda: _imagecodecs("jpeg2k", numthreads=1)))
        rle = _first(("imagecodecs dicomrle", _rle))
        table: dict[str, tuple[str, Decoder] | None] = {}
        for syntaxes, found in ((JPEG_LOSSLESS, jpeg), (JPEG_LS, jpegls), (JPEG_2000, j2k), (RLE_LOSSLESS, rle)):
            for uid in syntaxes:
                table[uid] = found
        _TABLE = table
    return _TABLE


def decoder_name(transfer_syntax: str) -> str:
    """The decoder used for a transfer syntax: this module's, a direct read, or 'pydicom'."""
    if transfer_syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
        return "direct read (uncompressed)"
    found = decoders().get(transfer_syntax)
    return found[0] if found else "pydicom"


def read_frame_bytes(header: SliceHeader) -> bytes | None:
    """The one frame of an encapsulated single-frame file, read from the recorded pixel-data offset."""
    from pydicom.encaps import generate_frames

    offset = getattr(header, "encapsulated_offset", None)
    if offset is None or header.frames != 1 or header.frame is not None:
        return None
    with open(header.path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    # Tag (7FE0,0010), VR OB, 2 reserved bytes, undefined length: the items start 12 bytes in. A file cut
    # short has no sequence delimiter after its last fragment: declined (pydicom then names the file), as
    # some decoders (libjpeg-turbo) would fill a truncated image without an error.
    if len(data) < 12 or data[:4] != _PIXEL_TAG or data[8:12] != b"\xff\xff\xff\xff" \
            or data.rfind(_SEQUENCE_DELIMITER) < 12:
        return None
    frame = next(generate_frames(data[12:], number_of_frames=1))
    # A JPEG, JPEG-LS or JPEG 2000 codestream ends with its end-of-image marker, then at most the one byte
    # that pads a fragment to even length (GE writes 0x0F or 0xC0 there, not always 0x00).
    if header.transfer_syntax not in RLE_LOSSLESS and b"\xff\xd9" not in (frame[-2:], frame[-3:-1]):
        return None
    return frame


def decode_encapsulated(header: SliceHeader) -> np.ndarray | None:
    """Stored values (rows, columns) of a compressed slice by the fastest decoder, or None (use pydicom)."""
    from .dicom_pixels import _mask_to_bits_stored, _stored_dtype

    found = decoders().get(header.transfer_syntax)
    if found is None or header.samples_per_pixel != 1 or header.bits_allocated not in (8, 16):
        return None
    try:
        frame = read_frame_bytes(header)
        if frame is None:
            return None
        arr = np.asarray(found[1](frame, header))
    except Exception:  # any trouble: pydicom decodes it (or names the file in its error)
        return None
    dtype = _stored_dtype(header)
    if arr.shape != (header.rows, header.columns) or arr.dtype.itemsize != dtype.itemsize:
        return None
    arr = np.ascontiguousarray(arr).view(dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    return _mask_to_bits_stored(arr, header)

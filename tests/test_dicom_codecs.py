"""The fast decoders (ctsynth.io.dicom_codecs) give back exactly the stored values that were encoded, for
every compressed syntax they take (RLE, JPEG lossless, JPEG-LS, JPEG 2000), signed and unsigned, and fall
back to pydicom (which names the file) on anything they cannot do."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from ctsynth.errors import CTSynthError
from ctsynth.io.dicom_codecs import decode_encapsulated, decoder_name
from ctsynth.io.dicom_headers import read_slice_headers
from ctsynth.io.dicom_reader import read_dicom_series
from test_dicom_support import edit, synthetic_volume, write_series

imagecodecs = pytest.importorskip("imagecodecs")


def _encode(ds: pydicom.Dataset, syntax: str) -> None:
    if syntax == RLELossless:
        ds.compress(RLELossless)
        return
    stored = ds.pixel_array
    raw = stored.view(np.uint16) if stored.dtype == np.int16 else stored
    if syntax == JPEG2000Lossless:
        frame = imagecodecs.jpeg2k_encode(stored, level=0, codecformat="J2K")
    elif syntax == JPEGLSLossless:
        frame = imagecodecs.jpegls_encode(raw, level=0)
    else:
        frame = imagecodecs.jpeg8_encode(raw, lossless=True, predictor=1)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("signed", [True, False])
def test_fast_decoder_gives_the_encoded_values(tmp_path: Path, syntax: str, signed: bool) -> None:
    files = write_series(synthetic_volume(shape=(4, 20, 24), seed=2), tmp_path / "s")
    stored: list[np.ndarray] = []

    def recode(ds: pydicom.Dataset) -> None:
        if not signed:  # unsigned 12-bit stored values, intercept -1024, as many scanners write
            hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
            ds.RescaleIntercept = -1024
            ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
        stored.append(ds.pixel_array.copy())  # the known answer: what was encoded
        _encode(ds, syntax)

    for f in files:
        edit(f, recode)
    assert decoder_name(syntax) != "pydicom"
    for f, expected in zip(files, stored):
        (header,) = read_slice_headers(f)
        fast = decode_encapsulated(header)
        assert fast is not None
        np.testing.assert_array_equal(fast, expected)
    volume = read_dicom_series(tmp_path / "s")
    intercept = float(pydicom.dcmread(files[0], stop_before_pixels=True).RescaleIntercept)
    np.testing.assert_array_equal(volume.hu, np.stack(stored).astype(np.float64) + intercept)
    if syntax != JPEGLosslessSV1:  # pydicom agrees (its pylibjpeg-libjpeg clips 16-bit lossless JPEG at 4095)
        np.testing.assert_array_equal(decode_encapsulated(read_slice_headers(files[0])[0]),
                                      pydicom.dcmread(files[0]).pixel_array)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_cut_short_compressed_file_falls_back_and_is_named(tmp_path: Path) -> None:
    files = write_series(synthetic_volume(shape=(3, 16, 16)), tmp_path / "s")
    for f in files:
        edit(f, lambda ds: _encode(ds, JPEGLosslessSV1))
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 150])
    (header,) = read_slice_headers(files[1])
    assert decode_encapsulated(header) is None  # the fast path declines; pydicom's error names the file
    with pytest.raises(Exception) as err:
        read_dicom_series(tmp_path / "s")
    assert str(files[1]) in str(err.value)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("syntax", [None, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_decoding_in_worker_processes_gives_the_same_volume_and_errors(tmp_path: Path, monkeypatch,
                                                                       syntax: str | None) -> None:
    """Forked workers decode into shared memory: the same array as the threads, uncompressed and compressed;
    an error in a worker (a file cut short) reaches the parent naming the file, as with threads."""
    from ctsynth.io import dicom_reader

    files = write_series(synthetic_volume(shape=(9, 16, 20), seed=4), tmp_path / "s")
    if syntax is not None:
        for f in files:
            edit(f, lambda ds: _encode(ds, syntax))
    monkeypatch.setattr(dicom_reader, "decode_processes", lambda *_: 1)
    threads = read_dicom_series(tmp_path / "s")
    monkeypatch.setattr(dicom_reader, "decode_processes", lambda *_: 3)
    forked = read_dicom_series(tmp_path / "s")
    assert forked.hu.dtype == threads.hu.dtype
    np.testing.assert_array_equal(forked.hu, threads.hu)
    data = files[6].read_bytes()
    files[6].write_bytes(data[: len(data) - 150])
    errors = []
    for n in (1, 3):
        monkeypatch.setattr(dicom_reader, "decode_processes", lambda *_, n=n: n)
        with pytest.raises(Exception) as err:
            read_dicom_series(tmp_path / "s")
        errors.append((type(err.value), str(err.value)))
    assert errors[0] == errors[1] and str(files[6]) in errors[1][1]


def test_rle_header_check_known_answers() -> None:
    from ctsynth.io.dicom_codecs import _rle_header_ok

    def frame(n: int, *offsets: int, length: int = 200) -> bytes:
        header = struct.pack("<16I", n, *offsets, *([0] * (15 - len(offsets))))
        return header + bytes(length - 64)

    assert _rle_header_ok(frame(2, 64, 130), 2)
    assert not _rle_header_ok(frame(1, 64), 2)  # wrong segment count
    assert not _rle_header_ok(frame(2, 60, 130), 2)  # first segment not at 64
    assert not _rle_header_ok(frame(2, 64, 64), 2)  # offsets not rising
    assert not _rle_header_ok(frame(2, 64, 4_000_000), 2)  # beyond the frame (imagecodecs would read past it)
    assert not _rle_header_ok(frame(2, 64, 130)[:40], 2)  # shorter than the header


def test_rle_with_broken_segment_offsets_is_refused_by_name(tmp_path: Path) -> None:
    """imagecodecs' dicomrle reads past its buffer (a segfault) on wrong segment offsets: such a frame must
    never reach it; pydicom's decoder refuses it, naming the file."""
    files = write_series(synthetic_volume(shape=(3, 16, 16)), tmp_path / "s")
    for f in files:
        edit(f, lambda ds: _encode(ds, RLELossless))
    data = bytearray(files[1].read_bytes())
    header_at = data.rfind(struct.pack("<2I", 2, 64))  # the RLE header: 2 segments, the first at byte 64
    data[header_at + 8: header_at + 12] = struct.pack("<I", 0x7FFF0000)  # second segment far past the end
    files[1].write_bytes(bytes(data))
    with pytest.raises(CTSynthError) as err:
        read_dicom_series(tmp_path / "s")
    assert str(files[1]) in str(err.value)


def test_worker_processes_only_where_threads_cannot_share_the_decode(monkeypatch):
    """A direct read and ctsynth's C decoders (they release the GIL) run in threads even on idle cores (forked
    workers made a 300-file uncompressed read twice as slow); a syntax pydicom decodes in Python may fork."""
    from ctsynth.io import dicom_pixels
    from ctsynth.io.dicom_codecs import JPEG_2000, decoder_name

    monkeypatch.setattr(dicom_pixels, "idle_cores", lambda: 4)
    assert dicom_pixels.decode_processes(300, "1.2.840.10008.1.2.1") == 1
    assert dicom_pixels.decode_processes(300, "1.2.840.10008.1.2") == 1
    if decoder_name(JPEG_2000[0]) != "pydicom":
        assert dicom_pixels.decode_processes(300, JPEG_2000[0]) == 1
    big_endian = "1.2.840.10008.1.2.2"  # no C decoder here: pydicom's own
    assert decoder_name(big_endian) == "pydicom"
    assert dicom_pixels.decode_processes(300, big_endian) == 4
    assert dicom_pixels.decode_processes(8, big_endian) == 1  # too few files to pay for the fork
    monkeypatch.setattr(dicom_pixels, "idle_cores", lambda: 1)
    assert dicom_pixels.decode_processes(300, big_endian) == 1

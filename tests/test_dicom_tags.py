"""The header pass reads only the needed elements (ctsynth.io.dicom_tags) and must give exactly the headers a
full ``dcmread`` gives, on our own files, every real CT file in the shared test data and edited quirks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctsynth.io import dicom_headers
from ctsynth.io.dicom_headers import BrokenDicomError, NotDicomError, read_slice_headers
from ctsynth.io.dicom_tags import read_needed_elements
from test_dicom_support import edit, synthetic_volume, write_series

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _both(path: Path, monkeypatch: pytest.MonkeyPatch):
    def parse():
        try:
            return read_slice_headers(path)
        except (NotDicomError, BrokenDicomError) as exc:
            return type(exc).__name__

    fast = parse()
    monkeypatch.setattr(dicom_headers, "FAST_HEADERS", False)
    full = parse()
    monkeypatch.setattr(dicom_headers, "FAST_HEADERS", True)
    return fast, full


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    return len(a) == len(b) and all(repr(x) == repr(y) for x, y in zip(a, b))


def test_needed_elements_give_the_same_headers_as_a_full_parse(tmp_path: Path, monkeypatch) -> None:
    files = write_series(synthetic_volume(shape=(3, 16, 16)), tmp_path / "s")

    def implicit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.PatientID, ds.AccessionNumber, ds.ConvolutionKernel = "P\u00e9rez", "A1", "B30f"

    edit(files[1], implicit)
    edit(files[2], lambda ds: ds.compress(pydicom.uid.RLELossless))
    assert read_needed_elements(files[0]) is not None  # the fast path is taken
    for f in files:
        fast, full = _both(f, monkeypatch)
        assert _same(fast, full), f


def test_real_files_same_headers_either_way(monkeypatch) -> None:
    if not REAL.is_dir():
        pytest.skip(f"shared real CT data not found at {REAL}")
    files = [p for p in sorted(REAL.rglob("*")) if p.is_file() and p.suffix.lower() not in (".md", ".csv", ".txt", ".gz", ".nii")]
    files = files[:: max(1, len(files) // 120)]  # every folder, about 120 files
    assert files
    for f in files:
        fast, full = _both(f, monkeypatch)
        assert _same(fast, full), f


def test_cut_short_header_is_broken_either_way(tmp_path: Path, monkeypatch) -> None:
    files = write_series(synthetic_volume(shape=(2, 16, 16)), tmp_path / "s")
    data = files[0].read_bytes()
    for cut in (140, 400, 900):
        files[0].write_bytes(data[:cut])
        fast, full = _both(files[0], monkeypatch)
        assert fast == full == "BrokenDicomError"


def test_header_pass_in_worker_processes_finds_the_same(tmp_path: Path, monkeypatch) -> None:
    from ctsynth.io import dicom_series

    for k in range(3):
        write_series(synthetic_volume(shape=(4, 12, 12), seed=k), tmp_path / f"s{k}")
    (tmp_path / "s1" / "junk.txt").write_text("not dicom")
    monkeypatch.setattr(dicom_series, "header_workers", lambda n: 1)
    one = dicom_series.scan_dicom_tree(tmp_path)
    monkeypatch.setattr(dicom_series, "header_workers", lambda n: 2)
    two = dicom_series.scan_dicom_tree(tmp_path)
    assert [(r.uid, r.files) for r in one.series] == [(r.uid, r.files) for r in two.series]
    assert len(one.series) == 3 and one.notes == two.notes
    assert [repr(h) for r in one.series for h in r.headers] == [repr(h) for r in two.series for h in r.headers]


# Known answers for the element walker (ctsynth.io.dicom_tags) on files built to trip it: each must take the
# fast path (or decline it) and give exactly the header the full parse gives, the pixel data where it is.

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from ctsynth.io import dicom_tags  # noqa: E402
from ctsynth.io.dicom_reader import read_dicom_series  # noqa: E402

_SHAPE = (3, 16, 16)


def _implicit(ds: pydicom.Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian


def _nested_sequence(undefined: bool):
    """A ReferencedImageSequence (0008,1140), before most needed tags, whose item holds needed-looking
    elements (ImagePositionPatient, Rows) and an IconImageSequence with its own Rows and pixel data."""

    def change(ds: pydicom.Dataset) -> None:
        icon = Dataset()
        icon.Rows, icon.Columns, icon.BitsAllocated = 2, 2, 8
        icon.add_new(0x7FE00010, "OB", b"\x01\x02\x03\x04")
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3"
        item.ImagePositionPatient = [9, 9, 9]
        item.Rows = 7
        item.IconImageSequence = Sequence([icon])
        ds.ReferencedImageSequence = Sequence([item, Dataset()])
        if undefined:
            ds["ReferencedImageSequence"].is_undefined_length = True
            item["IconImageSequence"].is_undefined_length = True
            for d in (icon, item, ds.ReferencedImageSequence[1]):
                d.is_undefined_length_sequence_item = True

    return change


def _lookalike(ds: pydicom.Dataset) -> None:
    """A private element (group 0019, before ImagePositionPatient) whose value holds the bytes of an
    ImagePositionPatient element, a pixel data element header and item/delimiter tags."""
    block = ds.private_block(0x0019, "CTSYNTH TEST", create=True)
    fake = (b"\x20\x00\x32\x00DS\x06\x00" + b"5\\5\\5 " + b"\x20\x00\x32\x00" + b"\x06\x00\x00\x00" + b"6\\6\\6 "
            + b"\xe0\x7f\x10\x00OW\x00\x00\x08\x00\x00\x00" + bytes(8) + b"\xfe\xff\x00\xe0\xfe\xff\xdd\xe0")
    block.add_new(0x10, "OB", fake)
    block.add_new(0x11, "LO", "(0020,0032) 7FE0,0010")


def _long_header(ds: pydicom.Dataset) -> None:
    """A 100 KB private OB element before ImagePositionPatient: the header runs past the first read."""
    block = ds.private_block(0x0019, "CTSYNTH TEST", create=True)
    block.add_new(0x12, "OB", bytes(range(256)) * 400)


def _native_pixel_offset(path: Path, implicit: bool) -> int:
    """Known answer: a native file ends with its pixel data element, 16-bit rows x columns values."""
    return path.stat().st_size - _SHAPE[1] * _SHAPE[2] * 2 - (8 if implicit else 12)


CASES = {
    "explicit": [],
    "implicit": [_implicit],
    "undefined-length nested sequence": [_nested_sequence(True)],
    "undefined-length nested sequence, implicit": [_nested_sequence(True), _implicit],
    "defined-length sequence": [_nested_sequence(False)],
    "defined-length sequence, implicit": [_nested_sequence(False), _implicit],
    "private look-alike bytes": [_lookalike],
    "private look-alike bytes, implicit": [_lookalike, _implicit],
    "header longer than the first read": [_long_header, _nested_sequence(True)],
    "header longer than the first read, implicit": [_long_header, _nested_sequence(True), _implicit],
}


@pytest.mark.parametrize("first_read", [dicom_tags.FIRST_READ, 100])  # 100: every file reads on, in steps
@pytest.mark.parametrize("case", list(CASES))
def test_walker_known_answers(tmp_path: Path, monkeypatch, case: str, first_read: int) -> None:
    monkeypatch.setattr(dicom_tags, "FIRST_READ", first_read)
    volume = synthetic_volume(shape=_SHAPE)
    files = write_series(volume, tmp_path / "s")
    expected = read_dicom_series(tmp_path / "s").hu
    for f in files:
        for change in CASES[case]:
            edit(f, change)
    implicit = _implicit in CASES[case]
    for f in files:
        needed = read_needed_elements(f)
        assert needed is not None, case  # the fast path is taken
        ds, end_of_header, next_tag = needed
        assert end_of_header == _native_pixel_offset(f, implicit) and next_tag == b"\xe0\x7f\x10\x00"
        assert 0x00081140 not in ds and 0x00191010 not in ds  # only the needed elements, top level only
        full = pydicom.dcmread(f, stop_before_pixels=True)
        assert [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in full.ImagePositionPatient]
        assert (ds.Rows, ds.Columns) == _SHAPE[1:]
        fast, slow = _both(f, monkeypatch)
        assert _same(fast, slow), (case, f)
        assert fast[0].pixel_offset == end_of_header and fast[0].explicit_vr != implicit
    if _long_header in CASES[case]:
        assert end_of_header > 100_000
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").hu, expected)


def test_walker_on_an_encapsulated_file(tmp_path: Path, monkeypatch) -> None:
    imagecodecs = pytest.importorskip("imagecodecs")
    volume = synthetic_volume(shape=_SHAPE)
    files = write_series(volume, tmp_path / "s")
    expected = read_dicom_series(tmp_path / "s").hu

    def jpeg_lossless(ds: pydicom.Dataset) -> None:
        frame = imagecodecs.jpeg8_encode(ds.pixel_array.view(np.uint16), lossless=True, predictor=1)
        ds.PixelData = pydicom.encaps.encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1

    for f in files:
        edit(f, _nested_sequence(True))
        edit(f, jpeg_lossless)
    for f in files:
        needed = read_needed_elements(f)
        assert needed is not None
        start = f.read_bytes().find(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
        assert needed[1] == start > 0 and needed[2] == b"\xe0\x7f\x10\x00"
        fast, slow = _both(f, monkeypatch)
        assert _same(fast, slow)
        assert fast[0].encapsulated_offset == start and fast[0].pixel_offset is None
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").hu, expected)


def test_walker_on_an_undefined_length_un_element(tmp_path: Path, monkeypatch) -> None:
    """An undefined-length UN element (a sequence whose VR a converter did not know) holds its items in
    implicit VR little endian, also in an explicit VR file (PS3.5 6.2.2)."""
    volume = synthetic_volume(shape=_SHAPE)
    explicit, implicit = write_series(volume, tmp_path / "e"), write_series(volume, tmp_path / "i")
    expected = read_dicom_series(tmp_path / "e").hu
    for e, i in zip(explicit, implicit):
        edit(e, _nested_sequence(True))
        edit(i, _nested_sequence(True))
        edit(i, _implicit)
    tail = b"\xfe\xff\x00\xe0\xff\xff\xff\xff\xfe\xff\x0d\xe0" + bytes(4) + b"\xfe\xff\xdd\xe0" + bytes(4)
    for e, i in zip(explicit, implicit):
        de, di = e.read_bytes(), i.read_bytes()
        start_e = de.index(b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff")
        end_e = de.index(tail, start_e) + len(tail)
        start_i = di.index(b"\x08\x00\x40\x11\xff\xff\xff\xff") + 8
        end_i = di.index(tail, start_i) + len(tail)
        e.write_bytes(de[:start_e] + b"\x08\x00\x40\x11UN\x00\x00\xff\xff\xff\xff" + di[start_i:end_i] + de[end_e:])
        needed = read_needed_elements(e)
        assert needed is not None and needed[1] == _native_pixel_offset(e, False)
        fast, slow = _both(e, monkeypatch)
        assert _same(fast, slow)
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "e").hu, expected)


@pytest.mark.parametrize("case", ["undefined-length nested sequence", "private look-alike bytes",
                                  "header longer than the first read, implicit"])
def test_walker_on_files_cut_inside_the_header(tmp_path: Path, monkeypatch, case: str) -> None:
    """Cut anywhere in the header (inside the file meta, a sequence, an item, a long element, a needed
    element, the pixel data element's own header): no header, or the full parse's error."""
    f = write_series(synthetic_volume(shape=_SHAPE), tmp_path / "s")[0]
    for change in CASES[case]:
        edit(f, change)
    data = f.read_bytes()
    pixels = _native_pixel_offset(f, _implicit in CASES[case])
    end = pixels + (8 if _implicit in CASES[case] else 12)  # the first pixel byte
    cuts = set(range(0, end, max(1, end // 150))) | {pixels - 1, pixels, pixels + 2, pixels + 4, end - 1, 132, 133}
    cuts = sorted(cuts)
    for cut in cuts:
        f.write_bytes(data[:cut])
        needed = read_needed_elements(f)
        assert needed is None or needed[2] == b"" or needed[1] + len(needed[2]) <= cut
        fast, slow = _both(f, monkeypatch)
        assert fast == slow, (cut, fast, slow)
        assert fast in ("BrokenDicomError", "NotDicomError"), cut
    f.write_bytes(data[:end + 1])  # the pixel data cut short, the header whole: the header is read
    fast, slow = _both(f, monkeypatch)
    assert _same(fast, slow) and fast[0].pixel_offset == pixels


def test_walker_declines_what_it_does_not_expect(tmp_path: Path, monkeypatch) -> None:
    """The full parse decides: multi-frame, an item tag where an item belongs not, an implicit VR item in an
    explicit VR file, tags out of order, an element running past the end of the file."""
    files = write_series(synthetic_volume(shape=(6, 16, 16)), tmp_path / "s")
    edit(files[0], lambda ds: setattr(ds, "NumberOfFrames", 1))
    for f in files[1:]:
        edit(f, _nested_sequence(True))
    data = files[1].read_bytes()
    item = data.index(b"\xfe\xff\x00\xe0")
    files[1].write_bytes(data[:item] + b"\xfe\xff\x01\xe0" + data[item + 4:])  # (FFFE,E001) is no item
    uid = data.index(b"\x08\x00\x55\x11UI")  # ReferencedSOPInstanceUID, explicit: rewrite it implicit VR
    files[2].write_bytes(data[:uid] + b"\x08\x00\x55\x11\x06\x00\x00\x00" + data[uid + 8:])
    rows = data.index(b"\x28\x00\x10\x00US\x02\x00\x10\x00", data.index(b"\xfe\xff\xdd\xe0"))
    columns = rows + 10
    files[3].write_bytes(data[:rows] + data[columns:columns + 10] + data[rows:rows + 10] + data[columns + 10:])
    series = data.index(b"\x20\x00\x0e\x00UI")  # SeriesInstanceUID: a length past the end of the file
    files[4].write_bytes(data[:series + 6] + b"\xff\x7f" + data[series + 8:])
    for f in files[:5]:
        assert read_needed_elements(f) is None, f
        fast, slow = _both(f, monkeypatch)
        assert _same(fast, slow), f
    assert read_needed_elements(files[5]) is not None

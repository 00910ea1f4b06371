"""Decode the stored pixel values of DICOM slices, in parallel.

Uncompressed little-endian files (most CT exports) are read directly: the header pass already recorded
where the (7FE0,0010) element starts, so decoding is one ``seek`` + ``read`` + ``np.frombuffer``. Every
other transfer syntax (JPEG 2000, JPEG-LS, JPEG lossless, RLE, deflate, big endian) goes through pydicom's
``pixel_array``, which uses the pylibjpeg plugins for the compressed ones. A thread pool overlaps file I/O
and the C decoders, which release the GIL; when cores sit idle (:func:`idle_cores`), worker processes
forked for the read take contiguous chunks of files and decode straight into an output in shared memory
(:func:`shared_empty`), which also runs the per-slice Python in parallel. The processes pay only with idle
cores: on a loaded machine the threads are used.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import struct
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

import numpy as np
import pydicom

from ..errors import CTSynthError
from .dicom_headers import SliceHeader
from .library_messages import collect_messages

_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"UC", b"UR", b"SQ", b"SV", b"UV"}
_INSTALL_FIX = ("install the decoders: pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg, "
                "or convert the series with dcm2niix first")


def _stored_dtype(header: SliceHeader) -> np.dtype:
    kind = "i" if header.pixel_representation == 1 else "u"
    if header.bits_allocated not in (8, 16, 32):
        raise CTSynthError(f"BitsAllocated {header.bits_allocated} is not supported for CT", header.path,
                           "convert the series with dcm2niix first")
    return np.dtype(f"<{kind}{header.bits_allocated // 8}")


def _mask_to_bits_stored(arr: np.ndarray, header: SliceHeader) -> np.ndarray:
    """Keep only the BitsStored low bits (sign-extended for signed data), in place, as the standard says."""
    bits, alloc = header.bits_stored, header.bits_allocated
    if bits >= alloc or bits <= 0:
        return arr
    if header.pixel_representation == 1:
        shift = alloc - bits
        arr <<= shift
        arr >>= shift  # arithmetic shift on a signed dtype sign-extends
    else:
        arr &= np.array((1 << bits) - 1, dtype=arr.dtype)
    return arr


def _check_sign_known(arr: np.ndarray, header: SliceHeader) -> np.ndarray:
    """Refuse pixels whose sign is a guess: PixelRepresentation missing and the top stored bit in use.

    Without the tag, stored values are read as unsigned (the standard's default), which is right as long as
    no value reaches 2**(BitsStored-1). A signed slice read that way turns -1000 into 64536: HU up to 62,512
    without a word. Below that bound both readings agree, so such files read normally.
    """
    if header.pixel_representation_given or arr.size == 0:
        return arr
    top = 1 << (header.bits_stored - 1)
    if int(arr.max()) >= top:
        raise CTSynthError(
            f"PixelRepresentation is missing and the pixel data is ambiguous: stored values reach {int(arr.max())} "
            f"(>= {top}), which unsigned and signed {header.bits_stored}-bit readings map to different HU",
            header.path, "re-export the series with PixelRepresentation (0 unsigned, 1 signed) in every file")
    return arr


def _length_problem(header: SliceHeader, length: int, frames: int = 1) -> str | None:
    """Why a native pixel data element of ``length`` bytes does not fit the header's image size, or None."""
    expected = header.rows * header.columns * header.samples_per_pixel * frames * (header.bits_allocated // 8)
    if length in (expected, expected + 1):  # one pad byte keeps an odd length even
        return None
    if length < expected:
        return (f"the pixel data holds {length} of the {expected} bytes that Rows x Columns x BitsAllocated "
                f"({header.rows} x {header.columns} x {header.bits_allocated}"
                f"{f' x {frames} frames' if frames > 1 else ''}) need: the file is truncated or its header is wrong")
    return (f"the pixel data holds {length} bytes, not the {expected} that Rows x Columns x BitsAllocated "
            f"({header.rows} x {header.columns} x {header.bits_allocated}{f' x {frames} frames' if frames > 1 else ''}) "
            "need: Rows, Columns or BitsAllocated is wrong")


def _read_native(header: SliceHeader, out: np.ndarray | None) -> np.ndarray | None:
    """Read uncompressed pixels at the offset the header pass recorded; None if the layout is unexpected.

    With ``out`` (a C-contiguous (rows, columns) array of the stored item size) the bytes land straight in
    it, viewed as the stored dtype, and that view is returned: no intermediate copies for big series.
    """
    dtype = _stored_dtype(header)
    expected = header.rows * header.columns * dtype.itemsize
    if header.samples_per_pixel != 1 or header.frames != 1:
        return None
    if out is not None and out.dtype.itemsize == dtype.itemsize and out.flags.c_contiguous \
            and out.shape == (header.rows, header.columns):
        target = out.view(dtype)
    else:
        target = np.empty((header.rows, header.columns), dtype=dtype)
    with open(header.path, "rb") as fh:
        fh.seek(header.pixel_offset)
        head = fh.read(12)
        if len(head) < 8 or head[:4] != b"\xe0\x7f\x10\x00":
            return None
        if header.explicit_vr and head[4:6] in _LONG_LENGTH_VRS:
            (length,) = struct.unpack("<I", head[8:12])
            start = 12
        elif header.explicit_vr:
            return None
        else:
            (length,) = struct.unpack("<I", head[4:8])
            start = 8
        if length == 0xFFFFFFFF:
            return None  # encapsulated despite a native transfer syntax: let pydicom sort it out
        problem = _length_problem(header, length)
        if problem is not None:
            raise CTSynthError(problem, header.path,
                               "re-export or re-copy this file (or remove it and re-export the series)")
        fh.seek(header.pixel_offset + start)
        got = fh.readinto(memoryview(target).cast("B"))
    if got < expected:
        raise CTSynthError(
            f"the file is truncated: its pixel data holds {got} of the {expected} "
            f"bytes a {header.rows}x{header.columns} slice needs", header.path,
            "re-export or re-copy this file (or remove it and re-export the series)")
    return _check_sign_known(_mask_to_bits_stored(target, header), header)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _read_with_pydicom(header: SliceHeader, multi_frame: bool = False) -> np.ndarray:
    try:
        ds = pydicom.dcmread(header.path, force=True)
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is not None and syntax.is_transfer_syntax and not syntax.is_encapsulated:
            # pydicom would warn and trim pixel data longer than the header says: refuse it instead.
            frames = int(ds.get("NumberOfFrames", 1) or 1) if multi_frame else 1  # frame headers say 1 each
            problem = _length_problem(header, len(ds.PixelData or b""), frames)
            if problem is not None:
                raise CTSynthError(problem, header.path, "re-export or re-copy this file")
        arr = ds.pixel_array
    except CTSynthError:
        raise
    except (RuntimeError, NotImplementedError, ImportError) as exc:
        text = str(exc)
        if "plugin" in text.lower() or "decod" in text.lower() or isinstance(exc, (ImportError, NotImplementedError)):
            raise CTSynthError(f"cannot decode the pixel data (transfer syntax {header.transfer_syntax}: "
                               f"{_first_line(exc)})", header.path, _INSTALL_FIX) from exc
        raise CTSynthError(f"cannot decode the pixel data ({_first_line(exc)})", header.path,
                           "re-export or re-copy this file") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom and its decoders raise many types on corrupt pixel data
        raise CTSynthError(f"the pixel data is truncated or corrupt ({_first_line(exc)})", header.path,
                           "re-export or re-copy this file (or remove it and re-export the series)") from exc
    if multi_frame and arr.ndim == 2:
        arr = arr[None]
    expected = (arr.shape[0], header.rows, header.columns) if multi_frame else (header.rows, header.columns)
    if arr.shape != expected:
        raise CTSynthError(f"decoded pixel data has shape {arr.shape}, expected {expected}",
                           header.path, "re-export this file; ctsynth reads single-frame greyscale CT slices")
    if arr.dtype.kind not in "iu":
        raise CTSynthError(f"decoded pixel data is {arr.dtype}, not integer stored values", header.path,
                           "re-export this file; ctsynth reads integer CT pixel data")
    return arr


def decode_stored_values(header: SliceHeader, out: np.ndarray | None = None) -> np.ndarray:
    """The stored (pre-rescale) values of one slice as a (rows, columns) integer array.

    ``out`` is a hint: uncompressed pixels are read straight into it when the item sizes match (check with
    ``np.shares_memory``); otherwise a new array is returned.
    """
    with _named(header):
        if header.pixel_offset is not None:
            arr = _read_native(header, out)
            if arr is not None:
                return arr
        arr = None
        if header.encapsulated_offset is not None:  # compressed: the fastest installed decoder (dicom_codecs)
            from .dicom_codecs import decode_encapsulated

            arr = decode_encapsulated(header)  # None for anything odd (truncated, bad stream): pydicom decides
        return _check_sign_known(_read_with_pydicom(header) if arr is None else arr, header)


def decode_frames(header: SliceHeader) -> np.ndarray:
    """All frames of a multi-frame file as a (frames, rows, columns) array of stored values."""
    with _named(header):
        return _check_sign_known(_read_with_pydicom(header, multi_frame=True), header)


@contextlib.contextmanager
def _named(header: SliceHeader) -> Iterator[None]:
    """The last line of defence: any failure while decoding one file becomes a `CTSynthError` naming it."""
    try:
        yield
    except CTSynthError:
        raise
    except MemoryError as exc:
        raise CTSynthError(f"not enough memory to decode {header.rows} x {header.columns} pixels", header.path,
                           "check Rows and Columns in this file's header") from exc
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a Rust codec's panic (pyo3) is not an Exception
        raise CTSynthError(f"cannot read the pixel data ({_first_line(exc)})", header.path,
                           "re-export or re-copy this file (or remove it and re-export the series)") from exc


def decode_workers(n_items: int) -> int:
    """Threads for decoding: enough to overlap I/O and decoders, never more than the work."""
    return max(1, min(n_items, 8, (os.cpu_count() or 1) * 2))


def idle_cores() -> int:
    """Cores this process may use that other programs do not keep busy (affinity minus the 1-minute load
    average): the one rule for how many worker processes a header pass or a decode may start."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        return max(0, cores - int(os.getloadavg()[0]))
    except OSError:
        return cores


PROCESS_MIN_FILES = 32  # below this, forking workers costs more than the decode they would share


def decode_processes(n_files: int, transfer_syntax: str) -> int:
    """Worker processes for a decode: only where threads cannot share it, i.e. a syntax that pydicom's own
    (Python, GIL-bound) decoders handle, with at least two idle cores and a big enough series; never more
    than 8 or than the idle cores. A direct read (uncompressed) or one of ctsynth's C decoders (they release
    the GIL) runs in threads: a 300-file series read 0.09 s in threads and 0.16-0.19 s with two forked
    workers on the idle 2-core machine (benchmarks/RESULTS.md)."""
    from .dicom_codecs import decoder_name

    if decoder_name(transfer_syntax) != "pydicom":
        return 1
    if n_files < PROCESS_MIN_FILES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    idle = idle_cores()
    return 1 if idle < 2 else min(idle, 8, n_files // (PROCESS_MIN_FILES // 2))


def shared_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in anonymous shared memory: what a forked worker writes there, the parent
    sees. Freed when the array (its last view) is."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


_FORKED_WORK: Callable[[int], object] | None = None  # set in the parent just before the workers fork


def _run_span(span: tuple[int, int]) -> list[object]:
    results = []
    for i in range(*span):
        try:
            results.append(_FORKED_WORK(i))
        except Exception as exc:  # raised in the parent, first in item order
            return results + [_Failed(exc)]
    return results


class _Failed:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def run_parallel(n_items: int, work: Callable[[int], object], processes: int = 1) -> list[object]:
    """``work(i)`` for every item, results in item order; the first error (in item order) is raised.

    ``processes`` > 1: forked worker processes, each given contiguous spans of items (``work`` must then
    write its output to shared memory, see :func:`shared_empty`, and return what the parent needs);
    otherwise a thread pool. If no process can be started, the threads do the work."""
    with collect_messages("pydicom"):
        # pydicom's decoders warn about what the checks here refuse or accept on purpose (a compressed frame
        # as long as the raw one, trailing bytes); the user gets errors and notes, not library warnings.
        # Set once here, in the calling thread, around all workers (warning filters are process-wide, and
        # forked workers inherit them).
        if processes > 1:
            results = _run_forked(n_items, work, processes)
            if results is not None:
                return results
        workers = decode_workers(n_items)
        if workers == 1:
            return [work(i) for i in range(n_items)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [future.result() for future in [pool.submit(work, i) for i in range(n_items)]]


def _run_forked(n_items: int, work: Callable[[int], object], processes: int) -> list[object] | None:
    """:func:`run_parallel` on forked processes; None if no process could be started."""
    global _FORKED_WORK
    step = max(1, -(-n_items // (processes * 4)))
    spans = [(a, min(a + step, n_items)) for a in range(0, n_items, step)]
    _FORKED_WORK = work
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            results = [r for part in pool.map(_run_span, spans) for r in part]
    except (OSError, RuntimeError, BrokenProcessPool):
        return None
    finally:
        _FORKED_WORK = None
    for r in results:
        if isinstance(r, _Failed):
            raise r.exc
    return results

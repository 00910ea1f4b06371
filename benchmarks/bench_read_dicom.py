"""Reading DICOM CT series: ctsynth's reader vs SimpleITK's ImageSeriesReader, same run, per transfer syntax.

For each syntax, writes a 512x512xN series with ctsynth's writer into a temporary folder and recompresses it
(RLE with pydicom, JPEG 2000 and JPEG-LS with imagecodecs, JPEG lossless with imagecodecs' libjpeg-turbo,
each wrapped with pydicom's encapsulation), then times each reader best-of-N on the same files, alternating
them so neither gets a warmer cache or a quieter machine, and prints both times, the ratio and whether
both return the same array. The real JPEG-lossless series in ../shared/data/real-pacs (a GE/TCIA export)
is timed too when present. The machine's load average is printed beside the timings.

    python benchmarks/bench_read_dicom.py [--slices 300] [--size 512] [--repeats 3]
        [--syntax uncompressed rle jpeg2000 jpegls jpeg-lossless] [--real PATH | --no-real]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-pacs" / "ricord_covid_study"
SYNTAXES = ("uncompressed", "rle", "jpeg2000", "jpegls", "jpeg-lossless")


def _volume(slices: int, size: int):
    from ctsynth.volume import CTVolume

    rng = np.random.default_rng(0)
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 < 1
    lung = ((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.55) ** 2 < 1
    hu = np.where(body, np.where(lung, -850, 40), -1000).astype(np.int16)[None].repeat(slices, axis=0)
    hu += rng.integers(-20, 20, hu.shape, dtype=np.int16)
    return CTVolume(hu=hu, spacing_mm=(1.0, 0.7, 0.7))


def _recompress(folder: Path, syntax: str) -> None:
    """Rewrite every file of ``folder`` in ``syntax`` (stored values unchanged: lossless)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless

    if syntax == "uncompressed":
        return
    import imagecodecs

    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        if syntax == "rle":
            ds.compress(RLELossless)
        else:
            stored = ds.pixel_array  # int16 (PixelRepresentation 1)
            raw = stored.view(np.uint16)
            if syntax == "jpeg2000":
                frame, uid = imagecodecs.jpeg2k_encode(stored, level=0, codecformat="J2K"), JPEG2000Lossless
            elif syntax == "jpegls":
                frame, uid = imagecodecs.jpegls_encode(raw, level=0), JPEGLSLossless
            else:
                frame, uid = imagecodecs.jpeg8_encode(raw, lossless=True, predictor=1), JPEGLosslessSV1
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(f, enforce_file_format=True)


def _best_interleaved(fns: list, repeats: int) -> list[tuple[float, object]]:
    best = [float("inf")] * len(fns)
    results: list[object] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(best, results))


def _compare(name: str, folder: Path, repeats: int) -> float:
    import SimpleITK as sitk

    from ctsynth.io.dicom_codecs import decoder_name
    from ctsynth.io.dicom_headers import read_slice_headers
    from ctsynth.io.dicom_reader import read_dicom_series

    def read_ctsynth():
        return read_dicom_series(folder).hu

    def read_sitk():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return sitk.GetArrayFromImage(reader.Execute())

    read_ctsynth(), read_sitk()  # warm the page cache for both
    load_before = os.getloadavg()[0]
    (ours_s, ours), (sitk_s, theirs) = _best_interleaved([read_ctsynth, read_sitk], repeats)
    load_after = os.getloadavg()[0]
    first = next(p for p in sorted(folder.iterdir()) if p.is_file())
    syntax = read_slice_headers(first)[0].transfer_syntax
    same = bool(np.array_equal(ours, theirs))
    print(f"{name}: {'x'.join(map(str, ours.shape[::-1]))} ({syntax}, decoder: {decoder_name(syntax)}); "
          f"load {load_before:.1f}..{load_after:.1f} on {os.cpu_count()} CPUs")
    print(f"  ctsynth read_dicom_series  : {ours_s:.3f} s (best of {repeats})")
    print(f"  SimpleITK ImageSeriesReader: {sitk_s:.3f} s (best of {repeats})")
    print(f"  ratio SimpleITK / ctsynth  : {sitk_s / ours_s:.2f}x; same array: {same}")
    return sitk_s / ours_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--syntax", nargs="*", default=list(SYNTAXES), choices=SYNTAXES)
    parser.add_argument("--real", type=Path, default=REAL, help="a folder holding one real series' files")
    parser.add_argument("--no-real", action="store_true")
    args = parser.parse_args()

    from ctsynth.io.dicom_writer import write_dicom_series

    print(f"uptime load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for syntax in args.syntax:
            folder = Path(tmp) / syntax
            write_dicom_series(_volume(args.slices, args.size), folder)
            _recompress(folder, syntax)
            ratios[syntax] = _compare(syntax, folder, args.repeats)
    if not args.no_real:
        series = args.real
        if series.is_dir() and not any(p.is_file() for p in series.iterdir()):
            # The shared study: its axial routine series (the JPEG-lossless one).
            series = next((p for p in series.rglob("2.0*ROUTINE*") if p.is_dir()), series)
        if series.is_dir():
            ratios["real JPEG lossless"] = _compare(f"real series {series.name}", series, args.repeats)
        else:
            print(f"real series not found at {args.real}; skipped")
    print("summary: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()

"""Peak memory and wall time of `ctsynth inspect` over a big DICOM tree (issue #14 point 6: flat memory).

Builds, in a temporary folder (never in the repository), ``--studies`` studies of ``--files`` tiny
uncompressed 16x16 slices each (one patient, one StudyInstanceUID and one axial series per study; files
dumped under meaningless names), then runs ``ctsynth inspect --json`` on it in a child process and prints
the child's peak RSS (largest of the process and its header workers: ``ru_maxrss`` of the children), the
wall time and the load average before and after. Run it at two sizes to see how memory grows per file:

    python benchmarks/bench_discover.py --studies 300 --files 100   # 30,000 files
    python benchmarks/bench_discover.py --studies 1000 --files 100  # 100,000 files

The files are written from one pydicom-made template by replacing fixed-width values in its bytes, so a
100,000-file tree takes seconds to write, not the half hour pydicom would take.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

ROOT_UID = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix; every UID below has the same width


def _uid(kind: int, study: int, k: int = 0) -> str:
    return f"{ROOT_UID}{kind}.1{study:06d}.1{k:06d}"  # no leading zeros (a valid UID)


def _template() -> tuple[bytes, dict[str, str]]:
    """One 16x16 CT slice; returns its bytes and the placeholder values to replace per file."""
    marks = {"study": _uid(1, 999999), "series": _uid(2, 999999), "sop": _uid(3, 999999, 999999),
             "patient": "PATIENT999999", "position": "-0100.000\\-0100.000\\+00000.000"}
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = marks["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = marks["sop"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = marks["study"], marks["series"]
    ds.FrameOfReferenceUID = marks["study"]
    ds.PatientID, ds.PatientName = marks["patient"], "ANON"
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 2, "AX 1.25 STD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ConvolutionKernel, ds.SliceThickness = "STANDARD", 1.25
    ds.ImagePositionPatient = marks["position"].split("\\")
    ds["ImagePositionPatient"].value = marks["position"]  # keep the fixed-width text as written
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (np.arange(256, dtype=np.int16) * 4).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path.read_bytes(), marks


def build_tree(root: Path, studies: int, files: int) -> int:
    data, marks = _template()
    for key in ("study", "series", "sop", "patient", "position"):
        assert data.count(marks[key].encode()) >= 1, key
    n = 0
    for s in range(studies):
        folder = root / f"dump{s % 7}"  # several studies share a folder: identity from the headers
        folder.mkdir(parents=True, exist_ok=True)
        study = data.replace(marks["study"].encode(), _uid(1, s).encode()) \
            .replace(marks["series"].encode(), _uid(2, s).encode()) \
            .replace(marks["patient"].encode(), f"PATIENT{s:06d}".encode())
        for k in range(files):
            one = study.replace(marks["sop"].encode(), _uid(3, s, k).encode()) \
                .replace(marks["position"].encode(), f"-0100.000\\-0100.000\\+{k * 1.25:09.3f}".encode())
            (folder / f"{os.urandom(6).hex()}").write_bytes(one)
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--files", type=int, default=100, help="slices per study")
    parser.add_argument("--keep", type=Path, default=None, help="build the tree here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_discover_") as tmp:
        root = args.keep or Path(tmp) / "tree"
        if not root.exists():
            t0 = time.perf_counter()
            n = build_tree(root, args.studies, args.files)
            print(f"wrote {n} files in {time.perf_counter() - t0:.1f} s")
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ctsynth", "inspect", str(root), "--json"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        load1 = os.getloadavg()
        if proc.returncode != 0:
            sys.exit(f"inspect failed: {proc.stderr.strip()[-500:]}")
        report = json.loads(proc.stdout)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        n_files = args.studies * args.files
        print(f"{n_files} files, {len(report['studies'])} studies: peak RSS {peak_mb:.0f} MB "
              f"({1000 * peak_mb / n_files:.2f} MB per 1000 files, the interpreter included), "
              f"wall {wall:.1f} s ({1000 * wall / n_files:.2f} ms a file); "
              f"load average {load0[0]:.1f} before, {load1[0]:.1f} after")


if __name__ == "__main__":
    main()

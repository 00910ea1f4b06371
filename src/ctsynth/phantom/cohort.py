"""A labelled phantom cohort on disk: :func:`make_phantom_cohort`.

Layout of ``OUT``::

    labels.csv                 study,label  (covid / normal), one row per finished case
    phantom.json               how the cohort was made + per case: id, seed, label, lesion_fraction, shape, spacing
    case_0001.nii.gz           (nifti) or case_0001/ (a DICOM or TIFF slice folder)
    ground_truth/case_0001.npz uint8 lesion_mask and lung_mask, (z, y, x) like the volume

Every file is written atomically, case by case, and the two index files are rewritten after each case,
so an interrupted run leaves only complete cases, all listed (``phantom.json`` says ``"complete":
false``). An existing cohort is never mixed with a new one: a non-empty ``OUT`` is refused, and with
``overwrite`` only a folder that holds a ``phantom.json`` is reused, after deleting the cohort files it
recognises (nothing else in the folder is touched). Hidden temporaries left by a killed run are removed
before anything else.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CTSynthError
from ..io.atomic import atomic_write_bytes, atomic_write_text
from ..io.write import FORMATS, output_path, write_volume
from .case import PhantomCase, make_phantom_case

SEED_STRIDE = 100003
_COHORT_ENTRY = re.compile(r"^(case_\d+(\.nii\.gz)?|labels\.csv|phantom\.json|ground_truth)$")
# what ctsynth.io.atomic leaves behind when a run is killed: ".<name>.<random>.tmp..." beside the target
_OUR_TEMPORARY = re.compile(r"^\.(case_\d+(\.nii\.gz)?|labels\.csv|phantom\.json)\..+\.tmp")


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` (0-based) of a cohort: independent of the cohort size."""
    return seed * SEED_STRIDE + index


def cohort_labels(n: int, covid_fraction: float, seed: int) -> list[str]:
    """Exactly ``round(n * covid_fraction)`` "covid" labels, placed by a seeded permutation."""
    n_covid = int(round(n * covid_fraction))
    order = np.random.default_rng([seed, 0xC0]).permutation(n)
    labels = ["normal"] * n
    for i in order[:n_covid]:
        labels[int(i)] = "covid"
    return labels


def _check_args(n: int, covid_fraction: float, fmt: str, seed: int, size: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise CTSynthError(f"the number of cases must be at least 1, got {n}", None, "pass --n 1 or more")
    if not 0.0 <= covid_fraction <= 1.0:
        raise CTSynthError(f"the COVID fraction must be between 0 and 1, got {covid_fraction}", None,
                           "pass --covid-fraction between 0 and 1, e.g. 0.5")
    if fmt not in FORMATS:
        raise CTSynthError(f"unknown output format {fmt!r}", None, f"use one of {', '.join(FORMATS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CTSynthError(f"the seed must be a non-negative integer, got {seed}", None, "pass --seed 0 or more")
    if size < 32:
        raise CTSynthError(f"the image size must be at least 32 pixels, got {size}", None, "pass --size 32 or more")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CTSynthError("the output is a file, not a folder", out, "give a folder name for the cohort")
    if not out.exists():
        return
    for entry in out.iterdir():          # temporaries of a killed run are never a cohort: clear them
        if _OUR_TEMPORARY.match(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise CTSynthError("the output folder is not empty; nothing was written", out,
                           "choose a new folder, or pass --overwrite to replace a phantom cohort there")
    if not (out / "phantom.json").is_file():
        raise CTSynthError("the output folder is not empty and holds no phantom cohort (no phantom.json); "
                           "nothing was written", out, "choose a new or empty folder")
    for entry in out.iterdir():
        if not _COHORT_ENTRY.match(entry.name):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def save_ground_truth(case: PhantomCase, path: Path) -> None:
    """``lesion_mask`` and ``lung_mask`` as uint8 in a compressed npz, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, lesion_mask=case.lesion_mask.astype(np.uint8),
                        lung_mask=case.lung_mask.astype(np.uint8))
    atomic_write_bytes(path, buffer.getvalue())


def _write_index(out: Path, header: dict[str, Any], records: list[dict[str, Any]], complete: bool) -> None:
    rows = "".join(f"{r['id']},{r['label']}\n" for r in records)
    atomic_write_text(out / "labels.csv", "study,label\n" + rows)
    index = {**header, "complete": complete, "cases": records}
    atomic_write_text(out / "phantom.json", json.dumps(index, indent=1) + "\n")


def make_phantom_cohort(out: str | Path, n: int, *, covid_fraction: float = 0.5, fmt: str = "nifti",
                        seed: int = 0, size: int = 512, overwrite: bool = False,
                        progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Write ``n`` phantom cases (``round(n * covid_fraction)`` of them COVID) to ``out``; see module doc.

    Returns the per-case records also stored in ``phantom.json``. ``progress(i, n, record)`` is called
    after each case is written.
    """
    _check_args(n, covid_fraction, fmt, seed, size)
    out = Path(out)
    _prepare_out(out, overwrite)
    labels = cohort_labels(n, covid_fraction, seed)
    width = max(4, len(str(n)))
    header = {"generator": "ctsynth phantom", "seed": seed, "n": n, "covid_fraction": covid_fraction,
              "n_covid": labels.count("covid"), "format": fmt, "size": size,
              "case_seed": f"seed * {SEED_STRIDE} + index (index 0-based)"}
    records: list[dict[str, Any]] = []
    for i, label in enumerate(labels):
        case_id = f"case_{i + 1:0{width}d}"
        s = case_seed(seed, i)
        case = make_phantom_case(s, label, size=size)
        path = write_volume(case.volume, output_path(out / case_id, fmt), fmt)
        gt = out / "ground_truth" / f"{case_id}.npz"
        save_ground_truth(case, gt)
        record = {"id": case_id, "seed": s, "label": label, "lesion_fraction": round(case.lesion_fraction, 6),
                  "shape": list(case.volume.shape), "spacing": [round(v, 6) for v in case.volume.spacing_mm],
                  "path": path.name, "ground_truth": f"ground_truth/{gt.name}"}
        records.append(record)
        _write_index(out, header, records, complete=i + 1 == n)
        if progress is not None:
            progress(i + 1, n, record)
    return records

"""`ctsynth inspect DATA`: what ctsynth finds in a data folder, one line per study.

Exit status: 0 when every study was read, 1 when some could not be read (each is listed with its problem),
2 when the folder itself is unusable (no studies, a bad labels file...).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

import numpy as np

from ._data_args import add_data_options, series_rules

SAMPLE_VOXELS = 2_000_000


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="list the CT studies in a folder: shape, spacing, HU range, label, problems",
        description="Read every study under DATA (one at a time) and report its source, series, shape (z,y,x), "
                    "spacing, HU range, label and problems. Exit 0 if all were read, 1 if some failed.")
    parser.add_argument("data", metavar="DATA", help="a data folder, or one .nii/.nii.gz file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_data_options(parser)
    parser.set_defaults(func=run)


def hu_summary(hu: np.ndarray) -> dict[str, float]:
    """Exact min/max; 1st/99th percentiles from a regular subsample of at most ~2M voxels."""
    flat = hu.reshape(-1)
    step = max(1, flat.size // SAMPLE_VOXELS)
    p1, p99 = np.percentile(flat[::step], [1, 99])
    return {"min": float(flat.min()), "max": float(flat.max()), "p1": float(p1), "p99": float(p99)}


def inspect_study(study, redact: Callable[[str], str] = str) -> dict[str, Any]:
    """Read one study and summarise it; a read failure becomes ``problem``. ``redact`` turns clear DICOM
    identifiers in paths and messages into their tokens (``Discovery.redact``)."""
    from ..errors import CTSynthError

    row: dict[str, Any] = {
        "id": study.id, "patient": study.patient, "kind": study.kind, "path": redact(str(study.path)),
        "series": study.series, "series_uid": redact(study.series_uid) if study.series_uid else None,
        "label": study.label, "shape": None, "spacing_mm": None, "hu": None, "notes": list(study.notes),
        "problem": None,
    }
    if study.options.get("choices"):
        row["series_choice"] = study.options["choices"]
    try:
        volume = study.read()
    except CTSynthError as exc:
        row["problem"] = redact(str(exc))
        return row
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # a reader bug on one odd study must not hide the others; reported as a problem
        row["problem"] = redact(f"{study.path}: unexpected {type(exc).__name__}: {exc}")
        return row
    row["shape"] = list(volume.shape)
    row["spacing_mm"] = list(volume.spacing_mm)
    row["origin_mm"] = [round(o, 3) for o in volume.origin_mm]
    row["dtype"] = str(volume.hu.dtype)
    row["hu"] = hu_summary(volume.hu)
    row["notes"] = [redact(n) for n in volume.meta.get("notes", [])]
    if row["hu"]["p1"] > -300:
        row["notes"].append(f"no air or lung in the HU histogram (1st percentile {row['hu']['p1']:.0f} HU): "
                            "values may not be HU; for TIFF check --offset")
    return row


def _format_row(row: dict[str, Any]) -> list[str]:
    shape = "x".join(str(n) for n in row["shape"]) if row["shape"] else "-"
    spacing = "x".join(f"{s:.4g}" for s in row["spacing_mm"]) if row["spacing_mm"] else "-"
    if row["hu"]:
        hu = row["hu"]
        hu_range = f"{hu['min']:.0f}..{hu['max']:.0f}"
        pct = f"{hu['p1']:.0f}..{hu['p99']:.0f}"
    else:
        hu_range = pct = "-"
    status = "FAILED" if row["problem"] else ("note" if row["notes"] else "ok")
    return [row["id"], row["kind"], row["series"] or "-", row["label"] or "-", row["patient"], shape, spacing,
            hu_range, pct, status]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _print_table(rows: list[dict[str, Any]], found) -> None:
    header = ["study", "kind", "series", "label", "patient", "shape z,y,x", "spacing mm", "HU min..max",
              "HU p1..p99", "status"]
    table = [header] + [_format_row(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    for row in rows:
        if row["problem"]:
            print(f"{row['id']}: problem: {row['problem']}")
        for note in row["notes"]:
            print(f"{row['id']}: note: {note}")
    for note in found.notes:
        print(f"note: {note}")
    labels = [r["label"] for r in rows]
    failed = sum(1 for r in rows if r["problem"])
    n_patients = len({r["patient"] for r in rows})
    print(f"{_count(len(rows), 'study', 'studies')} from {_count(n_patients, 'patient', 'patients')}: "
          f"{labels.count('covid')} covid, {labels.count('normal')} normal, {labels.count(None)} unlabelled; "
          f"{failed} could not be read"
          + (f"; labels from {found.labels_file}" if found.labels_file else "")
          + (f"; spacing metadata from {found.metadata_file}" if found.metadata_file else ""))


def run(args: argparse.Namespace) -> int:
    from ..io.discover import discover

    found = discover(args.data, labels=args.labels, metadata=args.metadata, label_map=args.label_map,
                     offset=args.offset, spacing_mm=args.spacing, series=series_rules(args),
                     skip_unreadable=args.skip_unreadable)
    rows = []
    for k, study in enumerate(found.studies, start=1):
        print(f"[{k}/{len(found.studies)}] reading {study.id}", file=sys.stderr)
        rows.append(inspect_study(study, found.redact))
    if args.json:
        print(json.dumps({
            "root": found.redact(str(found.root)),
            "labels_file": None if found.labels_file is None else str(found.labels_file),
            "metadata_file": None if found.metadata_file is None else str(found.metadata_file),
            "notes": [found.redact(n) for n in found.notes],
            "studies": rows,
        }, indent=2))
    else:
        _print_table(rows, found)
    failed = [r for r in rows if r["problem"]]
    if failed:
        print(f"ctsynth inspect: {len(failed)} of {len(rows)} studies could not be read "
              f"(first: {failed[0]['problem']})", file=sys.stderr)
        return 1
    return 0

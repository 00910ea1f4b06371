"""`ctsynth phantom OUT --n N`: write a labelled cohort of procedural chest CT phantoms."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import CTSynthError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom", help="write a labelled cohort of procedural chest CT phantoms (COVID-19 and normal)",
        description="Procedural chest CT phantoms in HU with known lesion and lung masks. Writes OUT/labels.csv, "
                    "OUT/phantom.json, one study per case and OUT/ground_truth/<case>.npz. Same seed, same cohort.")
    parser.add_argument("out", metavar="OUT", help="output folder (new or empty; see --overwrite)")
    parser.add_argument("--n", type=int, required=True, help="number of cases (>= 1)")
    parser.add_argument("--covid-fraction", type=float, default=0.5,
                        help="fraction of COVID-19 cases, 0..1 (exactly round(n * F) cases; default 0.5)")
    parser.add_argument("--format", choices=("nifti", "dicom", "tiff"), default="nifti", dest="fmt",
                        help="output format of each case (default nifti: case_0001.nii.gz)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (>= 0; default 0)")
    parser.add_argument("--size", type=int, default=512, help="in-plane matrix in pixels (>= 32; default 512)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing phantom cohort in OUT (other files there are left alone)")
    parser.set_defaults(func=run)


def _validate(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise CTSynthError(f"--n must be at least 1, got {args.n}", None, "pass --n 1 or more")
    if not 0.0 <= args.covid_fraction <= 1.0:
        raise CTSynthError(f"--covid-fraction must be between 0 and 1, got {args.covid_fraction}", None,
                           "pass a fraction such as 0.5")
    if args.size < 32:
        raise CTSynthError(f"--size must be at least 32 pixels, got {args.size}", None, "pass --size 32 or more")
    if args.seed < 0:
        raise CTSynthError(f"--seed must be 0 or more, got {args.seed}", None, "pass a non-negative seed")


def run(args: argparse.Namespace) -> int:
    from ..phantom import make_phantom_cohort

    _validate(args)
    start = time.perf_counter()

    def progress(i: int, n: int, record: dict) -> None:
        print(f"[{i}/{n}] {record['id']}: {record['label']}, {record['shape'][0]} slices, "
              f"lesion fraction {record['lesion_fraction']:.3f} ({time.perf_counter() - start:.1f} s)",
              file=sys.stderr, flush=True)

    records = make_phantom_cohort(args.out, args.n, covid_fraction=args.covid_fraction, fmt=args.fmt,
                                  seed=args.seed, size=args.size, overwrite=args.overwrite, progress=progress)
    n_covid = sum(r["label"] == "covid" for r in records)
    cases = "case" if len(records) == 1 else "cases"
    print(f"wrote {len(records)} phantom {cases} ({n_covid} covid, {len(records) - n_covid} normal) as {args.fmt} "
          f"to {args.out} in {time.perf_counter() - start:.1f} s; labels in {args.out}/labels.csv, "
          f"lesion and lung masks in {args.out}/ground_truth/")
    return 0

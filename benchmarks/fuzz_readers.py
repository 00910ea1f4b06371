"""Fuzz the readers: `python benchmarks/fuzz_readers.py --cases 20000 --seed 0 [--format dicom] [--jobs 2]`.

Builds valid DICOM series, NIfTI files and TIFF folders from small constructed volumes, corrupts one file per
case (see `ctsynth.io.fuzz`), reads each with `read_study` and prints the count of every outcome, per format,
with examples of each bad outcome. Exit status 1 if any bad outcome occurred. State the machine's load
(`uptime`) beside the time when recording results.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from ctsynth.io.fuzz import BAD_OUTCOMES, Summary, run_case


def _chunk(args: tuple[int, int, int, str | None]) -> Summary:
    start, stop, seed, fmt = args
    summary = Summary()
    for index in range(start, stop):
        summary.add(run_case(index, seed, fmt))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (to replay one case)")
    parser.add_argument("--format", choices=("dicom", "nifti", "tiff"))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    step = 200
    chunks = [(a, min(a + step, args.start + args.cases), args.seed, args.format)
              for a in range(args.start, args.start + args.cases, step)]
    total = Summary()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for part in pool.map(_chunk, chunks):
            total.counts.update(part.counts)
            for fmt, counts in part.by_format.items():
                total.by_format.setdefault(fmt, type(counts)()).update(counts)
            for outcome, examples in part.examples.items():
                total.examples.setdefault(outcome, []).extend(examples[: max(0, 8 - len(total.examples.get(outcome, [])))])
            done = sum(total.counts.values())
            print(f"{done}/{args.cases} cases, {time.perf_counter() - t0:.0f} s, bad {total.bad}", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    print(f"seed {args.seed}, cases {args.start}..{args.start + args.cases - 1}, {elapsed:.0f} s, "
          f"{args.jobs} process(es), load {os.getloadavg()[0]:.2f}")
    for fmt, counts in sorted(total.by_format.items()):
        print(f"  {fmt:6s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("  total  " + ", ".join(f"{k} {v}" for k, v in sorted(total.counts.items())))
    print("  bad outcomes: " + ", ".join(f"{o} {total.counts[o]}" for o in BAD_OUTCOMES))
    for outcome, examples in total.examples.items():
        print(f"-- {outcome}")
        for line in examples:
            print(f"   {line}")
    return 1 if total.bad else 0


if __name__ == "__main__":
    sys.exit(main())

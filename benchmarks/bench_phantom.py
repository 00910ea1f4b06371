"""Time to make one phantom chest CT (default 512 x 512 x 48) and to write it in each format.

    OMP_NUM_THREADS=1 python benchmarks/bench_phantom.py [--size 512] [--depth 48] [--repeats 3]

Prints seconds per case (median over seeds, normal and COVID), peak memory of the build, and the write
time per format.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from ctsynth.io import write_volume
from ctsynth.phantom import make_phantom_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    make_phantom_case(0, "covid", size=64, depth=args.depth)   # imports and caches warm
    times = {"normal": [], "covid": []}
    case = None
    for seed in range(args.repeats):
        for label in times:
            t = time.perf_counter()
            case = make_phantom_case(seed, label, size=args.size, depth=args.depth)
            times[label].append(time.perf_counter() - t)
    tracemalloc.start()
    make_phantom_case(0, "covid", size=args.size, depth=args.depth)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    shape = "x".join(str(s) for s in (args.size, args.size, args.depth))
    for label, ts in times.items():
        print(f"make_phantom_case {shape} {label:6s}: median {statistics.median(ts):.2f} s "
              f"(min {min(ts):.2f}, max {max(ts):.2f}, n={len(ts)})")
    voxels = args.size * args.size * args.depth
    print(f"peak traced memory of one build: {peak / 2**20:.0f} MiB "
          f"({peak / (voxels * 4):.1f}x the float32 volume)")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("nifti", "dicom", "tiff"):
            t = time.perf_counter()
            path = write_volume(case.volume, Path(tmp) / f"case_{fmt}", fmt)
            dt = time.perf_counter() - t
            size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")))
            print(f"write {fmt:5s}: {dt:.2f} s, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

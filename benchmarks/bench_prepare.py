"""Time per study and peak memory of `prepare_cache` on phantom chest CTs (512 x 512 in-plane by default).

Prints seconds per study for each mode and the peak resident memory after the first study and after all of
them: the ratio shows whether memory grows with the number of studies (it should stay near 1.0).

    python benchmarks/bench_prepare.py [--n 6] [--size 512] [--config lung]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PhantomStudy:
    """A study made on read (no disk I/O for the source), so the numbers are prepare's own."""

    def __init__(self, i: int, size: int):
        self.id, self.patient, self.kind = f"case_{i:04d}", f"patient{i}", "nifti"
        self.label = "covid" if i % 2 else "normal"
        self.path, self.files, self.size, self.seed = Path(f"phantom_{i}"), [], size, i

    def read(self):
        from ctsynth.phantom import make_phantom_case

        return make_phantom_case(self.seed, self.label, self.size).volume


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--config", default="lung")
    args = parser.parse_args()

    from ctsynth.config import load_config
    from ctsynth.preprocess import prepare as prep

    config = load_config(args.config)
    studies = [PhantomStudy(i, args.size) for i in range(args.n)]
    times: list[float] = []
    rss: list[float] = []
    shapes: list[tuple[int, ...]] = []
    original = prep.prepare_volume

    def timed(volume, data):
        shapes.append(volume.shape)
        start = time.perf_counter()
        result = original(volume, data)
        times.append(time.perf_counter() - start)
        rss.append(peak_rss_mb())
        return result

    prep.prepare_volume = timed
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prep.prepare_cache(Path(tmp) / "data", config, Path(tmp) / "prep", progress=False,
                           discover=lambda *a, **k: studies)
        total = time.perf_counter() - start
    print(f"config {config.name}: mode {config.data.mode}, shape {tuple(config.data.shape)}, "
          f"{args.n} phantom studies of {args.size}x{args.size}")
    print(f"prepare_volume (lung mask if lung mode, crop, resample, clip): {sum(times) / len(times):.2f} s per study "
          f"(min {min(times):.2f}, max {max(times):.2f})")
    print(f"whole run incl. making the phantoms and writing: {total:.1f} s")
    print(f"peak RSS after study 1: {rss[0]:.0f} MB, after study {args.n}: {rss[-1]:.0f} MB, "
          f"ratio {rss[-1] / rss[0]:.2f} (phantom depths vary: source shapes {shapes}; the peak follows the "
          f"largest study, not the count)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

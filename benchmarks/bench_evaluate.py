"""Time and peak memory of `ctsynth evaluate` on 100 synthetic vs 300 real volumes at 48x240x360.

How the volumes are made (no data needed, nothing written but the report): a few phantom cases
(``make_phantom_case``, size 256, 48 slices, half covid) are resampled to 48x240x360 once; each of the 400
volumes is one of them, rolled by a random offset of up to 8 voxels in-plane and 2 slices, with a random HU
offset (+-15) and fresh Gaussian noise (sigma 15 HU), made when the evaluation asks for it (the real set is
split 90/10 by "patient" like a prepared cache). The metric values are not meaningful here (the volumes are
near-copies of a few bases, so the memorisation check flags many); the point is the cost of the pipeline:
streaming, per-volume summaries, encoder and classifier training, nearest-neighbour search and the report.
Reading from disk is not included (a cached study is a memory-mapped int16 array).

Usage: python benchmarks/bench_evaluate.py [--small] [--out DIR]
  --small: 10 synthetic vs 30 real at the same shape, and fewer training steps (a quick run)
Prints wall time, time per volume, peak RSS (ru_maxrss) and the ratio to the 16 GB budget.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (48, 240, 360)
BUDGET_GB = 16.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10 synthetic vs 30 real (quick)")
    parser.add_argument("--bases", type=int, default=6, help="distinct phantom cases the volumes derive from")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: a temporary folder)")
    args = parser.parse_args()

    from ctsynth.evaluate.inputs import StudyItem
    from ctsynth.evaluate.pipeline import EvaluateOptions, evaluate_items
    from ctsynth.phantom import make_phantom_case
    from ctsynth.preprocess.resample import resample_volume

    n_real, n_synth = (30, 10) if args.small else (300, 100)
    t0 = time.perf_counter()
    bases = []
    for k in range(args.bases):
        case = make_phantom_case(k, "covid" if k % 2 else "normal", size=256, depth=48)
        bases.append(resample_volume(case.volume, shape=SHAPE))
    t_bases = time.perf_counter() - t0
    print(f"made {len(bases)} base volumes at {SHAPE} in {t_bases:.1f} s", file=sys.stderr)

    def loader(index: int, base: int):
        def load():
            rng = np.random.default_rng(index)
            src = bases[base]
            shift = (int(rng.integers(-2, 3)), int(rng.integers(-8, 9)), int(rng.integers(-8, 9)))
            hu = np.roll(np.asarray(src.hu, dtype=np.float32), shift, axis=(0, 1, 2))
            hu += float(rng.uniform(-15, 15))
            hu += rng.normal(0.0, 15.0, hu.shape).astype(np.float32)
            volume = src.with_hu(hu)
            volume.label = src.label
            return volume
        return load

    real_items = [StudyItem(id=f"real_{i:04d}", patient=f"p{i:04d}", label=bases[i % len(bases)].label,
                            group="held_out" if i % 10 == 0 else "train", load=loader(i, i % len(bases)))
                  for i in range(n_real)]
    synth = [StudyItem(id=f"syn_{i:04d}", patient=f"s{i:04d}", label=bases[i % len(bases)].label,
                       group="synthetic", load=loader(100_000 + i, i % len(bases))) for i in range(n_synth)]
    steps = 60 if args.small else 300
    options = EvaluateOptions(encoder_steps=steps, classifier_steps=steps, bootstrap=200 if args.small else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "report"
        t1 = time.perf_counter()
        report = evaluate_items(real_items, {"synthetic": synth}, out, grid=SHAPE, options=options)
        wall = time.perf_counter() - t1
        html_mb = (out / "report.html").stat().st_size / 1e6
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    n = n_real + n_synth
    print(f"evaluate: {n_synth} synthetic vs {n_real} real at {SHAPE}")
    print(f"  wall time        {wall:8.1f} s  ({wall / n:.2f} s per volume; base phantoms {t_bases:.1f} s extra)")
    print(f"  peak RSS         {peak_gb:8.2f} GB  ({peak_gb / BUDGET_GB:.2%} of the {BUDGET_GB:g} GB budget)")
    print(f"  report.html      {html_mb:8.2f} MB")
    print(f"  pipeline's own   {report.metrics['seconds']:8.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

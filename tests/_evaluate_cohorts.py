"""Small phantom cohorts shared by the tests/test_evaluate_*.py files (built once per test process).

Cohorts are made with ctsynth.phantom.make_phantom_case at 64 x 64 pixels and 24 slices, resampled to the
test evaluation grid, so every evaluation test runs in seconds on a CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ctsynth.volume import CTVolume

SIZE = 64
DEPTH = 24
GRID = (24, 48, 64)


@functools.lru_cache(maxsize=None)
def case(seed: int, label: str):
    from ctsynth.phantom import make_phantom_case

    return make_phantom_case(seed, label, size=SIZE, depth=DEPTH)


def labels_for(n: int) -> list[str]:
    return ["covid" if k % 2 else "normal" for k in range(n)]


def cohort(seed0: int, n: int) -> list[CTVolume]:
    return [case(seed0 + k, label).volume for k, label in enumerate(labels_for(n))]


def shifted(volume: CTVolume, hu: float = 100.0) -> CTVolume:
    return volume.with_hu(np.asarray(volume.hu, dtype=np.float32) + hu)


def noise_volume(seed: int, like: CTVolume) -> CTVolume:
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1024, 400, like.shape).astype(np.float32)
    return like.with_hu(hu)


def write_cohort(folder: Path, volumes: list[CTVolume], labels: list[str] | None = None) -> Path:
    """NIfTI files + labels.csv, the layout `ctsynth phantom` and `ctsynth generate` write."""
    from ctsynth.io.nifti import write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["study,label"]
    for k, volume in enumerate(volumes):
        write_nifti(volume, folder / f"case_{k:04d}.nii.gz")
        rows.append(f"case_{k:04d},{(labels or [v.label for v in volumes])[k]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def summaries(volumes: list[CTVolume], group: str = "real"):
    from ctsynth.evaluate.features import summarise_volume
    from ctsynth.evaluate.inputs import to_grid

    return [summarise_volume(to_grid(v, GRID), study_id=f"{group}_{k}", group=group) for k, v in enumerate(volumes)]


def conspicuous_cohort(seed0: int, n: int) -> tuple[list[CTVolume], list[str]]:
    """Phantom anatomy with lesions a classifier on 16x48x64 thumbnails can see.

    The phantom's own lesions at 64 px are too faint to see at thumbnail size (a 25% lesion case looks like
    its lesion-free twin), so every other case gets four ground-glass spheres of 30-40 mm radius (about a fifth of the lungs) at
    -450 HU painted inside its lung mask; labels follow ("covid" with spheres, "normal" without).
    """
    volumes, labels = [], []
    for k in range(n):
        base = case(seed0 + k, labels_for(n)[k])
        hu = np.asarray(base.volume.hu, dtype=np.float32).copy()
        label = "covid" if k % 2 else "normal"
        if label == "covid":
            rng = np.random.default_rng(10_000 + seed0 + k)
            zz, yy, xx = np.indices(hu.shape, dtype=np.float32)
            sz, sy, sx = base.volume.spacing_mm
            points = np.argwhere(base.lung_mask)
            for _ in range(4):
                c = points[rng.integers(len(points))]
                r = rng.uniform(30.0, 40.0)
                ball = ((zz - c[0]) * sz) ** 2 + ((yy - c[1]) * sy) ** 2 + ((xx - c[2]) * sx) ** 2 <= r * r
                ball &= base.lung_mask
                hu[ball] = np.maximum(hu[ball], -450.0 + rng.normal(0.0, 20.0, int(ball.sum())))
        volume = base.volume.with_hu(hu)
        volume.label = label
        volumes.append(volume)
        labels.append(label)
    return volumes, labels

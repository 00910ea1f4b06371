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

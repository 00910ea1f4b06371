"""Test cohorts with known answers for the prepare/segment tests: ellipsoid chests and in-memory studies."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np

from ctsynth.errors import CTSynthError
from ctsynth.volume import CTVolume


def ellipsoid_chest(n: int = 64, nz: int = 32, seed: int = 0, lesion: bool = True,
                    trachea: bool = False, fused: bool = False):
    """A body (40 HU) on a table (200 HU) in air, two lungs (-850 HU ellipsoids) with an enclosed
    consolidation (+20 HU) in the left one, scanner noise. Returns (volume, lungs, left, table)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:nz, 0:n, 0:n].astype(np.float32)
    cy, cx = n / 2, n / 2
    hu = np.full((nz, n, n), -1000.0, np.float32)
    body = ((y - cy) / (0.38 * n)) ** 2 + ((x - cx) / (0.46 * n)) ** 2 <= 1
    hu[body] = 40
    table = np.zeros_like(body)
    table[:, int(cy + 0.43 * n):int(cy + 0.46 * n), 2:n - 2] = True
    hu[table] = 200
    offset = 0.14 if fused else 0.2
    left = ((z - nz / 2) / (0.4 * nz)) ** 2 + ((y - cy) / (0.28 * n)) ** 2 \
        + ((x - (cx + offset * n)) / (0.14 * n)) ** 2 <= 1
    right = ((z - nz / 2) / (0.4 * nz)) ** 2 + ((y - cy) / (0.28 * n)) ** 2 \
        + ((x - (cx - offset * n)) / (0.14 * n)) ** 2 <= 1
    lungs = left | right
    hu[lungs] = -850
    if lesion:
        les = ((z - nz / 2) / 3) ** 2 + ((y - cy - 2) / 4) ** 2 + ((x - (cx + 0.2 * n)) / 4) ** 2 <= 1
        hu[les & left] = 20
    if trachea:
        tube = (((y - (cy - 0.1 * n)) ** 2 + (x - cx) ** 2) <= 3 ** 2) & (z >= nz * 0.75)
        hu[tube] = -1000
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return CTVolume(hu=hu, spacing_mm=(5.0, 6.0, 6.0)), lungs, left & ~right, table


class FakeStudy:
    """A study whose volume is made on read; tracks how many of its volumes are still alive."""

    alive: list[weakref.ref] = []
    max_alive = 0

    def __init__(self, i: int, fail: bool = False):
        self.id, self.patient, self.kind = f"case_{i}", f"patient{i}", "nifti"
        self.label = "covid" if i % 2 else "normal"
        self.path = Path(f"/nonexistent/case_{i}.nii.gz")
        self.files = []
        self.fail = fail
        self.seed = i

    def read(self) -> CTVolume:
        if self.fail:
            raise CTSynthError("not a NIfTI file", self.path, "re-export it")
        gc.collect()
        FakeStudy.alive = [r for r in FakeStudy.alive if r() is not None]
        volume, *_ = ellipsoid_chest(n=40, nz=12, seed=self.seed)
        FakeStudy.alive.append(weakref.ref(volume))
        FakeStudy.max_alive = max(FakeStudy.max_alive, len(FakeStudy.alive))
        return volume

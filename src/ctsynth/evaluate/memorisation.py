"""Memorisation: is a synthetic volume a near-copy of a training volume?

Similarity of two volumes is the normalised cross-correlation (NCC, Pearson correlation of voxels) of their
memorisation descriptors (:func:`.features.memorisation_descriptor`: the volume on the evaluation grid,
area-averaged to at most 32x96x128, band-passed by a difference of Gaussians), maximised over small shifts
(up to 1 voxel in z and 2 in y and x; the centre crop of the training descriptor against every shifted
window of the query), so a copy that was noised, intensity-shifted or moved by a few millimetres still
matches. NCC ignores a change of HU offset or contrast by construction. The band-pass matters: plain
thumbnails of two different chests correlate at 0.8-0.95 (same layout), which leaves no room between a
different patient and a noisy copy; the band-passed fine structure of different patients correlates far
less while a copy keeps it.

The threshold is data-driven: the 99th percentile of the held-out real volumes' nearest-training
similarities (see :func:`percentile_threshold` for how it is estimated from few volumes). Held-out patients are real people the model never saw, so a synthetic volume above that is
closer to a training patient than an unseen real patient is: flagged.

:class:`MemorisationAudit` is the same test for one volume at a time (``ctsynth generate --audit PREP``).
The evaluation report also gives the cosine similarity of trained-encoder features (centred on the training
mean) with its own held-out threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import HELD_OUT_FRACTION
from ..volume import CTVolume

SEARCH_SHIFT = (1, 2, 2)
THRESHOLD_PERCENTILE = 99.0


def _zscore_rows(m: np.ndarray) -> np.ndarray:
    m = m - m.mean(axis=1, keepdims=True)
    norm = np.sqrt((m * m).mean(axis=1, keepdims=True))
    return m / np.where(norm > 1e-6, norm, 1.0)


def _shift(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(min(s, max((n - 4) // 2, 0)) for s, n in zip(SEARCH_SHIFT, shape))  # type: ignore[return-value]


class NearestNeighbourIndex:
    """Training descriptors, searchable by shift-tolerant NCC."""

    def __init__(self, descriptors: np.ndarray, ids: list[str]) -> None:
        descriptors = np.asarray(descriptors, dtype=np.float32)
        self.ids = list(ids)
        self.shape = descriptors.shape[1:]
        self.shift = _shift(self.shape)
        sz, sy, sx = self.shift
        z, y, x = self.shape
        centre = descriptors[:, sz:z - sz, sy:y - sy, sx:x - sx].reshape(len(descriptors), -1)
        self.train = _zscore_rows(centre).astype(np.float32)

    def _windows(self, descriptor: np.ndarray) -> np.ndarray:
        sz, sy, sx = self.shift
        z, y, x = self.shape
        wins = [descriptor[dz:z - 2 * sz + dz, dy:y - 2 * sy + dy, dx:x - 2 * sx + dx].ravel()
                for dz in range(2 * sz + 1) for dy in range(2 * sy + 1) for dx in range(2 * sx + 1)]
        return _zscore_rows(np.stack(wins).astype(np.float32))

    def similarities(self, descriptor: np.ndarray) -> np.ndarray:
        """Best-over-shifts NCC of ``descriptor`` with every training descriptor (N,)."""
        descriptor = np.asarray(descriptor, dtype=np.float32)
        if descriptor.shape != self.shape:
            raise ValueError(f"descriptor shape {descriptor.shape} != index shape {self.shape}")
        scores = self._windows(descriptor) @ self.train.T / self.train.shape[1]
        return scores.max(axis=0)

    def nearest(self, descriptor: np.ndarray) -> tuple[float, int]:
        sims = self.similarities(descriptor)
        best = int(np.argmax(sims))
        return float(sims[best]), best


def percentile_threshold(held_out_similarities: np.ndarray) -> float:
    """The 99th percentile of held-out nearest similarities, estimated so that few held-out volumes do not
    make it too low: the larger of the empirical percentile and the upper 99% prediction bound for one new
    value from a normal fitted on the Fisher-z scale (atanh; similarities are correlations in [-1, 1]),
    ``mean + t(0.99, n-1) * sd * sqrt(1 + 1/n)``. The empirical 99th percentile of a few dozen values is
    their maximum, which an unseen patient exceeds with probability 1 / (n + 1)."""
    from scipy.stats import t as student_t

    values = np.clip(np.asarray(held_out_similarities, dtype=np.float64), -0.999999, 0.999999)
    empirical = float(np.percentile(values, THRESHOLD_PERCENTILE))
    n = values.size
    if n < 3:
        return empirical
    z = np.arctanh(values)
    bound = z.mean() + float(student_t.ppf(THRESHOLD_PERCENTILE / 100.0, n - 1)) * z.std(ddof=1) * np.sqrt(1 + 1 / n)
    return max(empirical, float(np.tanh(bound)))


def cosine_nearest(train_features: np.ndarray, query: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine similarity, index of the nearest training row) for each query row; features centred."""
    def unit(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64) - centre
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    sims = unit(query) @ unit(train_features).T
    return sims.max(axis=1), sims.argmax(axis=1)


@dataclass
class AuditResult:
    similarity: float
    nearest_id: str
    threshold: float
    flagged: bool


class MemorisationAudit:
    """Checks single volumes against a reference training set (see the module docstring)."""

    def __init__(self, index: NearestNeighbourIndex, threshold: float, grid: tuple[int, int, int],
                 held_out_similarities: np.ndarray | None = None) -> None:
        self.index = index
        self.threshold = float(threshold)
        self.grid = tuple(grid)
        self.held_out_similarities = held_out_similarities

    @classmethod
    def from_descriptors(cls, train: np.ndarray, train_ids: list[str], held_out: np.ndarray,
                         grid: tuple[int, int, int]) -> "MemorisationAudit":
        """The index of the training descriptors and the threshold from the held-out ones' nearest
        similarities (:func:`percentile_threshold`): the one place both are made, for the evaluation report
        and for ``generate --audit``."""
        index = NearestNeighbourIndex(np.asarray(train), train_ids)
        held = np.asarray([index.nearest(d)[0] for d in held_out])
        return cls(index, percentile_threshold(held), grid, held)

    @classmethod
    def from_reference(cls, path: str | Path, *, seed: int = 0, held_out_fraction: float = HELD_OUT_FRACTION,
                       grid: tuple[int, int, int] | None = None) -> "MemorisationAudit":
        """Build from a prepared cache (its split) or a data folder (a seeded patient-level split)."""
        from .features import memorisation_descriptor
        from .inputs import DEFAULT_GRID, check_real_split, plan_real, to_grid

        items, cache_grid, _ = plan_real(Path(path), seed=seed, held_out_fraction=held_out_fraction)
        check_real_split(items, Path(path))
        grid = tuple(grid or cache_grid or DEFAULT_GRID)
        thumbs = {item.id: memorisation_descriptor(to_grid(item.load(), grid).hu) for item in items}
        train_ids = [i.id for i in items if i.group == "train"]
        held = [thumbs[i.id] for i in items if i.group == "held_out"]
        return cls.from_descriptors(np.stack([thumbs[i] for i in train_ids]), train_ids, np.stack(held), grid)

    def check_descriptor(self, thumb: np.ndarray) -> AuditResult:
        similarity, best = self.index.nearest(thumb)
        return AuditResult(similarity=similarity, nearest_id=self.index.ids[best], threshold=self.threshold,
                           flagged=similarity > self.threshold)

    def check(self, volume: CTVolume) -> AuditResult:
        """Resample ``volume`` to the reference grid and compare it with every training volume."""
        from .features import memorisation_descriptor
        from .inputs import to_grid

        return self.check_descriptor(memorisation_descriptor(to_grid(volume, self.grid).hu))

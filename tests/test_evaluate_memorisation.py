"""The memorisation audit flags copies of training volumes (exact, and noised + shifted) and no fresh case."""

from __future__ import annotations

import numpy as np
import pytest

from _evaluate_cohorts import GRID, cohort, write_cohort
from ctsynth.errors import CTSynthError
from ctsynth.evaluate.memorisation import MemorisationAudit, NearestNeighbourIndex, percentile_threshold


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    folder = write_cohort(tmp_path_factory.mktemp("real") / "data", cohort(0, 20))
    return MemorisationAudit.from_reference(folder, grid=GRID, held_out_fraction=0.5), folder


def test_planted_copies_are_flagged(audit):
    audit, _ = audit
    train_id = audit.index.ids[2]
    volume = next(v for k, v in enumerate(cohort(0, 20)) if f"case_{k:04d}" == train_id)
    exact = audit.check(volume)
    assert exact.flagged and exact.nearest_id == train_id and exact.similarity > 0.999
    rng = np.random.default_rng(7)
    # one slice and two columns: whole voxels of the test grid in x, two thirds of a thumbnail voxel in z
    moved = np.roll(np.asarray(volume.hu, dtype=np.float32), shift=(1, 0, -2), axis=(0, 1, 2))
    moved = moved + 40.0 + rng.normal(0.0, 30.0, moved.shape).astype(np.float32)
    noisy = audit.check(volume.with_hu(moved))
    assert noisy.flagged and noisy.nearest_id == train_id
    assert noisy.similarity > noisy.threshold


def test_a_fresh_cohort_is_not_flagged(audit):
    audit, _ = audit
    results = [audit.check(v) for v in cohort(100, 10)]
    assert not any(r.flagged for r in results)
    assert all(r.similarity < r.threshold < 1.0 for r in results)


def test_threshold_and_index_basics():
    assert percentile_threshold(np.array([0.5, 0.6, 0.7, 0.8])) > 0.8  # beyond the max of a few values
    thumbs = np.random.default_rng(0).normal(size=(3, 12, 16, 16)).astype(np.float32)
    index = NearestNeighbourIndex(thumbs, ["a", "b", "c"])
    sim, best = index.nearest(thumbs[1])
    assert best == 1 and sim == pytest.approx(1.0, abs=1e-5)


def test_reference_without_enough_studies_is_a_clear_error(tmp_path):
    folder = write_cohort(tmp_path / "tiny", cohort(0, 2))
    with pytest.raises(CTSynthError, match="too few real studies"):
        MemorisationAudit.from_reference(folder, grid=GRID)

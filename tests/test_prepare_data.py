"""Datasets over the cache: shapes, normalisation, labels, determinism, augmentation sizes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ctsynth.config import load_config
from ctsynth.data import Augment, CachePatchDataset, CacheVolumes
from ctsynth.preprocess.prepare import prepare_cache
from ctsynth.preprocess.window import normalise
from _prepare_cohorts import FakeStudy


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    config = load_config("tiny")
    config.data = dataclasses.replace(config.data, mode="full", shape=(16, 32, 48), held_out_fraction=0.25)
    out = tmp_path_factory.mktemp("prep") / "cache"
    studies = [FakeStudy(i) for i in range(6)]
    prepare_cache(out.parent / "data", config, out, progress=False, discover=lambda *a, **k: studies)
    return out


def test_whole_volumes_are_normalised_and_labelled(prep):
    volumes = CacheVolumes(prep, split="train")
    assert len(volumes) == 4
    for k in range(len(volumes)):
        item = volumes[k]
        entry = volumes.entries[k]
        hu = np.load(prep / entry["file"])
        assert item["image"].shape == (1, 16, 32, 48) and item["image"].dtype == torch.float32
        assert torch.equal(item["image"][0], torch.from_numpy(normalise(hu, (-1024.0, 1500.0))))
        assert item["label"] == ("normal", "covid").index(entry["label"])
        assert item["id"] == entry["id"]


def test_patches_have_the_right_shape_and_are_deterministic(prep):
    a = CachePatchDataset(prep, patch=(8, 16, 16), seed=7, patches_per_study=3)
    b = CachePatchDataset(prep, patch=(8, 16, 16), seed=7, patches_per_study=3)
    c = CachePatchDataset(prep, patch=(8, 16, 16), seed=8, patches_per_study=3)
    assert len(a) == 12
    items = [a[k]["image"] for k in range(len(a))]
    assert all(x.shape == (1, 8, 16, 16) for x in items)
    assert all(torch.equal(a[k]["image"], b[k]["image"]) for k in (0, 5, 11))  # fresh dataset, same items
    assert all(torch.equal(a[k]["image"], items[k]) for k in (11, 0))  # order of access does not matter
    assert not all(torch.equal(items[k], c[k]["image"]) for k in range(len(a)))
    # A patch is a window of the cached volume, without augmentation.
    volume = normalise(np.load(prep / a.entries[0]["file"]), (-1024.0, 1500.0))
    patch = items[0][0].numpy()
    found = any(np.array_equal(volume[z:z + 8, y:y + 16, x:x + 16], patch)
                for z in range(9) for y in range(17) for x in range(33))
    assert found
    # Patch larger than the volume: clipped to it.
    big = CachePatchDataset(prep, patch=(64, 64, 64), seed=0)
    assert big[0]["image"].shape == (1, 16, 32, 48)


def test_augmented_patches_are_deterministic_small_and_unflipped(prep):
    plain = CachePatchDataset(prep, patch=(8, 16, 16), seed=3)
    aug = CachePatchDataset(prep, patch=(8, 16, 16), seed=3, augment=Augment(prob=1.0))
    again = CachePatchDataset(prep, patch=(8, 16, 16), seed=3, augment=Augment(prob=1.0))
    for k in range(3):
        x, y = aug[k]["image"], again[k]["image"]
        assert x.shape == (1, 8, 16, 16)
        assert torch.equal(x, y)
        assert not torch.equal(x, plain[k]["image"])
        # Small changes: the same anatomy, a few percent off (a flip or a large rotation would be far more).
        assert (x - plain[k]["image"]).abs().mean() < 0.1
    assert not Augment().flip_lr
    whole = CacheVolumes(prep, split="train", augment=Augment(prob=1.0), seed=1)
    assert whole[0]["image"].shape == (1, 16, 32, 48)


def test_empty_split_is_a_clear_error(prep):
    from ctsynth.errors import CTSynthError

    with pytest.raises(CTSynthError, match="no"):
        CacheVolumes(prep, split="validation")


def test_random_zooms_scale_each_volume_about_its_centre_by_a_factor_drawn_per_sample():
    """Known answer: a linear ramp along x (value = normalised x position) zoomed by f reads x / f, so its
    interior slope is 1 / f with f in [1 - a, 1 + a]; the factor belongs to the sample (same in any batch)."""
    from ctsynth.data import random_zooms

    x = (torch.arange(32, dtype=torch.float32) + 0.5) / 16 - 1  # voxel centres, align_corners=False
    volumes = x.expand(3, 1, 8, 12, 32).clone()
    assert random_zooms(volumes, [0, 1, 2], seed=7, amount=0.0) is volumes
    out = random_zooms(volumes, [0, 1, 2], seed=7, amount=0.1)
    slopes = []
    for k in range(3):
        row = out[k, 0, 4, 6, 8:24]  # interior: no border clamping for factors >= 0.9
        slope = float((row[-1] - row[0]) / (x[23] - x[8]))
        torch.testing.assert_close(row, x[8:24] * slope, rtol=0, atol=1e-5)
        slopes.append(slope)
    factors = [1 / s for s in slopes]
    assert all(0.9 - 1e-6 <= f <= 1.1 + 1e-6 for f in factors) and len({round(f, 6) for f in factors}) == 3
    torch.testing.assert_close(random_zooms(volumes[1:2], [1], seed=7, amount=0.1), out[1:2])


def test_random_shifts_move_each_volume_by_whole_voxels_drawn_per_sample():
    from ctsynth.data import random_shifts

    volumes = torch.zeros(3, 1, 6, 10, 12)
    volumes[:, 0, 3, 5, 6] = 1.0  # one bright voxel, away from the border
    assert torch.equal(random_shifts(volumes, [0, 1, 2], seed=7, max_shift=(0, 0, 0)), volumes)
    out = random_shifts(volumes, [10, 11, 12], seed=7, max_shift=(1, 2, 3))
    for k in range(3):
        (z, y, x), = torch.nonzero(out[k, 0]).tolist()  # still one voxel, moved within the bounds
        assert abs(z - 3) <= 1 and abs(y - 5) <= 2 and abs(x - 6) <= 3 and out[k].sum() == 1.0
    # a sample's offset depends on its number only: another batch split, or a resumed run, draws the same
    again = torch.cat([random_shifts(volumes[k:k + 1], [10 + k], seed=7, max_shift=(1, 2, 3)) for k in range(3)])
    assert torch.equal(again, out)
    offsets = {tuple(torch.nonzero(random_shifts(volumes[:1], [g], 7, (1, 2, 3))[0, 0])[0].tolist())
               for g in range(40)}
    assert len(offsets) > 10  # offsets vary between samples
    # the border is replicated, not wrapped: a volume constant along x stays constant
    ramp = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(1, 1, 6, 10, 12).contiguous()
    shifted = random_shifts(ramp, [3], seed=1, max_shift=(2, 0, 0))
    assert torch.equal(shifted[0, 0, :, 0, 0].sort().values, shifted[0, 0, :, 0, 0]) and shifted.min() >= 0


def test_random_flips_mirror_each_volume_along_the_enabled_axes_drawn_per_sample():
    from ctsynth.data import random_flips

    volumes = torch.zeros(2, 1, 4, 6, 8)
    volumes[:, 0, 1, 2, 3] = 1.0  # one bright voxel: where it lands says which axes were mirrored
    assert random_flips(volumes, [0, 1], seed=7, axes=(False, False, False)) is volumes
    seen = set()
    for g in range(40):
        out = random_flips(volumes[:1], [g], seed=7, axes=(False, True, True))
        (z, y, x), = torch.nonzero(out[0, 0]).tolist()
        assert z == 1 and y in (2, 6 - 1 - 2) and x in (3, 8 - 1 - 3) and out.sum() == 1.0
        seen.add((y, x))
    assert seen == {(2, 3), (3, 3), (2, 4), (3, 4)}  # each enabled axis mirrored in some samples, not in others
    # a sample's flips depend on its number only (another batch split or a resumed run draws the same)
    both = random_flips(volumes, [5, 6], seed=7, axes=(True, True, True))
    for k, g in enumerate((5, 6)):
        assert torch.equal(both[k:k + 1], random_flips(volumes[k:k + 1], [g], seed=7, axes=(True, True, True)))

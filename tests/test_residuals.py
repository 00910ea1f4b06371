"""The regression details' residual banks (``diffusion.detail_residuals``, ``ctsynth.models.residuals``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctsynth.errors import CTSynthError
from ctsynth.models.cascade import WaveletCascade, pad_to_multiple, pyramid
from ctsynth.models.diffusion import build_scheduler
from ctsynth.models.residuals import NEIGHBOURS, ResidualBank, lattice, to_patches
from ctsynth.train import train
from test_cascade import CPU, cascade_config
from train_fixtures import make_tiny_cache

ROOT = Path(__file__).resolve().parents[1]


def _cells(field: torch.Tensor, start: list[int], patch: int) -> torch.Tensor:
    """The lattice cells (origin ``start``, grid coordinates) that lie wholly inside ``field`` ``(1, c, *grid)``,
    as patches ``(cells, c * patch^3)``."""
    box = tuple(slice(s % patch, s % patch + (n - s % patch) // patch * patch) for s, n in zip(start, field.shape[2:]))
    return to_patches(field[(..., *box)], patch)[0]


def _is_one_of(got: torch.Tensor, kept: torch.Tensor, atol: float = 1e-3) -> bool:
    return bool((torch.cdist(got.double(), kept.double()).min(dim=1).values < atol).all())


def test_a_draw_is_a_training_patch_of_a_band_like_the_query_s_on_a_random_lattice():
    """Two training volumes, a 'lung' band (-1) and a 'tissue' band (+1), each with random residuals: on a lung
    band every whole cell of the draw's lattice is one of the lung volume's patches, never a tissue one; the
    lattice moves with the seed; the same seed draws the same; unfitted, the bank draws zeros."""
    grid, p = (6, 8, 10), 2
    g = torch.Generator().manual_seed(0)
    cond = torch.cat([torch.full((1, 1, *grid), -1.0), torch.full((1, 1, *grid), 1.0)])
    residual = torch.randn(2, 7, *grid, generator=g)
    bank = ResidualBank(7, p)
    assert not bool(bank.fitted)
    torch.testing.assert_close(bank.draw(cond[:1], torch.zeros(1, dtype=torch.long), [torch.Generator()]),
                               torch.zeros(1, 7, *grid))
    (lung_keys, lung_patches), (tissue_keys, tissue_patches) = bank.patches(cond, residual,
                                                                            torch.Generator().manual_seed(1))
    assert lung_keys.shape == (lung_patches.shape[0], p ** 3) and bool((lung_keys == -1).all())
    bank.fit(torch.cat([lung_keys, tissue_keys]), torch.cat([lung_patches, tissue_patches]),
             torch.zeros(len(lung_keys) + len(tissue_keys), dtype=torch.long), torch.Generator().manual_seed(2))
    starts = set()
    for seed in range(6):
        drawn = bank.draw(cond[:1], torch.zeros(1, dtype=torch.long), [torch.Generator().manual_seed(seed)])
        start, _ = lattice(list(grid), p, torch.Generator().manual_seed(seed))  # the draw's first draw
        starts.add(tuple(start))
        cells = _cells(drawn, start, p)
        assert cells.shape[0] >= 2 * 3 * 4 and _is_one_of(cells, lung_patches.half())  # kept as float16
        assert not _is_one_of(cells[:1], tissue_patches, atol=1.0)
        torch.testing.assert_close(drawn, bank.draw(cond[:1], torch.zeros(1, dtype=torch.long),
                                                    [torch.Generator().manual_seed(seed)]))
    assert len(starts) > 1


def test_a_draw_is_one_of_the_nearest_patches_of_the_sample_s_class():
    """Flat bands of 100 values ``j / 100`` whose residual patches are the number ``j`` (class 0) or ``-j``
    (class 1). A flat query at 0.5 draws, per cell, one of the :data:`NEIGHBOURS` nearest of its class: ``j`` in
    50 +- 4 (a tie at the edge), several of them; a class the bank lacks draws from all."""
    p, n = 2, 100
    j = torch.arange(n, dtype=torch.float32)
    keys = (j / n)[:, None].expand(n, p ** 3).repeat(2, 1)
    values = torch.cat([j, -j])[:, None].expand(2 * n, 7 * p ** 3)
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    bank = ResidualBank(7, p)
    bank.fit(keys, values, labels, torch.Generator().manual_seed(0))
    query = torch.full((2, 1, 6, 6, 6), 0.5)
    drawn = bank.draw(query, torch.tensor([0, 1]), [torch.Generator().manual_seed(k) for k in (3, 4)])
    assert NEIGHBOURS == 8
    assert set(drawn[0].unique().tolist()) <= set(range(46, 55)) and len(drawn[0].unique()) >= 4
    assert set((-drawn[1]).unique().tolist()) <= set(range(46, 55))
    other = bank.draw(query[:1], torch.tensor([2]), [torch.Generator().manual_seed(5)])
    assert set(other.abs().unique().tolist()) <= set(range(46, 55))


def test_the_bank_keeps_a_seeded_random_choice_up_to_its_capacity_and_loads_at_its_size():
    keys, values = torch.randn(50, 8), torch.arange(50.0)[:, None].expand(50, 56)
    labels = torch.zeros(50, dtype=torch.long)
    banks = []
    for seed in (1, 1, 2):
        bank = ResidualBank(7, 2, capacity=20)
        bank.fit(keys, values, labels, torch.Generator().manual_seed(seed))
        banks.append(bank)
    kept = banks[0].values[:, 0].long()
    assert len(kept) == 20 and len(set(kept.tolist())) == 20
    torch.testing.assert_close(banks[0].keys, keys[kept].half())  # each key stays with its patch
    assert torch.equal(banks[1].values, banks[0].values) and not torch.equal(banks[2].values, banks[0].values)
    fresh = ResidualBank(7, 2)  # unfitted: empty buffers, then the saved bank's size
    fresh.load_state_dict(banks[0].state_dict())
    query = torch.randn(1, 1, 4, 6, 8)
    torch.testing.assert_close(fresh.draw(query, labels[:1], [torch.Generator().manual_seed(0)]),
                               banks[0].draw(query, labels[:1], [torch.Generator().manual_seed(0)]))


def test_detail_residuals_is_checked():
    for bad in ((-0.1,), (0.5, 0.5, 0.5)):
        with pytest.raises(CTSynthError, match="detail_residuals must hold"):
            WaveletCascade(dataclasses.replace(cascade_config().diffusion, detail_residuals=bad), 2, 2)
    with pytest.raises(CTSynthError, match="detail_residual_patch must be at least 1"):
        WaveletCascade(dataclasses.replace(cascade_config().diffusion, detail_residual_patch=0), 2, 2)
    with pytest.raises(CTSynthError, match="detail_residuals works with detail_objective: regression"):
        WaveletCascade(dataclasses.replace(cascade_config().diffusion, detail_residuals=(1.0,),
                                           detail_objective="gaussian"), 2, 2)


def test_a_patch_larger_than_its_level_s_grid_is_refused_before_any_step(tmp_path):
    config = cascade_config(detail_residuals=(0.0, 0.5), detail_residual_patch=64)
    prep = make_tiny_cache(tmp_path / "prep", config)
    z = config.data.shape[0] // 4
    with pytest.raises(CTSynthError, match=rf"detail_residual_patch \(64\) is larger than Haar level 2's grid \[{z}, "):
        train(prep, config, tmp_path / "run", CPU)
    assert not (tmp_path / "run" / "diffusion").exists()


def test_a_level_of_scale_0_has_no_bank():
    model = WaveletCascade(dataclasses.replace(cascade_config().diffusion, detail_residuals=(0.5,)), 2, 2)
    assert list(model.residual_banks) == ["1"]  # level 2's scale is 0 where the list stops


def test_a_tiny_cascade_fits_its_banks_after_training_and_samples_with_them(tmp_path, capsys):
    """After training the EMA model's banks (both levels: scales 0.5 and 0.25, patches of 2^3 blocks) are fitted
    and saved. A real volume rebuilt from its true coarsest band gets, at each level, the model's prediction
    (given the band it has made so far) plus the level's scale times a lattice of the level's bank's patches
    (every whole cell of one offset is a patch of the bank); the same seed gives the same volume, and a sample
    does not depend on its batch (beyond float rounding)."""
    from ctsynth.generate import Generator
    from ctsynth.train import check_cache
    from ctsynth.train.diffusion import training_images

    scales, p = (0.5, 0.25), 2
    config = cascade_config(detail_residuals=scales, detail_residual_patch=p)
    prep = make_tiny_cache(tmp_path / "prep", config)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    weights = load_file(str(tmp_path / "run" / "diffusion" / "model.safetensors"))
    assert all(bool(weights[f"ema.residual_banks.{level}.fitted"]) for level in (1, 2))
    gen = Generator.load(tmp_path / "run")
    model = gen.unet

    images = training_images(config, prep, check_cache(prep, config)["train"])
    x, label = images["latents"][:1], images["labels"][:1]
    _, lows, _ = pyramid(x, 2)
    made = model.add_details(lows[1], 2, build_scheduler(config.diffusion), [torch.Generator().manual_seed(3)],
                             label, 1)
    for level in (2, 1):  # Haar is exact: the made volume's pyramid gives back each level's band and details
        bank = model.residual_banks[str(level)]
        assert bool(bank.fitted) and len(bank.values) > 0
        _, made_lows, made_details = pyramid(made, level)
        band = lows[1] if level == 2 else made_lows[0]
        grid = tuple(band.shape[-3:])
        cond = pad_to_multiple(model._low(band, level), model._detail_multiple(), 0.0)[0]
        mean = model._regress(level, cond, label)[..., :grid[0], :grid[1], :grid[2]]
        drawn = (model._detail(made_details[level - 1], level) - mean) / scales[level - 1]
        kept = bank.values.float()
        offsets = [o for o in itertools.product(range(p), repeat=3)
                   if _is_one_of(_cells(drawn, list(o), p), kept, atol=2e-2)]
        assert len(offsets) == 1, (level, offsets)  # one lattice, and no other offset fits by chance
        assert float(drawn.abs().max()) > 0  # it drew something

    a = gen.sample(2, "covid", seed=5, batch_size=2)
    b = gen.sample(1, "covid", seed=6, batch_size=1)
    np.testing.assert_allclose(a[1].hu, b[0].hu, rtol=0, atol=0.01)  # a batch's convolutions round differently
    np.testing.assert_array_equal(b[0].hu, gen.sample(1, "covid", seed=6)[0].hu)  # same seed, same volume

    # benchmarks/screen_radiomics.py runs on such a run, samples and true-band rebuilds, so it cannot rot
    spec = importlib.util.spec_from_file_location("screen_radiomics", ROOT / "benchmarks" / "screen_radiomics.py")
    screen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screen)
    features = tmp_path / "real.npz"
    for extra in (["--refit"], ["--true-band"]):
        assert screen.main([str(tmp_path / "run"), str(prep), "--per-class", "2", "--real-features", str(features),
                            *extra]) == 0
        out = capsys.readouterr().out
        table = [line.split("|") for line in out.splitlines() if line.startswith(("| training crops", "| candidate"))]
        assert len(table) == 2 and all(np.isfinite(float(cell)) for row in table for cell in row[2:5])
        assert "holds other crops" not in out
    assert "2 held-out crops rebuilt from their own coarsest band" in out

"""The regression details' residual banks (``diffusion.detail_residuals``, ``ctsynth.models.residuals``)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctsynth.errors import CTSynthError
from ctsynth.models.cascade import WaveletCascade, pad_to_multiple, pyramid
from ctsynth.models.diffusion import build_scheduler
from ctsynth.models.residuals import ResidualBank
from ctsynth.train import train
from test_cascade import CPU, cascade_config
from train_fixtures import make_tiny_cache

ROOT = Path(__file__).resolve().parents[1]


def _two_tissues(n: int = 4, grid=(4, 6, 8)):
    """A band of two values (-1: 'lung', +1: 'tissue') with a flat prediction, and true bands whose residual is
    one fixed vector per tissue: what a draw must give back exactly."""
    g = torch.Generator().manual_seed(0)
    cond = torch.where(torch.rand(n, 1, *grid, generator=g) < 0.5, -1.0, 1.0)
    mean = torch.full((n, 7, *grid), 0.3)
    lung, tissue = torch.arange(7.0), -torch.arange(7.0) / 2
    residual = torch.where(cond < 0, lung.view(1, 7, 1, 1, 1), tissue.view(1, 7, 1, 1, 1))
    return cond, mean, mean + residual, lung, tissue


def test_a_draw_is_a_residual_of_its_own_bin():
    cond, mean, target, lung, tissue = _two_tissues()
    bank = ResidualBank(7)
    assert not bool(bank.fitted)
    torch.testing.assert_close(bank.draw(cond, mean, [torch.Generator()] * 4), torch.zeros_like(mean))  # unfitted
    bank.fit(cond, mean, target, torch.Generator().manual_seed(1))
    drawn = bank.draw(cond, mean, [torch.Generator().manual_seed(k) for k in range(4)])
    want = torch.where(cond < 0, lung.view(1, 7, 1, 1, 1), tissue.view(1, 7, 1, 1, 1))
    torch.testing.assert_close(drawn, want)
    # a block whose bin held no training block (a value beyond both tissues' bins here is still binned; force it)
    bank.counts.zero_()
    torch.testing.assert_close(bank.draw(cond, mean, [torch.Generator()] * 4), torch.zeros_like(mean))


def test_the_bank_keeps_a_random_subset_of_each_bin_and_draws_all_of_it():
    """Per bin at most ``per_bin`` residuals, each one of that bin's (here every block's residual is its own
    index, so membership is exact), chosen by the seed; draws come from all of the kept ones."""
    n, grid = 2, (4, 8, 8)
    cond = torch.linspace(-1, 1, n * 4 * 8 * 8).reshape(n, 1, *grid)
    mean = torch.ones(n, 7, *grid)
    index = torch.arange(n * 4 * 8 * 8, dtype=torch.float32).reshape(n, 1, *grid)
    target = mean + index.expand(n, 7, *grid)
    banks = []
    for seed in (1, 1, 2):
        bank = ResidualBank(7, per_bin=5)
        bank.fit(cond, mean, target, torch.Generator().manual_seed(seed))
        banks.append(bank)
    bank = banks[0]
    # 32 blocks in each value bin, all in one energy bin (a flat prediction): 16 bins of 5, the rest empty
    assert sorted(bank.counts.tolist()) == [0] * 48 + [5] * 16
    bins = bank.bins(cond, mean).reshape(-1)
    everything_kept = set()
    for k in range(bank.counts.numel()):
        kept = set(bank.residuals[k, :int(bank.counts[k]), 0].long().tolist())
        assert kept <= set(torch.nonzero(bins == k).flatten().tolist())
        everything_kept |= kept
    torch.testing.assert_close(banks[1].residuals, bank.residuals)  # same seed, same bank
    assert not torch.equal(banks[2].residuals, bank.residuals)
    drawn = torch.cat([bank.draw(cond, mean, [torch.Generator().manual_seed(s)] * n) for s in range(40)])
    assert set(drawn[:, 0].flatten().long().tolist()) == everything_kept


def test_detail_residuals_is_checked():
    for bad in ((-0.1,), (0.5, 0.5, 0.5)):
        with pytest.raises(CTSynthError, match="detail_residuals must hold"):
            WaveletCascade(dataclasses.replace(cascade_config().diffusion, detail_residuals=bad), 2, 2)
    with pytest.raises(CTSynthError, match="detail_residuals works with detail_objective: regression"):
        WaveletCascade(dataclasses.replace(cascade_config().diffusion, detail_residuals=(1.0,),
                                           detail_objective="gaussian"), 2, 2)


def test_a_level_of_scale_0_has_no_bank():
    model = WaveletCascade(dataclasses.replace(cascade_config().diffusion, detail_residuals=(0.5,)), 2, 2)
    assert list(model.residual_banks) == ["1"]  # level 2's scale is 0 where the list stops


def test_a_tiny_cascade_fits_its_banks_after_training_and_samples_with_them(tmp_path, capsys):
    """After training the EMA model's banks (both levels: scales 0.5 and 0.25) are fitted and saved. A real
    volume rebuilt from its true coarsest band gets, at each level and per block, the model's prediction (given
    the band it has made so far) plus the level's scale times a residual of that level's bank from the block's
    bin; the same seed gives the same volume, and a sample does not depend on its batch (beyond float
    rounding)."""
    from ctsynth.generate import Generator
    from ctsynth.train import check_cache
    from ctsynth.train.diffusion import training_images

    scales = (0.5, 0.25)
    config = cascade_config(detail_residuals=scales)
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
        assert bool(bank.fitted) and int(bank.counts.sum()) > 0
        _, made_lows, made_details = pyramid(made, level)
        band = lows[1] if level == 2 else made_lows[0]  # level 2's band as given (a bin edge is a training value)
        grid = tuple(band.shape[-3:])
        cond = pad_to_multiple(model._low(band, level), model._detail_multiple(), 0.0)[0]
        mean = model._regress(level, cond, label)
        drawn = (model._detail(made_details[level - 1], level) - mean[..., :grid[0], :grid[1], :grid[2]]) \
            / scales[level - 1]
        bins = bank.bins(cond, mean)[..., :grid[0], :grid[1], :grid[2]]
        for k in bins.unique().tolist():
            kept = bank.residuals[k, :int(bank.counts[k])]
            got = drawn.movedim(1, -1)[bins == k]
            distance = torch.cdist(got.double(), kept.double()).min(dim=1).values
            assert float(distance.max()) < 1e-3, (level, k)
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

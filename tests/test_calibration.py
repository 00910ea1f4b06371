"""The output's intensity transfer curve (``diffusion.calibration_samples``, ``ctsynth.models.calibration``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctsynth.errors import CTSynthError
from ctsynth.models.calibration import QuantileMap, quantiles
from ctsynth.models.cascade import WaveletCascade, calibration_generators
from ctsynth.models.diffusion import build_scheduler
from ctsynth.train import train
from test_cascade import CPU, cascade_config
from train_fixtures import make_tiny_cache


def test_quantiles_match_numpy():
    x = torch.randn(10_001, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(quantiles(x, 11).numpy(), np.quantile(x.numpy(), np.linspace(0, 1, 11)), atol=1e-6)


def test_quantile_map_known_answers():
    """Unfitted: the identity. Fitted from U(0, 1) onto U(-1, 1): x -> 2x - 1 (exact at the knots, linear
    between them), monotone; beyond the ends the ends' targets, like numpy.interp."""
    m = QuantileMap()
    x = torch.linspace(-3, 3, 61)
    torch.testing.assert_close(m(x), x)
    m.fit(torch.linspace(0, 1, 100_001), torch.linspace(-1, 1, 100_001))
    inside = torch.linspace(0, 1, 333)
    torch.testing.assert_close(m(inside), 2 * inside - 1, rtol=0, atol=1e-5)
    torch.testing.assert_close(m(torch.tensor([-5.0, 7.0])), torch.tensor([-1.0, 1.0]))
    y = m(torch.rand(1000, generator=torch.Generator().manual_seed(1)).sort().values)
    assert bool((y[1:] >= y[:-1]).all())


def test_a_skewed_output_gets_the_reference_histogram():
    """A smoothed, brightened copy of the data (what a conditional-mean model makes) mapped back has the
    data's quantiles (to the curve's steps) and keeps its voxels' order."""
    g = torch.Generator().manual_seed(2)
    data = torch.where(torch.rand(200_000, generator=g) < 0.3, -0.8 + 0.05 * torch.randn(200_000, generator=g),
                       0.1 * torch.randn(200_000, generator=g))
    made = 0.7 * data + 0.1
    m = QuantileMap()
    m.fit(made, data)
    fixed = m(made)
    q = torch.linspace(0.02, 0.98, 25)
    torch.testing.assert_close(torch.quantile(fixed, q), torch.quantile(data, q), rtol=0, atol=0.01)
    assert bool((m(made.sort().values).diff() >= 0).all())  # the voxels' order stays


def test_a_masked_fit_uses_only_the_voxels_inside_the_masks():
    """Known answer for ``calibration_region``: outside the masks each side holds values that would bend the
    curve (air smoothed to -0.6 in the made volume, -3 in the data); fitted inside the masks only, the curve is
    the inside's map x -> 2x - 1."""
    made = torch.cat([torch.linspace(0, 1, 50_001), torch.full((20_000,), -0.6)])
    data = torch.cat([torch.linspace(-1, 1, 50_001), torch.full((30_000,), -3.0)])
    m = QuantileMap()
    m.fit(made, data, made > -0.5, data > -2.0)
    inside = torch.linspace(0, 1, 333)
    torch.testing.assert_close(m(inside), 2 * inside - 1, rtol=0, atol=1e-4)
    m.fit(made, data)  # unmasked, the curve is another one
    assert float((m(inside) - (2 * inside - 1)).abs().max()) > 0.1


def test_the_body_region_leaves_the_outside_air_out():
    from ctsynth.preprocess.window import normalise
    from ctsynth.train.diffusion import body_region

    hu = np.full((1, 1, 6, 40, 40), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:40, :40]
    hu[..., (yy - 20) ** 2 + (xx - 20) ** 2 < 14 ** 2] = 40.0  # a round body ...
    hu[..., (yy - 20) ** 2 + (xx - 14) ** 2 < 4 ** 2] = -850.0  # ... with a lung inside
    window = (-1024.0, 1500.0)
    x = torch.from_numpy(normalise(hu, window))
    mask = body_region(window)(x)
    assert mask.shape == x.shape and mask.dtype == torch.bool
    inside = (yy - 20) ** 2 + (xx - 20) ** 2 < 14 ** 2
    assert bool(mask[0, 0, 3][torch.from_numpy(inside)].all())  # the lung is inside the body
    assert not bool(mask[0, 0, 3][torch.from_numpy(~inside)].any())


def test_an_unknown_calibration_region_is_refused_before_training(tmp_path):
    config = cascade_config(calibration_samples=1, calibration_region="lungs")
    prep = make_tiny_cache(tmp_path / "prep", config)
    with pytest.raises(CTSynthError, match="calibration_region"):
        train(prep, config, tmp_path / "run", CPU)
    assert not list((tmp_path / "run").glob("**/ckpt-*"))  # refused at the start: no step trained


def test_weights_saved_before_the_calibration_load_as_the_identity():
    model = WaveletCascade(cascade_config().diffusion, 2, 2)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("calibration.")}
    fresh = WaveletCascade(cascade_config().diffusion, 2, 2)
    fresh.calibration.fit(torch.rand(100), torch.rand(100) * 2)
    fresh.load_state_dict(state)
    assert not bool(fresh.calibration.fitted)


def test_a_curve_saved_with_other_knots_loads_as_fitted():
    """Weights of runs before the 0.1% knots hold a 101-knot curve: it loads with its own knots and maps as
    it did when saved."""
    old = QuantileMap(101)
    old.fit(torch.linspace(0, 1, 10_001) ** 2, torch.linspace(-1, 1, 10_001))
    new = QuantileMap()
    assert new.source.numel() != 101
    new.load_state_dict(old.state_dict())
    x = torch.linspace(-0.5, 1.5, 97)
    torch.testing.assert_close(new(x), old(x))


def test_a_tiny_cascade_fits_its_calibration_after_training_and_samples_through_it(tmp_path):
    """After training, the EMA model's calibration is fitted and saved; the volumes it was fitted on, made
    again, come out with the training volumes' quantiles (and without it they do not); the generator applies
    it, and the same seed gives the same volume."""
    from ctsynth.generate import Generator
    from ctsynth.train import check_cache
    from ctsynth.train.diffusion import training_images

    config = cascade_config(calibration_samples=3)
    prep = make_tiny_cache(tmp_path / "prep", config)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    weights = load_file(str(tmp_path / "run" / "diffusion" / "model.safetensors"))
    assert bool(weights["ema.calibration.fitted"]) and not bool(weights["unet.calibration.fitted"])
    gen = Generator.load(tmp_path / "run")
    model, cfg, shape = gen.unet, config.diffusion, gen.image_shape
    assert bool(model.calibration.fitted)
    images = training_images(config, prep, check_cache(prep, config)["train"])["latents"][..., :shape[0], :shape[1],
                                                                                            :shape[2]]

    def the_fit_s_volumes() -> torch.Tensor:  # fit_calibration's draws: sample i of class c seeded (seed, c, i)
        return torch.cat([model.sample(build_scheduler(cfg), calibration_generators(config.train.seed, c, range(3)),
                                       torch.full((3,), c), cfg.guidance, cfg.sample_steps, shape)
                          for c in range(2)]).flatten()

    q = torch.linspace(0.05, 0.95, 19)
    wanted = torch.quantile(images.flatten(), q)
    torch.testing.assert_close(torch.quantile(the_fit_s_volumes(), q), wanted, rtol=0, atol=0.02)
    model.calibration.fitted.fill_(False)
    assert float((torch.quantile(the_fit_s_volumes(), q) - wanted).abs().max()) > 0.05  # it had work to do
    gen = Generator.load(tmp_path / "run")
    np.testing.assert_array_equal(gen.sample(1, "covid", seed=4)[0].hu, gen.sample(1, "covid", seed=4)[0].hu)


def test_calibration_needs_the_cascade(tmp_path):
    from ctsynth.config import load_config

    tiny = load_config("tiny")
    config = dataclasses.replace(tiny, diffusion=dataclasses.replace(tiny.diffusion, calibration_samples=2))
    prep = make_tiny_cache(tmp_path / "prep", config)
    with pytest.raises(CTSynthError, match="calibration_samples"):
        train(prep, config, tmp_path / "run", CPU)

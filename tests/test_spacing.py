"""Each sample's voxel spacing (``diffusion.spacing_condition``, models/spacing.py): drawn from the training crops'
per class, within their range, with axes that always agree kept equal; the base model is told it; a tiny run
writes volumes at the spacings it drew, the same for the same seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctsynth.errors import CTSynthError
from ctsynth.models.cascade import WaveletCascade
from ctsynth.models.spacing import SpacingPrior
from ctsynth.train import LaunchOptions, train
from test_cascade import cascade_config
from train_fixtures import make_tiny_cache


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_constant_spacings_are_drawn_exactly_per_class():
    prior = SpacingPrior(2)
    spacing = torch.tensor([[5.0, 0.8, 0.8]] * 3 + [[2.5, 1.5, 1.5]] * 3)
    prior.fit(spacing, torch.tensor([0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(prior.draw(gens(4), torch.zeros(4)), torch.tensor([[5.0, 0.8, 0.8]] * 4,
                                                                                 dtype=torch.float64))
    torch.testing.assert_close(prior.draw(gens(4), torch.ones(4)), torch.tensor([[2.5, 1.5, 1.5]] * 4,
                                                                                dtype=torch.float64))


def test_draws_follow_the_training_spread_within_its_range_and_keep_y_equal_to_x():
    rng = np.random.default_rng(0)
    z, yx = rng.uniform(6.0, 9.0, 400), rng.uniform(1.6, 2.2, 400)
    prior = SpacingPrior(1)
    prior.fit(torch.tensor(np.stack([z, yx, yx], 1)), torch.zeros(400, dtype=torch.long))
    drawn = prior.draw(gens(2000), torch.zeros(2000)).numpy()
    np.testing.assert_allclose(drawn[:, 1], drawn[:, 2], rtol=1e-9)  # y and x always agree in the training crops
    assert drawn[:, 0].min() >= z.min() - 1e-9 and drawn[:, 0].max() <= z.max() + 1e-9
    assert drawn[:, 1].min() >= yx.min() - 1e-9 and drawn[:, 1].max() <= yx.max() + 1e-9
    for real, made in ((z, drawn[:, 0]), (yx, drawn[:, 1])):
        assert abs(np.log(made).mean() - np.log(real).mean()) < 0.01
        assert 0.85 < np.log(made).std() / np.log(real).std() < 1.1  # clamped tails: a little narrower
    # the condition is the standardised log spacing: mean 0 and sd 1 over the training crops
    cond = prior.condition(torch.tensor(np.stack([z, yx, yx], 1))).double()
    torch.testing.assert_close(cond.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(cond.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_the_spacing_reaches_the_base_model_and_only_it():
    """With its parameters nudged (MONAI zero-initialises the output convolutions, so an untrained net gives 0
    whatever its input), a cascade's base loss and its samples change with the spacing it is told; the detail
    models' loss does not."""
    from ctsynth.models.diffusion import build_scheduler

    config = cascade_config(spacing_condition=True, detail_every=1)
    images = torch.randn(2, 1, 8, 16, 24, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    torch.manual_seed(1)
    model = WaveletCascade(config.diffusion, 2, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    spacing = torch.tensor([[5.0, 0.7, 0.7], [7.0, 0.9, 0.9]])
    model.set_statistics(images, spacing, labels)
    scheduler = build_scheduler(config.diffusion)

    def grads(spacing_mm):
        model.zero_grad()
        model(images, labels, [0, 1], 0, scheduler, spacing_mm=spacing_mm).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    a, b = grads(spacing), grads(spacing.flip(0))
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith("base."))
    assert all(torch.equal(a[n], b[n]) for n in a if n.startswith("details."))
    with pytest.raises(ValueError, match="spacing"):
        model(images, labels, [0, 1], 0, scheduler)
    out = [model.sample(scheduler, gens(2), labels, 2.0, 2, (8, 16, 24), s) for s in (spacing, spacing.flip(0))]
    assert not torch.allclose(*out)


def test_spacing_condition_and_zoom_are_refused_together():
    with pytest.raises(CTSynthError, match="augment_zoom"):
        WaveletCascade(cascade_config(spacing_condition=True, augment_zoom=0.1).diffusion, 2, 2)


def test_a_tiny_run_writes_volumes_at_the_spacings_it_draws(tmp_path):
    from ctsynth.generate import Generator

    config = cascade_config(spacing_condition=True)
    prep = make_tiny_cache(tmp_path / "prep", config)
    manifest = json.loads((prep / "manifest.json").read_text())
    for k, entry in enumerate(manifest["studies"]):  # crops of several sizes, as `ctsynth prepare` makes them
        entry["spacing_mm"] = [s * (1.0 + 0.1 * k) for s in entry["spacing_mm"]]
    (prep / "manifest.json").write_text(json.dumps(manifest))
    assert train(prep, config, tmp_path / "run", LaunchOptions(accelerator="cpu")) == "done"
    real = np.array([e["spacing_mm"] for e in manifest["studies"] if e["split"] == "train"])
    gen = Generator.load(tmp_path / "run")
    a = gen.sample(4, "covid", seed=3, batch_size=2)
    b = gen.sample(1, "covid", seed=4)  # sample 1 of seed 3: same generator, same spacing, same volume
    spacing = np.array([v.spacing_mm for v in a])
    assert len({tuple(s) for s in spacing}) > 1  # drawn per sample
    assert (spacing >= real.min(0) - 1e-6).all() and (spacing <= real.max(0) + 1e-6).all()
    assert a[1].spacing_mm == b[0].spacing_mm
    np.testing.assert_allclose(a[1].hu, b[0].hu, atol=1e-3)

"""The wavelet cascade (``diffusion.cascade``): its pyramid is exact, its loss does not depend on how a step is
split, and a tiny run trains, resumes bit-exactly and generates the same volume for the same seed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctsynth.config import load_config
from ctsynth.errors import CTSynthError
from ctsynth.models.cascade import (WaveletCascade, energy_score, gaussian_detail_loss, gaussian_detail_sample,
                                    merge_level, neighbourhood_floor, pyramid, split_level)
from ctsynth.models.diffusion import build_scheduler
from ctsynth.models.wavelet import HaarTransform
from ctsynth.train import LaunchOptions, TrainHooks, train
from train_fixtures import make_tiny_cache

CPU = LaunchOptions(accelerator="cpu")
ROOT = Path(__file__).resolve().parents[1]


def cascade_config(**diffusion):
    tiny = load_config("tiny")
    return dataclasses.replace(
        tiny, autoencoder=dataclasses.replace(tiny.autoencoder, kind="haar", haar_levels=2),
        diffusion=dataclasses.replace(tiny.diffusion, cascade=True, detail_channels=(8, 16), detail_patch=(4, 8, 8),
                                      **diffusion))


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_pyramid_merges_back_exactly(levels):
    """Generation merges each level's details into the band below: merging the true bands must give the
    volume back, and the low-pass band must be the block mean times 2**(1.5 * levels) (orthonormal Haar)."""
    x = torch.randn(2, 1, 8, 16, 24, generator=torch.Generator().manual_seed(levels), dtype=torch.float64)
    low, lows, details = pyramid(x, levels)
    f = 2 ** levels
    assert low.shape == (2, 1, 8 // f, 16 // f, 24 // f) and len(lows) == len(details) == levels
    assert all(d.shape[1] == 7 for d in details) and lows[-1] is low
    block_mean = torch.nn.functional.avg_pool3d(x, f)
    torch.testing.assert_close(low, block_mean * 2 ** (1.5 * levels))
    haar = HaarTransform(1).double()
    y = low
    for level in range(levels, 0, -1):
        y = merge_level(y, details[level - 1], haar)
    torch.testing.assert_close(y, x)


def two_sample_setup(config, seed: int):
    """A 2-level cascade, two random volumes labelled 0 and 1, its scheduler, and ``grads(loss)``: the
    parameters' gradients of ``loss`` (zeroed first)."""
    cfg = config.diffusion
    images = torch.randn(2, 1, 8, 16, 24, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed + 1)
    model = WaveletCascade(cfg, 2, 2)
    model.set_statistics(images)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    return model, images, torch.tensor([0, 1]), build_scheduler(cfg), grads


@pytest.mark.parametrize("option", [{}, {"base_details": True}, {"detail_objective": "energy"}])
def test_cascade_loss_is_the_same_for_batch_2_and_two_micro_batches_of_1(option):
    """Per-sample draws and a per-sample loss summed / batch: one step's gradient is the same whether its two
    samples come in one micro-batch or two (detail models on every other sample)."""
    base_details = option.get("base_details", False)
    config = cascade_config(detail_every=2, label_dropout=0.5, **option)
    model, images, labels, scheduler, grads = two_sample_setup(config, 0)
    one = grads(model(images, labels, [6, 7], 0, scheduler))
    two = grads(model(images[:1], labels[:1], [6], 0, scheduler) / 2 + model(images[1:], labels[1:], [7], 0, scheduler) / 2)
    last = "details.0" if base_details else "details.1"  # the coarsest detail model
    assert one.keys() == two.keys() and any(n.startswith(last) for n in one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_tiny_cascade_trains_resumes_exactly_and_generates_reproducibly(tmp_path):
    from ctsynth.generate import Generator

    config = cascade_config()
    prep = make_tiny_cache(tmp_path / "prep", config)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    done = json.loads((tmp_path / "run" / "diffusion" / "done.json").read_text())
    assert done["cascade"] is True and done["step"] == config.diffusion.steps
    weights = load_file(str(tmp_path / "run" / "diffusion" / "model.safetensors"))
    assert float(weights["ema.low_stats"][1].min()) > 0 and weights["ema.detail_stats"].shape == (2, 2, 7)

    assert train(prep, config, tmp_path / "resumed", CPU, hooks=TrainHooks(stop_after={"diffusion": 6})) == "stopped"
    assert train(prep, config, tmp_path / "resumed", CPU) == "done"
    again = load_file(str(tmp_path / "resumed" / "diffusion" / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)

    gen = Generator.load(tmp_path / "run")
    a = gen.sample(2, "covid", seed=5, batch_size=2)
    b = gen.sample(1, "covid", seed=6)  # sample 1 of seed 5 is sample 0 of seed 6: same generator
    assert a[0].shape == (16, 32, 48) and np.isfinite(a[0].hu).all()
    np.testing.assert_allclose(a[1].hu, b[0].hu, atol=1e-3)
    assert not np.allclose(a[0].hu, a[1].hu)


def test_cascade_needs_the_haar_stage(tmp_path):
    tiny = load_config("tiny")
    config = dataclasses.replace(tiny, diffusion=dataclasses.replace(tiny.diffusion, cascade=True))
    prep = make_tiny_cache(tmp_path / "prep", config)
    with pytest.raises(CTSynthError, match="autoencoder.kind: haar"):
        train(prep, config, tmp_path / "run", CPU)


def test_gaussian_details_learn_the_residual_variance_and_sample_it():
    """The ``gaussian`` objective: its variance term is minimal exactly where exp(logvar) is the squared
    residual, it sends no gradient to the mean through that term, and sampling adds exp(logvar / 2) * eps."""
    target = torch.zeros(1, 7, 2, 2, 2)
    mean = torch.full((1, 7, 2, 2, 2), 3.0, requires_grad=True)  # residual 3: best variance 9
    logvar = torch.full((1, 7, 2, 2, 2), float(np.log(9.0)), requires_grad=True)
    loss = gaussian_detail_loss(torch.cat([mean, logvar], dim=1), target)
    loss.sum().backward()
    assert torch.allclose(logvar.grad, torch.zeros_like(logvar.grad), atol=1e-7)
    # the mean's gradient is the squared error's alone: 2 * residual / n
    torch.testing.assert_close(mean.grad, torch.full_like(mean.grad, 2 * 3.0 / mean.numel()))
    loss_off = gaussian_detail_loss(torch.cat([mean, logvar + 1.0], dim=1), target)
    assert float(loss_off.detach()) > float(loss.detach())

    eps = torch.randn(1, 7, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    out = torch.cat([torch.ones(1, 7, 2, 2, 2), torch.full((1, 7, 2, 2, 2), float(np.log(4.0)))], dim=1)
    torch.testing.assert_close(gaussian_detail_sample(out, eps), 1.0 + 2.0 * eps)
    torch.testing.assert_close(gaussian_detail_sample(out, eps, scale=0.0), torch.ones(1, 7, 2, 2, 2))


def test_a_tiny_gaussian_cascade_trains_and_samples_reproducibly(tmp_path, capsys):
    from ctsynth.generate import Generator

    config = cascade_config(detail_objective="gaussian")
    prep = make_tiny_cache(tmp_path / "prep", config)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    weights = load_file(str(tmp_path / "run" / "diffusion" / "model.safetensors"))
    out_weights = [k for k in weights if k.startswith("ema.details.0.out")]
    assert any(weights[k].shape[0] == 14 for k in out_weights)  # mean and log-variance of 7 bands
    gen = Generator.load(tmp_path / "run")
    a, b = gen.sample(1, "normal", seed=3), gen.sample(1, "normal", seed=3)
    np.testing.assert_array_equal(a[0].hu, b[0].hu)
    assert np.isfinite(a[0].hu).all()

    # benchmarks/diagnose_cascade.py runs on such a run (one row per level), so it cannot rot
    spec = importlib.util.spec_from_file_location("diagnose_cascade", ROOT / "benchmarks" / "diagnose_cascade.py")
    diagnose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnose)
    assert diagnose.main([str(tmp_path / "run"), str(prep), "--volumes", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| true LL_")]
    assert [r.split("|")[1].strip() for r in rows] == ["true LL_2", "true LL_1"]
    assert diagnose.main([str(tmp_path / "run"), str(prep), "--volumes", "1", "--held-out"]) == 0
    out = capsys.readouterr().out
    assert "1 real held-out volumes" in out and out.count("| true LL_") == 2


def test_add_details_with_silent_detail_models_gives_the_block_means():
    """Known answer for the path generation and benchmarks/diagnose_cascade.py share: detail models whose
    output is zero (and zero band means) add nothing, so refining the true LL_1 of a volume gives its 2x2x2
    block means back, and LL_2 its 4x4x4 block means."""
    cfg = cascade_config().diffusion
    model = WaveletCascade(cfg, 2, 2)
    for unet in model.details:
        for p in unet.out.parameters():
            torch.nn.init.zeros_(p)
    x = torch.randn(1, 1, 8, 16, 24, generator=torch.Generator().manual_seed(2))
    model.set_statistics(x)
    model.detail_stats[0].zero_()
    _, lows, _ = pyramid(x, 2)
    scheduler = build_scheduler(cfg)
    for level in (1, 2):
        out = model.add_details(lows[level - 1], level, scheduler, [torch.Generator()], torch.tensor([0]), 1)
        f = 2 ** level
        block = torch.nn.functional.interpolate(torch.nn.functional.avg_pool3d(x, f), scale_factor=f, mode="nearest")
        torch.testing.assert_close(out, block, rtol=1e-5, atol=1e-5)


def test_samples_past_base_max_epochs_do_not_train_the_base_model():
    """``diffusion.base_max_epochs``: samples numbered from ``base_sample_limit`` on give the base model no
    gradient (the detail models still learn from them), and the step's gradient still does not depend on how
    it is split into micro-batches."""
    model, images, labels, scheduler, grads = two_sample_setup(cascade_config(detail_every=1), 3)
    model.base_sample_limit = 7  # sample 6 trains the base, sample 7 does not
    past = grads(model(images[1:], labels[1:], [7], 0, scheduler))
    assert all(float(g.abs().max()) == 0 for n, g in past.items() if n.startswith("base."))
    assert any(float(g.abs().max()) > 0 for n, g in past.items() if n.startswith("details."))
    one = grads(model(images, labels, [6, 7], 0, scheduler))
    assert any(float(g.abs().max()) > 0 for n, g in one.items() if n.startswith("base."))
    two = grads(model(images[:1], labels[:1], [6], 0, scheduler) / 2 + model(images[1:], labels[1:], [7], 0, scheduler) / 2)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-7, msg=name)
    # the base part of the bounded step is exactly sample 6's base gradient, halved (per-sample loss / batch)
    model.base_sample_limit = None
    unbounded_six = grads(model(images[:1], labels[:1], [6], 0, scheduler) / 2)
    for name in one:
        if name.startswith("base."):
            torch.testing.assert_close(one[name], unbounded_six[name], rtol=1e-5, atol=1e-7, msg=name)


def test_past_base_max_epochs_the_base_model_and_its_ema_stay_exactly_as_they_were(tmp_path):
    """Known answer: 4 training studies, batch 2, ``base_max_epochs: 1``: steps 0 and 1 train the base model, so
    after 16 steps its weights and its EMA equal those of an unbounded run of 2 steps, bit for bit (AdamW
    skips it, weight decay included), while the detail models went on training."""
    config = cascade_config(base_max_epochs=1.0)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, weight_decay=0.01))
    prep = make_tiny_cache(tmp_path / "prep", config)
    assert train(prep, config, tmp_path / "bounded", CPU) == "done"
    short = dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, base_max_epochs=0.0, steps=2))
    assert train(prep, short, tmp_path / "short", CPU) == "done"
    bounded = load_file(str(tmp_path / "bounded" / "diffusion" / "model.safetensors"))
    two = load_file(str(tmp_path / "short" / "diffusion" / "model.safetensors"))
    base = [k for k in bounded if ".base." in k or k.startswith(("unet.base", "ema.base"))]
    assert base and all(torch.equal(bounded[k], two[k]) for k in base)
    details = [k for k in bounded if "details" in k]
    assert any(not torch.equal(bounded[k], two[k]) for k in details)


def test_base_images_feed_the_base_model_only():
    """``diffusion.augment_zoom``: the base model's loss comes from ``base_images``, the detail models' from
    ``images``, so a different base input changes only the base model's gradient."""
    model, images, labels, scheduler, grads = two_sample_setup(cascade_config(detail_every=1), 5)
    plain = grads(model(images, labels, [2, 3], 0, scheduler))
    other = grads(model(images, labels, [2, 3], 0, scheduler, base_images=images.flip(-1)))
    assert any(not torch.equal(plain[n], other[n]) for n in plain if n.startswith("base."))
    assert all(torch.equal(plain[n], other[n]) for n in plain if n.startswith("details."))
    same = grads(model(images, labels, [2, 3], 0, scheduler, base_images=images))
    assert all(torch.equal(plain[n], same[n]) for n in plain)


def test_detail_flips_leave_the_base_model_exactly_as_without_them(tmp_path):
    """Known answer for ``diffusion.augment_detail_flip``: the base model trains on the volumes as they are, so
    after the same steps its weights and EMA equal those of a run without flips, bit for bit, while the detail
    models (which saw mirrored volumes) differ. Without gradient clipping: its norm is the whole cascade's, so a
    detail model's gradient scales the base model's step when it clips."""
    plain = cascade_config(detail_every=1, steps=4)
    plain = dataclasses.replace(plain, train=dataclasses.replace(plain.train, max_grad_norm=0.0))
    prep = make_tiny_cache(tmp_path / "prep", plain)
    flipped = dataclasses.replace(plain, diffusion=dataclasses.replace(plain.diffusion,
                                                                       augment_detail_flip=(True, True, True)))
    assert train(prep, plain, tmp_path / "plain", CPU) == "done"
    assert train(prep, flipped, tmp_path / "flipped", CPU) == "done"
    a = load_file(str(tmp_path / "plain" / "diffusion" / "model.safetensors"))
    b = load_file(str(tmp_path / "flipped" / "diffusion" / "model.safetensors"))
    base = [k for k in a if ".base." in k or k.startswith(("unet.base", "ema.base"))]
    assert base and all(torch.equal(a[k], b[k]) for k in base)
    assert any(not torch.equal(a[k], b[k]) for k in a if "details" in k)


def test_least_squares_scores_known_answers():
    from ctsynth.models.cascade import least_squares_scores

    scores = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 2.0], [3.0, 1.0]]])
    torch.testing.assert_close(least_squares_scores(scores, 1.0), torch.tensor([0.0, (1 + 1 + 4 + 0) / 4]))
    torch.testing.assert_close(least_squares_scores(scores, 0.0), torch.tensor([1.0, (0 + 4 + 9 + 1) / 4]))


def test_adversarial_details_train_their_critics_resume_exactly_and_leave_the_base_alone(tmp_path):
    """``detail_adv_weight``: the critics train beside the cascade and are checkpointed (a stopped and resumed
    run ends bit for bit where an uninterrupted one does, which fails if the critics restart from scratch);
    their loss reaches the detail models only (without clipping the base model equals the plain run's)."""
    plain = cascade_config(detail_every=1, steps=6)
    plain = dataclasses.replace(plain, train=dataclasses.replace(plain.train, max_grad_norm=0.0, checkpoint_every=3))
    adv = dataclasses.replace(plain, diffusion=dataclasses.replace(plain.diffusion, detail_adv_weight=0.5,
                                                                   detail_critic_channels=8))
    prep = make_tiny_cache(tmp_path / "prep", plain)
    assert train(prep, plain, tmp_path / "plain", CPU) == "done"
    assert train(prep, adv, tmp_path / "adv", CPU) == "done"
    assert train(prep, adv, tmp_path / "resumed", CPU, hooks=TrainHooks(stop_after={"diffusion": 3})) == "stopped"
    assert train(prep, adv, tmp_path / "resumed", CPU) == "done"
    a, b, c = (load_file(str(tmp_path / r / "diffusion" / "model.safetensors")) for r in ("plain", "adv", "resumed"))
    assert a.keys() == b.keys()  # the critics are not part of the generator
    assert all(torch.equal(b[k], c[k]) for k in b)
    base = [k for k in a if ".base." in k or k.startswith(("unet.base", "ema.base"))]
    assert base and all(torch.equal(a[k], b[k]) for k in base)
    assert any(not torch.equal(a[k], b[k]) for k in a if "details" in k)


def test_adversarial_details_need_the_regression_objective():
    cfg = cascade_config(detail_objective="flow", detail_adv_weight=0.1).diffusion
    with pytest.raises(CTSynthError, match="detail_objective: regression"):
        WaveletCascade(cfg, 2, 2)


def test_base_details_make_the_base_model_carry_the_coarsest_level_whole():
    """Known answer for ``diffusion.base_details``: the base model's target is ``LL_2`` and ``D_2`` (8 channels on
    the ``LL_2`` grid), and turning that target back into a band gives ``LL_1`` exactly, the band the one
    remaining detail model (level 1) starts from."""
    model = WaveletCascade(cascade_config(base_details=True).diffusion, 2, 2)
    x = torch.randn(2, 1, 8, 16, 24, generator=torch.Generator().manual_seed(4))
    model.set_statistics(x)
    low, lows, details = pyramid(x, 2)
    band = model._base_band(low, details[-1])
    assert band.shape == (2, 8, 2, 4, 6) and model.detail_levels == 1 and len(model.details) == 1
    assert model.base.conv_in.conv.in_channels == 8 and model.base.out[-1].conv.out_channels == 8
    torch.testing.assert_close(band.std(dim=(0, 2, 3, 4)), torch.ones(8), rtol=1e-4, atol=1e-4)  # standardised
    torch.testing.assert_close(model._from_base_band(band), lows[0], rtol=1e-5, atol=1e-5)
    plain = WaveletCascade(cascade_config().diffusion, 2, 2)
    plain.set_statistics(x)
    assert plain._base_band(low, details[-1]).shape == (2, 1, 2, 4, 6) and plain.detail_levels == 2


def test_a_tiny_cascade_with_base_details_trains_and_samples_reproducibly(tmp_path, capsys):
    from ctsynth.generate import Generator

    config = cascade_config(base_details=True)
    prep = make_tiny_cache(tmp_path / "prep", config)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    weights = load_file(str(tmp_path / "run" / "diffusion" / "model.safetensors"))
    assert any(k.startswith("ema.details.0.") for k in weights)
    assert not any(k.startswith("ema.details.1.") for k in weights)
    gen = Generator.load(tmp_path / "run")
    a, b = gen.sample(2, "covid", seed=3, batch_size=2), gen.sample(1, "covid", seed=4)
    assert a[0].shape == (16, 32, 48) and np.isfinite(a[0].hu).all()
    np.testing.assert_allclose(a[1].hu, b[0].hu, atol=1e-3)  # sample 1 of seed 3 is sample 0 of seed 4

    spec = importlib.util.spec_from_file_location("diagnose_cascade", ROOT / "benchmarks" / "diagnose_cascade.py")
    diagnose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnose)
    assert diagnose.main([str(tmp_path / "run"), str(prep), "--volumes", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| true LL_")]
    assert [r.split("|")[1].strip() for r in rows] == ["true LL_1"]  # the one level a detail model makes


def test_energy_score_known_answers_and_its_minimum_at_the_true_spread():
    """Known answers for ``detail_objective: energy``: two equal draws score their RMS distance to the target
    (a regression's error); for y ~ N(0, 1) and draws ~ N(0, s^2) the expected score is
    sqrt(2 / pi) * (sqrt(1 + s^2) - s / sqrt(2)), smallest at s = 1 (the truth), where a point (s = 0) scores
    higher: the score rewards drawing the right spread, not the mean."""
    y = torch.tensor([[3.0, 0.0, 4.0, 0.0]])
    torch.testing.assert_close(energy_score((torch.zeros(1, 4), torch.zeros(1, 4)), y), torch.tensor([2.5]))
    g = torch.Generator().manual_seed(0)
    n = 400_000
    target = torch.randn(n, 1, generator=g)
    expected = {}
    for s in (0.0, 0.5, 1.0, 2.0):
        draws = (s * torch.randn(n, 1, generator=g), s * torch.randn(n, 1, generator=g))
        expected[s] = float(energy_score(draws, target).mean())
        exact = (2 / np.pi) ** 0.5 * ((1 + s * s) ** 0.5 - s / 2 ** 0.5)
        assert abs(expected[s] - exact) < 0.005, (s, expected[s], exact)
    assert min(expected, key=expected.get) == 1.0


def test_energy_details_draw_different_bands_for_different_noise(tmp_path):
    """A tiny ``energy`` cascade trains and generates the same volume for the same seed; given the same band,
    its detail model draws different details for different noise, and the same for ``detail_noise: 0``."""
    from ctsynth.generate import Generator

    config = cascade_config(detail_objective="energy")
    prep = make_tiny_cache(tmp_path / "prep", config)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    gen = Generator.load(tmp_path / "run")
    a, b = gen.sample(1, "covid", seed=3), gen.sample(1, "covid", seed=3)
    np.testing.assert_array_equal(a[0].hu, b[0].hu)
    assert np.isfinite(a[0].hu).all()
    model, scheduler, label = gen.unet, build_scheduler(config.diffusion), torch.tensor([0])
    low = torch.randn(1, 1, 8, 16, 24, generator=torch.Generator().manual_seed(1))
    draw = [model.add_details(low, 1, scheduler, [torch.Generator().manual_seed(s)], label, 1) for s in (1, 2)]
    assert not torch.allclose(draw[0], draw[1])
    model.cfg = dataclasses.replace(model.cfg, detail_noise=0.0)
    mean = [model.add_details(low, 1, scheduler, [torch.Generator().manual_seed(s)], label, 1) for s in (1, 2)]
    torch.testing.assert_close(mean[0], mean[1])


def test_detail_gain_scales_a_level_s_regressed_details_and_only_that_level_s():
    """Known answer for ``diffusion.detail_gain``: with zero band means the merge is linear, so what level 1's
    details add to the block means of ``LL_1`` doubles with gain 2 and vanishes with a tiny gain, and a gain of
    level 2 does not touch a rebuild from ``LL_1``. A gain that is not positive, or one too many, is refused."""
    cfg = cascade_config().diffusion
    x = torch.randn(1, 1, 8, 16, 24, generator=torch.Generator().manual_seed(6))
    _, lows, _ = pyramid(x, 2)
    block = torch.nn.functional.interpolate(torch.nn.functional.avg_pool3d(x, 2), scale_factor=2, mode="nearest")
    added = {}
    for gain in ((), (2.0,), (1e-6,), (1.0, 5.0)):
        torch.manual_seed(0)
        model = WaveletCascade(dataclasses.replace(cfg, detail_gain=gain), 2, 2)
        model.set_statistics(x)
        model.detail_stats[0].zero_()
        for p in model.details[0].out.parameters():  # MONAI starts the output layer at zero
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
        out = model.add_details(lows[0], 1, build_scheduler(cfg), [torch.Generator()], torch.tensor([0]), 1)
        added[gain] = out - block
    assert float(added[()].abs().max()) > 1e-3
    torch.testing.assert_close(added[(2.0,)], 2 * added[()], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(added[(1e-6,)], torch.zeros_like(block), rtol=0, atol=1e-5)
    torch.testing.assert_close(added[(1.0, 5.0)], added[()])
    for bad in ((0.0,), (1.0, 1.0, 1.0)):
        with pytest.raises(CTSynthError, match="detail_gain"):
            WaveletCascade(dataclasses.replace(cfg, detail_gain=bad), 2, 2)
    with pytest.raises(CTSynthError, match="detail_gain works with detail_objective: regression"):
        WaveletCascade(dataclasses.replace(cfg, detail_gain=(1.3,), detail_objective="gaussian"), 2, 2)


def test_neighbourhood_floor_is_the_lowest_block_mean_around_each_voxel():
    """Known answer, by loops: each voxel's floor is the lowest of the 3^3 (fewer at the edges) block means
    around its own block, in image units."""
    x = torch.randn(1, 1, 4, 6, 8, generator=torch.Generator().manual_seed(3))
    low, _ = split_level(x, HaarTransform(1))
    floor = neighbourhood_floor(low, HaarTransform(1))[0, 0].numpy()
    means = torch.nn.functional.avg_pool3d(x, 2)[0, 0].numpy()
    expected = np.empty_like(floor)
    for z, y, w in np.ndindex(*floor.shape):
        around = tuple(slice(max(k // 2 - 1, 0), k // 2 + 2) for k in (z, y, w))  # the block's and its neighbours'
        expected[z, y, w] = means[around].min()
    np.testing.assert_allclose(floor, expected, rtol=1e-5, atol=1e-5)


def test_detail_floor_raises_only_what_undershoots_the_neighbourhood():
    """``diffusion.detail_floor``: a rebuild whose details undershoot (a dark line beside a bright wall) has
    those voxels raised to the floor and no others changed; with it off the undershoot stays."""
    cfg = cascade_config().diffusion
    x = torch.full((1, 1, 8, 16, 24), -0.7)
    x[..., 12:] = 0.05  # lung, then the chest wall
    x[..., 10] = -0.95  # a dark rim: below every 2^3 block mean around it
    _, lows, _ = pyramid(x, 1)
    out = {}
    for on in (False, True):
        model = WaveletCascade(dataclasses.replace(cfg, detail_floor=on), 2, 2)
        model.set_statistics(x)
        # the true details, as a perfect detail model would give them
        model._regress = lambda level, cond, labels, eps=None: model._detail(pyramid(x, 1)[2][0], 1)
        out[on] = model.add_details(lows[0], 1, build_scheduler(cfg), [torch.Generator()], torch.tensor([0]), 1)
    torch.testing.assert_close(out[False], x, rtol=1e-5, atol=1e-5)
    floor = neighbourhood_floor(lows[0], HaarTransform(1))
    torch.testing.assert_close(out[True], torch.maximum(x, floor), rtol=1e-5, atol=1e-5)
    assert float(out[True][..., 10].min()) > -0.95 + 0.1  # the rim is lifted ...
    torch.testing.assert_close(out[True][..., 12:], x[..., 12:])  # ... the wall is not


@pytest.mark.parametrize("option", [{"detail_residuals": (0.5,)}, {"detail_floor": True},
                                    {"spacing_condition": True}, {"calibration_samples": 2}])
def test_the_cascade_s_options_are_refused_without_it(tmp_path, option):
    """Each option only the cascade uses stops a run without the cascade, by name, before any step."""
    tiny = load_config("tiny")
    config = dataclasses.replace(tiny, diffusion=dataclasses.replace(tiny.diffusion, **option))
    prep = make_tiny_cache(tmp_path / "prep", config)
    with pytest.raises(CTSynthError, match=f"diffusion.{next(iter(option))} .* needs diffusion.cascade: true"):
        train(prep, config, tmp_path / "run", CPU)

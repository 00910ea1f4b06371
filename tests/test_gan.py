"""The 3D-GAN baseline (Wu et al. 2016): its published shapes, the report's 48-slice variant, the
discriminator-update rule, and a tiny run that trains, resumes bit-exactly and generates from the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctsynth.cli import main
from ctsynth.config import load_config
from ctsynth.errors import CTSynthError
from ctsynth.models.gan import (Discriminator3D, Generator3D, discriminator_accuracy, first_kernel, padded_shape)
from ctsynth.train import LaunchOptions, TrainHooks, train
from train_fixtures import make_tiny_cache, read_log

CPU = LaunchOptions(accelerator="cpu")


def layers(module: torch.nn.Module, kind: type) -> list:
    return [m for m in module.modules() if isinstance(m, kind)]


def test_the_published_generator_and_discriminator_at_64_cubed():
    """Five 4^3 transposed convolutions 512-256-128-64-1 with strides 1, 2, 2, 2, 2 take z (200) to 64^3;
    BatchNorm + ReLU between them, a sigmoid out (here mapped to [-1, 1]); the discriminator mirrors it."""
    gen = Generator3D((64, 64, 64), z_dim=200, n_labels=0, width=1.0)
    convs = layers(gen, torch.nn.ConvTranspose3d)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(200, 512), (512, 256), (256, 128), (128, 64), (64, 1)]
    assert [c.kernel_size for c in convs] == [(4, 4, 4)] * 5 and [c.stride[0] for c in convs] == [1, 2, 2, 2, 2]
    assert len(layers(gen, torch.nn.BatchNorm3d)) == 4 and len(layers(gen, torch.nn.ReLU)) == 4
    with torch.no_grad():
        x = gen.eval()(torch.rand(2, 200))
    assert x.shape == (2, 1, 64, 64, 64) and float(x.min()) > -1 and float(x.max()) < 1

    disc = Discriminator3D((64, 64, 64), n_labels=0, width=1.0)
    convs = layers(disc, torch.nn.Conv3d)
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 2, 1]
    assert all(m.negative_slope == 0.2 for m in layers(disc, torch.nn.LeakyReLU))
    with torch.no_grad():
        assert disc.eval()(x).shape == (2,)


@pytest.mark.parametrize("shape, kernel", [((48, 128, 128), (3, 8, 8)), ((48, 240, 360), (3, 15, 23)),
                                           ((64, 64, 64), (4, 4, 4))])
def test_the_report_shapes_adapt_the_first_layer_only(shape, kernel):
    """The report's 48-slice targets: the first kernel is ceil(shape / 16), the rest as published; the output
    grid is 16 x that kernel (cropped to the shape when it is not a multiple of 16)."""
    assert first_kernel(shape) == kernel and padded_shape(shape) == tuple(16 * k for k in kernel)
    gen = Generator3D(shape, z_dim=8, n_labels=2, width=1 / 64).eval()
    convs = layers(gen, torch.nn.ConvTranspose3d)
    assert convs[0].kernel_size == kernel and all(c.kernel_size == (4, 4, 4) for c in convs[1:])
    x = gen(torch.rand(1, 8), torch.tensor([1]))
    assert x.shape[2:] == padded_shape(shape)
    assert Discriminator3D(shape, n_labels=2, width=1 / 64).eval()(x, torch.tensor([1])).shape == (1,)


def test_discriminator_accuracy_known_answers():
    real = torch.tensor([2.0, 1.0, -1.0, 3.0])   # 3 of 4 called real
    fake = torch.tensor([-2.0, -1.0, -0.5, 0.5])  # 3 of 4 called generated
    assert discriminator_accuracy(real, fake) == 0.75
    assert discriminator_accuracy(torch.ones(5), -torch.ones(5)) == 1.0


def tiny_gan(**gan):
    config = load_config("gan-tiny")
    return dataclasses.replace(config, gan=dataclasses.replace(config.gan, **gan))


def discriminator_weights(run) -> dict:
    flat = load_file(str(run / "gan" / "model.safetensors"))
    return {k: v for k, v in flat.items() if k.startswith("discriminator.") and "running" not in k
            and "num_batches" not in k}


@pytest.mark.parametrize("threshold, updated", [(0.0, False), (1.0, True)])
def test_the_discriminator_is_updated_only_while_its_accuracy_is_at_most_the_threshold(tmp_path, threshold, updated):
    """Threshold 0: an accuracy of 0 is (nearly) impossible, so the discriminator's weights stay at their
    initial values; threshold 1: every step updates them. The log says which, with the accuracy."""
    config = tiny_gan(d_accuracy_max=threshold, steps=3, lr_d=0.01)
    prep = make_tiny_cache(tmp_path / "prep", config, n=4, n_held_out=1)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    torch.manual_seed(config.train.seed)  # the stage seeds with train.seed + rank, then builds G, then D
    from ctsynth.models.gan import build_gan
    _, initial = build_gan(config)
    trained = discriminator_weights(tmp_path / "run")
    same = all(torch.equal(trained[f"discriminator.{k}"], v) for k, v in initial.state_dict().items()
               if f"discriminator.{k}" in trained)
    assert same is (not updated)
    records = [r for r in read_log(tmp_path / "run" / "gan" / "log.jsonl") if "event" not in r]
    assert [r["d_updated"] for r in records] == [float(updated)] * 3
    assert all(0 <= r["d_accuracy"] <= 1 and (r["d_accuracy"] <= threshold) is updated for r in records)


def test_a_tiny_gan_trains_resumes_exactly_and_generates_from_the_cli(tmp_path, capsys):
    config = load_config("gan-tiny")
    prep = make_tiny_cache(tmp_path / "prep", config, n=4, n_held_out=1)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    done = json.loads((tmp_path / "run" / "gan" / "done.json").read_text())
    assert done["step"] == 8 and done["conditional"] is True
    assert not (tmp_path / "run" / "autoencoder").exists()

    assert train(prep, config, tmp_path / "resumed", CPU, hooks=TrainHooks(stop_after={"gan": 5})) == "stopped"
    assert main(["train", str(prep), "--config", "gan-tiny", "--out", str(tmp_path / "resumed"),
                 "--accelerator", "cpu"]) == 0
    a, b = (load_file(str(tmp_path / r / "gan" / "model.safetensors")) for r in ("run", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    out = tmp_path / "synthetic"
    assert main(["generate", str(tmp_path / "run"), "--n", "2", "--label", "covid", "--seed", "3",
                 "--out", str(out)]) == 0
    side = json.loads((out / "covid_00001.json").read_text())
    assert side["scheduler"] == "gan" and side["seed"] == 4 and side["shape_zyx"] == [16, 32, 32]
    from ctsynth.generate import Generator
    gen = Generator.load(tmp_path / "run")
    one = gen.sample(2, "covid", seed=3, batch_size=2)
    two = gen.sample(1, "covid", seed=4)  # sample 1 of seed 3 is sample 0 of seed 4
    assert one[0].shape == (16, 32, 32) and np.isfinite(one[0].hu).all()
    np.testing.assert_allclose(one[1].hu, two[0].hu, atol=1e-3)
    lo, hi = gen.hu_window
    assert lo <= one[0].hu.min() and one[0].hu.max() <= hi


def test_a_time_budget_ends_the_gan_as_finished(tmp_path):
    """``train.time_budget_min`` ends the GAN, finished (weights, ``done.json``), at the first step past the
    budget, as it ends the other stages: far short of ``gan.steps`` (a minute of steps here without it)."""
    config = tiny_gan(steps=2000)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, time_budget_min=0.02,
                                                                   checkpoint_every=10**9, log_every=100))
    prep = make_tiny_cache(tmp_path / "prep", config, n=4, n_held_out=1)
    assert train(prep, config, tmp_path / "run", CPU) == "done"
    done = json.loads((tmp_path / "run" / "gan" / "done.json").read_text())
    assert 1 <= done["step"] < 2000 and 1.2 <= done["train_seconds"] < 60, done
    assert (tmp_path / "run" / "gan" / "model.safetensors").is_file()


def test_an_unknown_model_is_one_line():
    with pytest.raises(CTSynthError, match="unknown model 'vae'"):
        dataclasses.replace(load_config("gan-tiny"), model="vae")


@pytest.mark.parametrize("name, shape", [("gan-baseline", (64, 64, 64)), ("gan-48", (48, 128, 128)),
                                         ("gan-tiny", (16, 32, 32))])
def test_gan_presets_are_the_paper_s_hyperparameters(name, shape):
    config = load_config(name)
    assert config.model == "gan" and tuple(config.data.shape) == shape
    g = config.gan
    assert (g.z_dim, g.lr_g, g.lr_d, g.beta1, g.d_accuracy_max, g.conditional) == (200, 2.5e-3, 1e-5, 0.5, 0.8, True)
    assert g.batch_size == (4 if name == "gan-tiny" else 100) and g.width == (1 / 16 if name == "gan-tiny" else 1.0)

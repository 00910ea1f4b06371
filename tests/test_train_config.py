"""Presets load into typed, strict config dataclasses; the data order splits cleanly across ranks and micro-batches."""

from __future__ import annotations

import pytest

from ctsynth.config import load_config, preset_names
from ctsynth.errors import CTSynthError
from ctsynth.models.autoencoder import build_autoencoder, downsampling_factor, latent_shape
from ctsynth.models import build_diffusion_model
from ctsynth.models.diffusion import unet_multiple
from ctsynth.train.common import StepSampler, sample_ids, study_for_sample


@pytest.mark.parametrize("name", ["tiny", "demo", "quality", "low", "lung", "full"])
def test_presets_load_and_build(name):
    assert name in preset_names()
    config = load_config(name)
    assert config.name == name
    assert downsampling_factor(config.autoencoder) == (8 if name == "demo" else 4)
    # tiny exercises the trained stage 1; every other preset is on the lossless Haar bands (docs/quality.md)
    assert config.autoencoder.kind == ("kl" if name == "tiny" else "haar")
    if config.autoencoder.kind == "kl":
        assert all(p <= n for p, n in zip(config.autoencoder.patch, config.data.shape))
    if name in ("tiny", "demo", "quality"):  # the big ones are built in the benchmark, not in a test
        build_autoencoder(config.autoencoder)
        build_diffusion_model(config)


def test_an_unknown_stage_1_kind_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("autoencoder:\n  kind: vqvae\n")
    with pytest.raises(CTSynthError, match="autoencoder.kind 'vqvae'"):
        build_autoencoder(load_config(bad).autoencoder)


def test_latent_shapes_of_the_gpu_presets():
    assert latent_shape(load_config("lung").autoencoder, (48, 240, 360)) == (12, 60, 90)
    assert latent_shape(load_config("full").autoencoder, (48, 512, 512)) == (12, 128, 128)
    assert unet_multiple(load_config("lung").diffusion) == 4  # x 90 is padded to 92 inside the UNet


def test_unknown_keys_and_wrong_types_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("autoencoder:\n  chanels: [8, 16, 16]\n")
    with pytest.raises(CTSynthError, match="chanels"):
        load_config(bad)
    bad.write_text("train:\n  seed: one\n")
    with pytest.raises(CTSynthError, match="train.seed' must be int"):
        load_config(bad)
    bad.write_text("diffusion:\n  lr: 1\n  channels: [8, x]\n")
    with pytest.raises(CTSynthError, match="diffusion.channels"):
        load_config(bad)
    with pytest.raises(CTSynthError, match="no preset named"):
        load_config("huge")


def test_samples_split_across_ranks_and_micro_batches_without_overlap():
    world, accum, batch = 3, 2, 4
    for step in (0, 5):
        ids = [g for rank in range(world) for micro in range(accum)
               for g in sample_ids(step, micro, accum, rank, world, batch)]
        assert sorted(ids) == list(range(step * 24, step * 24 + 24))
    # every study once per epoch, in a new order each epoch
    n = 7
    epoch0 = [study_for_sample(g, n, seed=0) for g in range(n)]
    epoch1 = [study_for_sample(g, n, seed=0) for g in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and epoch0 != epoch1
    # the sampler resumes mid-stream: starting at step 2 gives what a run from step 0 gives at step 2
    it0, it2 = iter(StepSampler(0, accum, 1, world, batch, n, 0)), iter(StepSampler(2, accum, 1, world, batch, n, 0))
    from_zero = [next(it0) for _ in range(3 * accum * batch)]
    assert from_zero[2 * accum * batch:] == [next(it2) for _ in range(accum * batch)]

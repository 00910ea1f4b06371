"""Checkpoints (safetensors + JSON, no pickle), fallback over a damaged one, and the reconstruction metrics."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch

from ctsynth.checkpoint import (list_checkpoints, load_checkpoint, load_latest_checkpoint, rng_state,
                                save_checkpoint, set_rng_state)
from ctsynth.config import load_config
from ctsynth.errors import CTSynthError
from ctsynth.preprocess.cache import read_manifest
from ctsynth.train.autoencoder import reconstruction_metrics
from train_fixtures import make_tiny_cache


def _trained_adam() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(3):
        net(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return net, opt


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    net, opt = _trained_adam()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, 7, {"net": net.state_dict()}, {"opt": opt.state_dict()}, {"rng": [rng_state()]}, 2)
    expected = (random.random(), np.random.rand(), torch.rand(1))

    models, optimizers, state = load_checkpoint(tmp_path / "ckpt-00000007")
    assert state["step"] == 7
    net2, opt2 = torch.nn.Linear(4, 3), None
    net2.load_state_dict(models["net"])
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.5)
    opt2.load_state_dict(optimizers["opt"])
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["betas"] == (0.8, 0.9)
    for p in net.parameters():
        a, b = opt.state[p], opt2.state[dict(zip(net.parameters(), net2.parameters()))[p]]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])
    set_rng_state(state["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    # a checkpoint is JSON + safetensors only (no pickle anywhere)
    assert sorted(p.name for p in (tmp_path / "ckpt-00000007").iterdir()) == [
        "optimizer.safetensors", "state.json", "weights.safetensors"]


def test_keep_last_and_fallback_over_a_damaged_latest(tmp_path):
    net, opt = _trained_adam()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"net": net.state_dict()}, {"opt": opt.state_dict()}, {}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002", "ckpt-00000003"]
    (tmp_path / "ckpt-00000003" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(CTSynthError, match="damaged"):
        load_checkpoint(tmp_path / "ckpt-00000003")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path, (_, _, state) = load_latest_checkpoint(tmp_path)
    assert path.name == "ckpt-00000002" and state["step"] == 2
    assert any("ckpt-00000003" in str(w.message) for w in caught)


class _OffsetAutoencoder(torch.nn.Module):
    """Identity 'autoencoder' whose decoder adds a known offset: PSNR and SSIM have known answers."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        return x, torch.ones_like(x)

    def decode(self, z):
        return z + self.offset


def test_reconstruction_metrics_have_known_answers(tmp_path):
    config = load_config("tiny")
    prep = make_tiny_cache(tmp_path / "prep", config, n=2, n_held_out=1)
    entries = read_manifest(prep).entries("held_out")
    perfect = reconstruction_metrics(_OffsetAutoencoder(0.0), config, prep, entries)
    # an exact round trip has an infinite PSNR, which JSON cannot hold: recorded as None, with the error 0
    assert perfect["ssim"] == pytest.approx(1.0, abs=1e-6) and perfect["psnr_db"] is None
    assert perfect["max_abs_error"] == 0.0
    shifted = reconstruction_metrics(_OffsetAutoencoder(0.1), config, prep, entries)
    # MSE = 0.01 on a data range of 2: PSNR = 10 log10(4 / 0.01) = 26.02 dB (the fixture stays below 0.9)
    assert shifted["psnr_db"] == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-3)
    assert shifted["ssim"] < 1.0 and shifted["max_abs_error"] == pytest.approx(0.1, abs=1e-6)

"""Known answers for the diffusion stage's maths: sampler, guidance, conditioning, per-sample draws, gradient
accumulation and the Haar transform.

Loss curves and resume tests say the pieces run; these say they compute the right thing. Each test has an
answer worked out by hand (a constant velocity must land on its target, guidance 1 must be the conditional
pass, two micro-batches must give the gradient of one batch, ...), so a sign, a missing step or a shared
generator fails here instead of quietly making worse samples. Tiny UNets on CPU, seeded, a few seconds.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ctsynth.config import load_config
from ctsynth.models.diffusion import (build_scheduler, build_unet, guided_prediction, sample_latents,
                                      standardise, training_draws, unet_multiple)
from ctsynth.models.wavelet import HaarTransform
from ctsynth.train.diffusion import accumulate_gradients

TINY = load_config("tiny")
N_LABELS = len(TINY.data.labels)  # 2: normal, covid
NULL = N_LABELS  # the extra last class embedding is the unconditional ("null") label
LATENT_CHANNELS = 8


def perturbed_unet(seed: int, latent_channels: int = LATENT_CHANNELS) -> torch.nn.Module:
    """The tiny config's UNet with every parameter nudged by seeded noise.

    MONAI zero-initialises the UNet's output convolution (and each residual block's second convolution), so
    an untrained net returns exactly 0 whatever its input or label: every comparison below would pass
    trivially. Adding small seeded noise to all parameters makes the output depend on x, t and the label.
    """
    torch.manual_seed(seed)
    unet = build_unet(TINY.diffusion, latent_channels, N_LABELS)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.eval()


# 1. Rectified-flow sampler ------------------------------------------------------------------------------------

class ConstantVelocity(torch.nn.Module):
    """Predicts the velocity ``target - noise`` whatever its input: the exact flow from ``noise`` to ``target``.

    Records the timesteps it is called with, so the test can also see the schedule start at pure noise."""

    def __init__(self, velocity: torch.Tensor) -> None:
        super().__init__()
        self.velocity = velocity
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x, timesteps, class_labels=None):
        self.timesteps.append(timesteps.detach().clone())
        repeats = x.shape[0] // self.velocity.shape[0]  # guidance != 1 runs cond and uncond in one batch
        return torch.cat([self.velocity] * repeats)


@pytest.mark.parametrize("steps", [1, 7, 30])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_rflow_sampler_with_constant_velocity_lands_on_the_target(steps, guidance):
    """Euler steps of a constant velocity are exact, so the sampler must end on ``target`` whatever the step
    count: the steps' lengths must add up to exactly 1 (from t = T to 0). A missing last step, a schedule that
    does not start at T or a wrong sign all miss. A constant velocity has cond == uncond, so guidance must
    change nothing; and the result must be cropped to ``latent_shape``, from the padded noise's corner."""
    gen = torch.Generator().manual_seed(steps)
    padded = (2, 4, 4, 6, 8)  # the noise is already padded to the UNet's multiple
    noise = torch.randn(padded, generator=gen)
    target = torch.randn(padded, generator=gen)
    model = ConstantVelocity(target - noise)
    scheduler = build_scheduler(dataclasses.replace(TINY.diffusion, scheduler="rflow"))
    labels = torch.tensor([0, 1])

    out = sample_latents(model, scheduler, noise, labels, NULL, guidance, steps, latent_shape=(4, 6, 8))
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)
    assert len(model.timesteps) == steps
    assert float(model.timesteps[0][0]) == scheduler.num_train_timesteps  # the first step is at pure noise

    model = ConstantVelocity(target - noise)
    out = sample_latents(model, scheduler, noise, labels, NULL, guidance, steps, latent_shape=(3, 5, 7))
    assert out.shape == (2, 4, 3, 5, 7)
    torch.testing.assert_close(out, target[..., :3, :5, :7], rtol=0, atol=1e-5)


# 2. Classifier-free guidance ----------------------------------------------------------------------------------

def guidance_inputs() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    unet = perturbed_unet(seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, LATENT_CHANNELS, 4, 4, 4, generator=gen)
    t = torch.tensor([500.0, 120.0])
    labels = torch.tensor([0, 1])
    return unet, x, t, labels


@torch.no_grad()
def test_guidance_is_uncond_plus_g_times_cond_minus_uncond():
    """Guidance 1 is exactly the conditional pass (the docstring promises only that pass runs); guidance g is
    ``uncond + g * (cond - uncond)`` as computed from two separate passes by hand; guidance 0 is the pass with
    the null label. Swapping cond and uncond, or guiding away from the wrong pass, breaks the g != 1 cases."""
    unet, x, t, labels = guidance_inputs()
    cond = unet(x, timesteps=t, class_labels=labels)
    uncond = unet(x, timesteps=t, class_labels=torch.full_like(labels, NULL))
    assert (cond - uncond).abs().max() > 1e-3  # otherwise the g != 1 checks below would prove nothing

    assert torch.equal(guided_prediction(unet, x, t, labels, NULL, 1.0), cond)
    for g in (3.0, 0.5, -1.0):
        torch.testing.assert_close(guided_prediction(unet, x, t, labels, NULL, g), uncond + g * (cond - uncond),
                                   rtol=0, atol=1e-5)
    torch.testing.assert_close(guided_prediction(unet, x, t, labels, NULL, 0.0), uncond, rtol=0, atol=1e-5)


# 3. The label reaches the network -----------------------------------------------------------------------------

@torch.no_grad()
def test_each_label_and_the_null_label_change_the_output():
    """Class conditioning is the whole point of stage 2 and of guidance: with the same x and t, labels 0 and 1
    and the null label must give three different outputs (a UNet built without class embeddings, or one
    whose labels are dropped on the way, gives three equal ones)."""
    unet, x, t, _ = guidance_inputs()
    outs = {label: unet(x, timesteps=t, class_labels=torch.full((2,), label)) for label in (0, 1, NULL)}
    for a, b in ((0, 1), (0, NULL), (1, NULL)):
        assert (outs[a] - outs[b]).abs().max() > 1e-3, (a, b)


# 4. Per-sample training draws ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rflow", "ddim"])
def test_training_draws_are_per_sample(kind):
    """A sample's noise, timestep and label dropout come from its own global sample number and the seed, not
    from its position in a batch: so batch 2 x accumulation 1 and batch 1 x accumulation 2 (or 2 ranks) train
    on the same draws, and a resumed run draws what an uninterrupted one would."""
    scheduler = build_scheduler(dataclasses.replace(TINY.diffusion, scheduler=kind))
    shape = (2, 4, 4, 4)
    both = training_draws([5, 6], 0, shape, scheduler, 0.5)
    one = [training_draws([k], 0, shape, scheduler, 0.5) for k in (5, 6)]
    for part, name in enumerate(("noise", "t", "drop")):
        assert torch.equal(both[part], torch.cat([one[0][part], one[1][part]])), name
    assert both[0].shape == (2, *shape) and both[1].shape == (2,) and both[2].dtype == torch.bool

    assert not torch.allclose(both[0][0], both[0][1])  # different samples: different noise
    assert not torch.allclose(both[0], training_draws([7, 8], 0, shape, scheduler, 0.5)[0])

    noise, t, drop = training_draws(list(range(64)), 0, shape, scheduler, 0.5)
    assert 0 <= int(t.min()) and int(t.max()) < scheduler.num_train_timesteps
    assert len(set(t.tolist())) > 32 and 0 < int(drop.sum()) < 64  # timesteps vary; some dropped, not all


@pytest.mark.parametrize("kind", ["rflow", "ddim"])
def test_training_draws_depend_on_the_seed(kind):
    """``train.seed`` must change the training noise, timesteps and label dropout, or two runs "with different
    seeds" (e.g. to measure seed variance) train on identical draws. Fails at present: torch's CPU generator
    (mt19937) keeps only the low 32 bits of its seed, and ``(seed << 32) + g`` puts the seed in the high bits,
    so every seed draws what seed 0 draws."""
    scheduler = build_scheduler(dataclasses.replace(TINY.diffusion, scheduler=kind))
    ids = list(range(16))
    seed0 = training_draws(ids, 0, (2, 4, 4, 4), scheduler, 0.5)
    for seed in (1, 7):
        other = training_draws(ids, seed, (2, 4, 4, 4), scheduler, 0.5)
        assert not torch.allclose(seed0[0], other[0]), f"seed {seed} draws the same noise as seed 0"
        assert not torch.equal(seed0[1], other[1]), f"seed {seed} draws the same timesteps as seed 0"


# 5. Gradient accumulation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rflow", "ddim"])
def test_batch_2_equals_batch_1_with_2_accumulation_steps(kind):
    """One optimizer step's gradient must not depend on how its samples are split into micro-batches: the
    draws are per sample, GroupNorm normalises each sample on its own, and each micro-batch's loss is divided
    by ``grad_accum``. So batch 2 x accumulation 1 and batch 1 x accumulation 2 give the same gradient (fp32),
    parameter by parameter, and the same reported loss."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision="32")
    c = 4
    cfg = dataclasses.replace(TINY.diffusion, scheduler=kind, label_dropout=0.5)
    m = unet_multiple(cfg)
    gen = torch.Generator().manual_seed(3)
    raw = 3.0 + 2.0 * torch.randn(5, c, 2 * m, 3 * m, 4 * m, generator=gen)
    shift, scale = raw.mean(dim=(0, 2, 3, 4)), 1.0 / raw.std(dim=(0, 2, 3, 4))
    latents = standardise(raw, shift, scale)
    labels = torch.tensor([0, 1, 0, 1, 1])

    grads, losses = [], []
    for batch, accum in ((2, 1), (1, 2)):
        unet = perturbed_unet(seed=4, latent_channels=c).train()
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
        unet, opt = fabric.setup(unet, opt)
        losses.append(accumulate_gradients(
            fabric, unet, build_scheduler(cfg), latents, labels, 3, dataclasses.replace(cfg, batch_size=batch),
            dataclasses.replace(TINY.train, grad_accum=accum), NULL))
        grads.append({name: p.grad.detach().clone() for name, p in unet.module.named_parameters()})

    assert grads[0].keys() == grads[1].keys()
    assert all(g is not None for g in grads[0].values())
    assert sum(float(g.abs().sum()) for g in grads[0].values()) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)
    assert losses[0] > 0 and math.isclose(losses[1], losses[0], rel_tol=1e-5)


# 6. Haar wavelet transform ------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [1, 2, 3])
def test_haar_round_trip_and_orthonormality(levels):
    """The Haar packet replaces the KL autoencoder because it loses nothing: decode(encode(x)) must give x
    back to float rounding, and the transform must be orthonormal (energy preserved), so that standardising
    its channels is the only rescaling the diffusion model sees."""
    x = torch.randn(2, 1, 8, 16, 24, generator=torch.Generator().manual_seed(levels))
    haar = HaarTransform(levels)
    coeffs, sigma = haar.encode(x)
    f = 2 ** levels
    assert coeffs.shape == (2, 8 ** levels, 8 // f, 16 // f, 24 // f) and torch.equal(sigma, torch.zeros_like(coeffs))
    torch.testing.assert_close(haar.decode(coeffs), x, rtol=0, atol=1e-6)
    torch.testing.assert_close(coeffs.double().square().sum(), x.double().square().sum(), rtol=1e-6, atol=0)


def test_haar_low_pass_is_the_scaled_block_sum_and_a_constant_has_no_detail():
    """Band 0 of one level is the 2x2x2 block sum / sqrt(8) (the orthonormal low-pass), and a constant volume
    has nothing in the seven detail bands, at every level: so the bands are in the order the docstring says."""
    x = torch.randn(2, 1, 8, 16, 24, generator=torch.Generator().manual_seed(9))
    low = HaarTransform(1).encode(x)[0][:, 0:1]
    block_sum = x.reshape(2, 1, 4, 2, 8, 2, 12, 2).sum(dim=(3, 5, 7))
    torch.testing.assert_close(low, block_sum / math.sqrt(8), rtol=0, atol=1e-6)

    # Not bit-exact 0: the fused multiply-adds of the einsum leave ~1e-9 of rounding in the detail bands of
    # 0.7 (a power of two would cancel exactly); 1e-6 is still 1000x below any real detail.
    constant = torch.full((1, 1, 8, 16, 24), 0.7)
    for levels in (1, 2, 3):
        coeffs = HaarTransform(levels).encode(constant)[0]
        assert coeffs[:, 1:].abs().max() < 1e-6, levels
        torch.testing.assert_close(coeffs[:, 0], torch.full_like(coeffs[:, 0], 0.7 * math.sqrt(8) ** levels))


# 7. EMA warm-up ----------------------------------------------------------------------------------------------

def test_ema_warm_up_averages_the_first_steps_and_then_holds_the_configured_decay():
    """The EMA of step 1 must be 2/11 initial + 9/11 trained weights (a plain decay of 0.995 would keep 99.5%
    of the random initialisation), and from step 1790 on the configured 0.995 holds."""
    from ctsynth.models.diffusion import ema_decay_at, update_ema

    assert ema_decay_at(0.995, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.995, 1790) == pytest.approx(0.995) and ema_decay_at(0.995, 10**6) == 0.995
    ema, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(ema.weight)
    torch.nn.init.ones_(model.weight)
    update_ema(ema, model, ema_decay_at(0.995, 1))
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 9 / 11))

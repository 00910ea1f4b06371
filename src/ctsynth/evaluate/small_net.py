"""The one trainer of the evaluation's small networks (the feature encoder and the usefulness classifiers).

Both are trained here, seeded, on thumbnails of the evaluation grid, for a fixed number of steps of Adam on
seeded random batches (:func:`seeded_batches`), so the same data and seed give the same network on a CPU.

Augmentation policy: random flips, each axis with probability 1/2, and nothing else. The generator's own
training never flips left-right (``ctsynth.data``): it must reproduce the chest's asymmetry (heart and
aorta on the left, the smaller left lung). The evaluation networks measure, and what they measure decides
which flips keep the answer:
- the encoder (:data:`ENCODER_FLIPS`: z, y and x) is self-supervised and its features are pooled over
  space (mean and std per channel), so flips only multiply its few dozen training volumes; it is therefore
  nearly blind to a mirrored chest, which the anatomy descriptors catch instead (``left_lung_share``);
- the classifier (:data:`CLASSIFIER_FLIPS`: z and x, not y) decides COVID-19 or normal from lesion texture,
  which does not depend on the side or the level, but COVID-19 opacities are posterior (dependent)
  predominant, so an anterior-posterior flip would change what a lesion looks like.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ENCODER_FLIPS = (2, 3, 4)  # axes of (batch, channel, z, y, x)
CLASSIFIER_FLIPS = (2, 4)


def seeded_batches(n: int, batch: int, steps: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=min(batch, n), replace=n < batch) for _ in range(steps)]


def train_small_net(build: Callable, data, loss: Callable, *, steps: int, batch: int, seed: int, lr: float,
                    flips: tuple[int, ...]):
    """Build (under ``torch.manual_seed(seed)``) and train a network; returns it in eval mode.

    ``data``: a tensor ``(n, 1, z, y, x)``; ``loss(net, x, idx, gen)`` the loss of a batch ``x`` (rows ``idx``
    of ``data``, flipped) with ``gen`` the trainer's seeded generator for any further randomness.
    """
    import torch

    torch.manual_seed(seed)
    net = build()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for idx in seeded_batches(len(data), batch, steps, seed):
        x = data[idx]
        for axis in flips:
            if torch.rand((), generator=gen) < 0.5:
                x = x.flip(axis)
        value = loss(net, x, idx, gen)
        opt.zero_grad()
        value.backward()
        opt.step()
    net.eval()
    return net

"""Which model of a wavelet cascade limits its radiomics-space fidelity: the base, or the detail models?

    python benchmarks/diagnose_cascade.py RUN CACHE [--volumes 8] [--steps 10]

For real training volumes of CACHE (the `ctsynth prepare` folder the run was trained on), the Haar pyramid
is taken down to level ``l`` (l = L .. 1), and the detail models of RUN make every level below it
(:meth:`ctsynth.models.cascade.WaveletCascade.add_details`), as they do in generation but from the real
band instead of the base model's. Each row compares the rebuilt volumes with the same volumes as they are,
in the evaluation's radiomics features (:mod:`ctsynth.evaluate.radiomics`), standardised by the real
training set as the Frechet distance is: ``sum z^2`` is the squared distance of the two sets' means (the
Frechet distance's mean term), and the features that move most are listed. A large value from the true
``LL_L`` says the detail models, not the base one, cost the fidelity; what is left of the benchmark's
Frechet distance above it is the base model's share. Numbers are for ranking methods, from a few volumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ctsynth.errors import CTSynthError  # noqa: E402
from ctsynth.evaluate.features import summarise_volume  # noqa: E402
from ctsynth.evaluate.fidelity import standardiser  # noqa: E402
from ctsynth.evaluate.inputs import plan_real  # noqa: E402
from ctsynth.evaluate.radiomics import FEATURE_NAMES  # noqa: E402
from ctsynth.generate import Generator  # noqa: E402
from ctsynth.models.cascade import pyramid  # noqa: E402
from ctsynth.models.diffusion import build_scheduler  # noqa: E402
from ctsynth.preprocess.window import denormalise, normalise  # noqa: E402


def rebuild(gen: Generator, volume, level: int, seed: int, steps: int, calibrated: bool = False):
    """``volume`` with its Haar details below ``LL_level`` made by the run's detail models (and, when
    ``calibrated``, through the run's output curve, as sampling does)."""
    model = gen.unet
    x = torch.from_numpy(normalise(volume.hu, gen.hu_window)).float()[None, None]
    _, lows, _ = pyramid(x, model.levels)
    label = torch.tensor([gen.label_index(volume.label)])
    with torch.no_grad():
        out = model.add_details(lows[level - 1], level, build_scheduler(gen.config.diffusion),
                                [torch.Generator().manual_seed(seed)], label, steps)
        if calibrated:
            out = model.calibration(out)
    return volume.with_hu(denormalise(out[0, 0].numpy(), gen.hu_window))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("cache", type=Path)
    parser.add_argument("--volumes", type=int, default=8, help="real training volumes to rebuild (default 8)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps of flow detail models")
    parser.add_argument("--top", type=int, default=6, help="features listed per row")
    parser.add_argument("--held-out", action="store_true",
                        help="rebuild held-out volumes instead of training ones: a detail model that copies "
                             "rebuilds its own training crops well, so only these show how it generalises")
    parser.add_argument("--detail-noise", type=float, default=None,
                        help="gaussian detail models: scale of the sampled noise (default: the run's config)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    gen = Generator.load(args.run)
    if not gen.config.diffusion.cascade:
        raise CTSynthError("this run is not a wavelet cascade", args.run, "give a run trained with diffusion.cascade")
    if args.detail_noise is not None:
        gen.unet.cfg = dataclasses.replace(gen.unet.cfg, detail_noise=args.detail_noise)
    items, _, _ = plan_real(args.cache, seed=0, held_out_fraction=0.2)
    train = [i for i in items if i.group == "train"]
    real = [summarise_volume(i.load(), study_id=i.id, group="train") for i in train]
    scale = standardiser(np.stack([s.radiomics for s in real]))
    group = "held_out" if args.held_out else "train"
    picked = [i for i in items if i.group == group][:args.volumes]
    chosen = [i.load() for i in picked]
    own = real[:args.volumes] if group == "train" else [summarise_volume(v, study_id=i.id, group=group)
                                                         for i, v in zip(picked, chosen)]
    before = scale(np.stack([s.radiomics for s in own])).mean(0)
    print(f"{len(chosen)} real {group.replace('_', '-')} volumes, their bands rebuilt by {args.run}")
    print("| details made below | sum z^2 | features that move most (z) |\n|---|---|---|")
    for level in range(gen.unet.detail_levels, 0, -1):
        after = scale(np.stack([summarise_volume(rebuild(gen, v, level, k, args.steps), study_id=str(k),
                                                 group="rebuilt").radiomics for k, v in enumerate(chosen)])).mean(0)
        z = after - before
        top = np.argsort(-np.abs(z))[:args.top]
        print(f"| true LL_{level} | {float(np.sum(z ** 2)):.1f} | "
              + ", ".join(f"{FEATURE_NAMES[i]} {z[i]:+.1f}" for i in top) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Screen a trained run's samples in the evaluation's radiomics features, in minutes: how far they sit from
the held-out crops, split into the Frechet distance's mean term and covariance term, how widely they spread
against the real crops, and which features are furthest off.

    python benchmarks/screen_radiomics.py RUN CACHE [--per-class 20] [--steps N] [--guidance G] [--refit]
                                          [--true-band] [--real-features FILE.npz]

Features are standardised by the cache's training crops, as the evaluation does. The baseline row compares
as many training crops as there are samples (a seeded choice) with the held-out crops, so both rows have
the same sizes. ``--refit`` fits a cascade's residual banks and output curve again with the code as it is
now (after a change to either), with ``--steps`` and ``--guidance`` when given. ``--true-band`` scores the
held-out crops rebuilt from their own coarsest Haar band by the run's detail models (bank and curve
included) instead of samples: what is left then is the detail stage's share. The real crops' features take
minutes (about 1.5 s a crop); ``--real-features`` keeps them in a file for the next screen.

The numbers rank methods; the full evaluation (`ctsynth evaluate`, `bench_quality.py`) decides verdicts. With
20 samples a class, differences under about 10% are noise (docs/quality.md).
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from ctsynth.errors import CTSynthError  # noqa: E402
from ctsynth.evaluate.features import summarise_volume  # noqa: E402
from ctsynth.evaluate.fidelity import frechet_terms, standardiser  # noqa: E402
from ctsynth.evaluate.inputs import plan_real  # noqa: E402
from ctsynth.evaluate.pipeline import EvaluateOptions  # noqa: E402
from ctsynth.evaluate.radiomics import FEATURE_NAMES  # noqa: E402
from ctsynth.generate import Generator  # noqa: E402
from diagnose_cascade import rebuild  # noqa: E402


def radiomics(volumes) -> np.ndarray:
    return np.stack([summarise_volume(v, study_id=str(k), group="x").radiomics for k, v in enumerate(volumes)])


def real_features(items, path: Path | None) -> dict[str, np.ndarray]:
    """``train`` and ``held_out`` feature matrices, from ``path`` when it holds these crops' features."""
    ids = {g: [i.id for i in items if i.group == g] for g in ("train", "held_out")}
    if path is not None and path.exists():
        saved = np.load(path)
        if all(list(saved[f"{g}_ids"]) == ids[g] for g in ids):
            return {g: saved[g] for g in ids}
        print(f"{path} holds other crops' features: computing them again")
    out = {g: radiomics([i.load() for i in items if i.group == g]) for g in ids}
    if path is not None:
        np.savez(path, **out, **{f"{g}_ids": np.array(v) for g, v in ids.items()})
    return out


def rows(candidate: np.ndarray, real: dict[str, np.ndarray], scale,
         seed: int = 0) -> list[tuple[str, float, float, float]]:
    """(name, Frechet distance, mean term, covariance term) of the baseline and the candidate against the
    held-out crops, standardised by ``scale`` (the training crops')."""
    held = scale(real["held_out"])
    pick = np.random.default_rng(seed).choice(len(real["train"]), min(len(candidate), len(real["train"])),
                                              replace=False)
    out = []
    for name, x in (("training crops (baseline)", scale(real["train"][pick])), ("candidate", scale(candidate))):
        mean, cov = frechet_terms(x, held)
        out.append((name, mean + cov, mean, cov))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("cache", type=Path)
    parser.add_argument("--per-class", type=int, default=20, help="samples a class (default 20)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the run's)")
    parser.add_argument("--refit", action="store_true",
                        help="fit a cascade's residual banks and output curve again with the current code")
    parser.add_argument("--true-band", action="store_true",
                        help="score the held-out crops rebuilt from their own coarsest band, not samples")
    parser.add_argument("--real-features", type=Path, default=None, help="a .npz file that keeps the real features")
    parser.add_argument("--top", type=int, default=8, help="features listed (default 8)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    gen = Generator.load(args.run)
    cascade = gen.config.diffusion.cascade and not gen.is_gan
    if (args.refit or args.true_band) and not cascade:
        raise CTSynthError("--refit and --true-band need a wavelet cascade run", args.run, "leave them out")
    diffusion = dataclasses.replace(gen.config.diffusion, **{k: v for k, v in (("sample_steps", args.steps),
                                                                            ("guidance", args.guidance)) if v is not None})
    gen.config = dataclasses.replace(gen.config, diffusion=diffusion)
    if cascade:
        gen.unet.cfg = diffusion
    items, _, _ = plan_real(args.cache, seed=0, held_out_fraction=EvaluateOptions().held_out_fraction)
    if args.refit:
        from ctsynth.train import check_cache
        from ctsynth.train.diffusion import fit_after_training, training_images

        fit_after_training(gen.unet, gen.config, training_images(gen.config, args.cache,
                                                                  check_cache(args.cache, gen.config)["train"]))
    real = real_features(items, args.real_features)
    if args.true_band:
        volumes = [rebuild(gen, i.load(), gen.unet.levels, k, diffusion.sample_steps, calibrated=True)
                   for k, i in enumerate(i for i in items if i.group == "held_out")]
        what = f"{len(volumes)} held-out crops rebuilt from their own coarsest band"
    else:
        volumes = [v for k, label in enumerate(gen.config.data.labels)
                   for v in gen.sample(args.per_class, label, seed=10_000 * k, batch_size=min(10, args.per_class))]
        what = f"{len(volumes)} samples ({args.per_class} a class, seeds 0, 10000, ..)"
    candidate = radiomics(volumes)
    print(f"{what} against {len(real['held_out'])} held-out crops, radiomics standardised by "
          f"{len(real['train'])} training crops")
    print("| set | Frechet distance | mean term | covariance term |\n|---|---|---|---|")
    scale = standardiser(real["train"])
    for name, fd, mean, cov in rows(candidate, real, scale):
        print(f"| {name} | {fd:.1f} | {mean:.1f} | {cov:.1f} |")
    z, held = scale(candidate), scale(real["held_out"])
    spread = z.std(0) / np.maximum(held.std(0), 1e-12)
    print(f"spread against the held-out crops' (per feature, median): {np.median(spread):.2f}")
    print("| feature | mean (training sd) | held-out's | spread |\n|---|---|---|---|")
    for i in np.argsort(-np.abs(z.mean(0)))[:args.top]:
        print(f"| {FEATURE_NAMES[i]} | {z[:, i].mean():+.2f} | {held[:, i].mean():+.2f} | {spread[i]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``evaluate(real, synthetic, out)``: stream every volume once into a summary, then compute all metrics.

Reference and baseline, everywhere: the real **training** volumes are the reference; the real
**held-out** volumes (patients the generator never saw) are compared with it exactly as a synthetic set
is, which gives the real-vs-real baseline beside every number.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import wasserstein_distance

from ..errors import CTSynthError
from . import verdicts
from .anatomy import QUANTITIES, coarse_pixel_note
from .diversity import mean_pairwise_ms_ssim
from .features import VolumeSummary, summarise_volume, thumbnail_shape
from .fidelity import matched_scores, median_bandwidth, standardiser
from .inputs import DEFAULT_GRID, StudyItem, check_real_split, discover_items, plan_real, to_grid
from .memorisation import NearestNeighbourIndex, cosine_nearest, percentile_threshold

METRICS_FORMAT = "ctsynth-evaluation/1"


@dataclass
class EvaluateOptions:
    grid: tuple[int, int, int] | None = None  # None: the cache's shape, else DEFAULT_GRID
    seed: int = 0
    held_out_fraction: float = 0.2  # only for a raw data folder (a cache has its own split)
    encoder_steps: int = 300
    classifier_steps: int = 300
    encoder_weights: Path | None = None
    bootstrap: int = 1000
    max_pairs: int = 300
    draws: int = 10
    worst_pairs: int = 3


@dataclass
class Report:
    metrics: dict
    summaries: list[VolumeSummary] = field(repr=False, default_factory=list)
    out: Path | None = None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _set_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = Path(p).resolve().name or "synthetic"
        name, k = base, 2
        while name in names or name in ("train", "held_out"):
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def summarise_items(items: list[StudyItem], grid: tuple[int, int, int], external, progress: Callable[[str], None]
                    ) -> list[VolumeSummary]:
    shape = thumbnail_shape(grid)
    out = []
    start = time.perf_counter()
    for k, item in enumerate(items, 1):
        volume = to_grid(item.load(), grid)
        summary = summarise_volume(volume, study_id=item.id, group=item.group, patient=item.patient,
                                   thumb_shape=shape)
        if summary.label is None:
            summary.label = item.label
        if external is not None:
            summary.extra["external"] = external.features(volume.hu)
        out.append(summary)
        del volume
        if k % 10 == 0 or k == len(items):
            progress(f"  summarised {k}/{len(items)} volumes ({time.perf_counter() - start:.0f} s)")
    return out


def _anatomy(train: list[VolumeSummary], other: list[VolumeSummary], held: list[VolumeSummary]) -> dict:
    def column(group: list[VolumeSummary], key: str) -> np.ndarray:
        v = np.asarray([s.anatomy[key] for s in group], dtype=np.float64)
        return v[np.isfinite(v)]

    means = {}
    for name, group in (("train", train), ("held_out", held), ("synthetic", other)):
        means[name] = {key: float(np.mean(column(group, key))) if column(group, key).size else float("nan")
                       for key in QUANTITIES}
    wass = {}
    for key in QUANTITIES:
        t, h, s = column(train, key), column(held, key), column(other, key)
        ok = t.size and h.size and s.size
        wass[key] = {"synthetic": float(wasserstein_distance(s, t)) if ok else float("nan"),
                     "baseline": float(wasserstein_distance(h, t)) if ok else float("nan")}
    per_class: dict[str, dict[str, float]] = {}
    for name, group in (("real", train + held), ("synthetic", other)):
        for label in sorted({str(s.label) for s in group}):
            vals = np.asarray([s.anatomy["lesion_fraction"] for s in group if str(s.label) == label])
            vals = vals[np.isfinite(vals)]
            per_class.setdefault(label, {})[name] = float(np.mean(vals)) if vals.size else float("nan")
    return {"means": means, "wasserstein": wass, "lesion_fraction_by_class": per_class}


def _memorisation(train: list[VolumeSummary], held: list[VolumeSummary], other: list[VolumeSummary],
                  index: NearestNeighbourIndex, feats: dict[int, np.ndarray] | None, worst: int) -> dict:
    held_sims = np.asarray([index.nearest(s.memo)[0] for s in held])
    threshold = percentile_threshold(held_sims)
    rows = []
    for s in other:
        sim, best = index.nearest(s.memo)
        rows.append({"id": s.id, "nearest_train_id": train[best].id, "similarity": sim, "flagged": sim > threshold})
    rows.sort(key=lambda r: -r["similarity"])
    out = {"ncc": {"threshold": threshold, "held_out_max": float(held_sims.max()),
                   "held_out_fraction_above": float(np.mean(held_sims > threshold)),
                   "fraction_flagged": float(np.mean([r["flagged"] for r in rows])),
                   "n_flagged": int(sum(r["flagged"] for r in rows)), "worst": rows[:worst],
                   "per_volume": rows}}
    if feats is not None:
        train_f = np.stack([feats[id(s)] for s in train])
        centre = train_f.mean(axis=0)
        held_cos, _ = cosine_nearest(train_f, np.stack([feats[id(s)] for s in held]), centre)
        cos, best = cosine_nearest(train_f, np.stack([feats[id(s)] for s in other]), centre)
        thr = percentile_threshold(held_cos)
        out["encoder_cosine"] = {"threshold": thr, "held_out_fraction_above": float(np.mean(held_cos > thr)),
                                 "fraction_flagged": float(np.mean(cos > thr)), "n_flagged": int(np.sum(cos > thr)),
                                 "worst": [{"id": other[i].id, "nearest_train_id": train[int(best[i])].id,
                                            "similarity": float(cos[i])} for i in np.argsort(-cos)[:worst]]}
    return out


def evaluate(real: str | Path, synthetic: list[str | Path], out: str | Path | None = None, *,
             options: EvaluateOptions | None = None, overwrite: bool = False,
             progress: Callable[[str], None] = _stderr) -> Report:
    """Evaluate synthetic sets against a real set; write ``out/metrics.json`` and ``out/report.html``."""
    options = options or EvaluateOptions()
    real = Path(real)
    synthetic = [Path(p) for p in synthetic]
    if not synthetic:
        raise CTSynthError("no synthetic set given", None, "pass --synthetic DIR (a folder written by ctsynth generate)")
    if out is not None and Path(out).exists() and not overwrite:
        raise CTSynthError("the output already exists; nothing was written", out,
                           "remove it, choose another --out, or pass --overwrite")
    real_items, cache_grid, notes = plan_real(real, seed=options.seed, held_out_fraction=options.held_out_fraction)
    check_real_split(real_items, real)
    names = _set_names(synthetic)
    synth_items = {name: discover_items(path, name) for name, path in zip(names, synthetic)}
    for name, items in synth_items.items():
        if len(items) < 2:
            raise CTSynthError("a synthetic set needs at least 2 volumes", synthetic[names.index(name)],
                               "generate more samples (ctsynth generate RUN --n 50 ...)")
    grid = tuple(options.grid or cache_grid or DEFAULT_GRID)
    return evaluate_items(real_items, synth_items, out, grid=grid, options=options, notes=notes,
                          sources={"real": str(real), **{n: str(p) for n, p in zip(names, synthetic)}},
                          overwrite=overwrite, progress=progress)


def evaluate_items(real_items: list[StudyItem], synth_items: dict[str, list[StudyItem]], out: str | Path | None,
                   *, grid: tuple[int, int, int], options: EvaluateOptions | None = None,
                   notes: list[str] | None = None, sources: dict[str, str] | None = None, overwrite: bool = False,
                   progress: Callable[[str], None] = _stderr) -> Report:
    """The evaluation on already planned studies (each item loads its volume when asked; real items carry
    group "train" or "held_out", synthetic sets are keyed by name). :func:`evaluate` plans them from folders;
    benchmarks and notebooks can pass volumes made in memory."""
    options = options or EvaluateOptions()
    notes = list(notes or [])
    sources = sources or {}
    names = list(synth_items)
    t0 = time.perf_counter()
    grid = tuple(grid)
    external = None
    if options.encoder_weights:
        from .encoder import ExternalEncoder

        external = ExternalEncoder.load(options.encoder_weights)
    progress(f"evaluate: {len(real_items)} real, " + ", ".join(f"{len(v)} in {k}" for k, v in synth_items.items())
             + f"; grid {grid}")
    summaries = summarise_items(real_items, grid, external, progress)
    for items in synth_items.values():
        summaries += summarise_items(items, grid, external, progress)
    return evaluate_summaries(summaries, names, out, grid=grid, options=options, notes=notes, sources=sources,
                              external=external, overwrite=overwrite, progress=progress, started=t0)


def evaluate_summaries(summaries: list[VolumeSummary], names: list[str], out: str | Path | None, *,
                       grid: tuple[int, int, int], options: EvaluateOptions | None = None,
                       notes: list[str] | None = None, sources: dict[str, str] | None = None, external=None,
                       overwrite: bool = False, progress: Callable[[str], None] = _stderr,
                       started: float | None = None) -> Report:
    """Every metric from volume summaries (real ones in groups "train" and "held_out", synthetic ones in
    the groups ``names``): the part of the evaluation after each volume was read once. The quality benchmark
    summarises the real studies once and scores several synthetic sets against them."""
    options = options or EvaluateOptions()
    notes = list(notes or [])
    sources = sources or {}
    t0 = time.perf_counter() if started is None else started
    grid = tuple(grid)
    coarse = coarse_pixel_note([max(s.spacing_mm[1:]) for s in summaries])
    if coarse:
        notes.append(coarse)
    train = [s for s in summaries if s.group == "train"]
    held = [s for s in summaries if s.group == "held_out"]
    sets = {name: [s for s in summaries if s.group == name] for name in names}

    progress(f"evaluate: training the feature encoder on {len(train)} real volumes ({options.encoder_steps} steps)")
    from .encoder import TrainedEncoder

    encoder = TrainedEncoder.fit(np.stack([s.thumb for s in train]), steps=options.encoder_steps, seed=options.seed)
    enc = encoder.features(np.stack([s.thumb for s in summaries]))
    spaces: dict[str, dict[int, np.ndarray]] = {
        "radiomics": {id(s): s.radiomics for s in summaries},
        "encoder": {id(s): f for s, f in zip(summaries, enc)},
    }
    if external is not None:
        spaces["external"] = {id(s): s.extra["external"] for s in summaries}

    progress("evaluate: fidelity, diversity, anatomy, memorisation")
    index = NearestNeighbourIndex(np.stack([s.memo for s in train]), [s.id for s in train])
    real_diversity = mean_pairwise_ms_ssim(np.stack([s.thumb for s in train + held]), max_pairs=options.max_pairs,
                                           seed=options.seed)
    held_anat = _anatomy(train, held, held)
    results: dict[str, dict] = {}
    for name, group in sets.items():
        size = min(len(held), len(group))
        fidelity = {}
        for space, feats in spaces.items():
            scale = standardiser(np.stack([feats[id(s)] for s in train]))
            ref = scale(np.stack([feats[id(s)] for s in train]))
            bw = median_bandwidth(ref)
            cand = scale(np.stack([feats[id(s)] for s in group]))
            base = scale(np.stack([feats[id(s)] for s in held]))
            fidelity[space] = {
                "matched_size": size,
                "synthetic": matched_scores(ref, cand, size, draws=options.draws, seed=options.seed, bandwidth=bw),
                "baseline": matched_scores(ref, base, size, draws=options.draws, seed=options.seed, bandwidth=bw),
            }
        diversity = {"synthetic": mean_pairwise_ms_ssim(np.stack([s.thumb for s in group]),
                                                        max_pairs=options.max_pairs, seed=options.seed),
                     "real": real_diversity}
        anatomy = _anatomy(train, group, held)
        memo = _memorisation(train, held, group, index, spaces["encoder"], options.worst_pairs)
        results[name] = {"n": len(group), "fidelity": fidelity, "diversity": diversity, "anatomy": anatomy,
                         "memorisation": memo}

    from .utility import usefulness

    labelled = all(s.label for s in train + held)
    for name, group in sets.items():
        progress(f"evaluate: usefulness classifiers for {name} ({options.classifier_steps} steps each)")
        if not labelled:
            results[name]["utility"] = {"available": False, "reason": "real studies without labels"}
            continue
        results[name]["utility"] = usefulness(
            np.stack([s.thumb for s in train]), [str(s.label) for s in train],
            np.stack([s.thumb for s in held]), [str(s.label) for s in held],
            np.stack([s.thumb for s in group]), [str(s.label) for s in group],
            steps=options.classifier_steps, seed=options.seed, bootstrap=options.bootstrap)

    for name, r in results.items():
        rows = []
        for space, f in r["fidelity"].items():
            rows += verdicts.fidelity_rows(space, f["synthetic"], f["baseline"])
        rows.append(verdicts.diversity_row(r["diversity"]["synthetic"], r["diversity"]["real"]))
        rows += verdicts.anatomy_rows(r["anatomy"])
        rows += verdicts.memorisation_rows(r["memorisation"])
        rows += verdicts.utility_rows(r["utility"])
        r["verdicts"] = rows

    metrics = {
        "format": METRICS_FORMAT,
        "inputs": {"real": sources.get("real", "(in memory)"),
                   "synthetic": {n: sources.get(n, "(in memory)") for n in names},
                   "n_train": len(train), "n_held_out": len(held), "grid": list(grid),
                   "thumbnail": list(thumbnail_shape(grid)), "seed": options.seed,
                   "encoder_steps": options.encoder_steps, "classifier_steps": options.classifier_steps,
                   "external_encoder": external.name if external is not None else None, "notes": notes},
        "real_vs_real": {"anatomy_held_out": held_anat["means"]["synthetic"], "diversity": real_diversity},
        "sets": results,
        "volumes": [{"id": s.id, "group": s.group, "label": s.label, "anatomy": s.anatomy} for s in summaries],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report = Report(metrics=_jsonable(metrics), summaries=summaries)
    if out is not None:
        from .report import write_report

        report.out = write_report(report, Path(out), overwrite=overwrite)
    return report


def _jsonable(value):
    """Plain JSON types; NaN and infinity become null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if np.isfinite(v) else None
    return value

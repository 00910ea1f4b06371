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

from ..config import HELD_OUT_FRACTION
from ..errors import CTSynthError
from . import verdicts
from .anatomy import QUANTITIES, coarse_pixel_note
from .diversity import mean_pairwise_ms_ssim
from .features import VolumeSummary, summarise_volume, thumbnail_shape
from .fidelity import matched_scores, median_bandwidth, standardiser
from .inputs import DEFAULT_GRID, StudyItem, check_real_split, discover_items, plan_real, to_grid
from .memorisation import MemorisationAudit, cosine_nearest, percentile_threshold

METRICS_FORMAT = "ctsynth-evaluation/1"


@dataclass
class EvaluateOptions:
    grid: tuple[int, int, int] | None = None  # None: the cache's shape, else DEFAULT_GRID
    seed: int = 0
    held_out_fraction: float = HELD_OUT_FRACTION  # only for a raw data folder (a cache has its own split)
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


def _anatomy_means(group: list[VolumeSummary]) -> dict[str, float]:
    """Mean of every anatomy quantity over a group (NaN where no volume has it)."""
    out = {}
    for key in QUANTITIES:
        v = _column(group, key)
        out[key] = float(np.mean(v)) if v.size else float("nan")
    return out


def _column(group: list[VolumeSummary], key: str) -> np.ndarray:
    v = np.asarray([s.anatomy[key] for s in group], dtype=np.float64)
    return v[np.isfinite(v)]


def _anatomy(train: list[VolumeSummary], other: list[VolumeSummary], held: list[VolumeSummary]) -> dict:
    """A set's anatomy against the training reference, with the held-out baseline: group means, the
    Wasserstein distance of each quantity to the training set, and the lesion fraction per class."""
    means = {name: _anatomy_means(group) for name, group in (("train", train), ("held_out", held),
                                                              ("synthetic", other))}
    wass = {}
    for key in QUANTITIES:
        t, h, s = _column(train, key), _column(held, key), _column(other, key)
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


def _memorisation(train: list[VolumeSummary], other: list[VolumeSummary], audit: MemorisationAudit,
                  encoder: tuple[np.ndarray, np.ndarray, np.ndarray] | None, worst: int) -> dict:
    """Nearest training volume of every synthetic one, by descriptor NCC (the audit's threshold) and, with
    ``encoder = (train, held-out, synthetic)`` feature rows, by centred cosine with its own held-out threshold."""
    held_sims, threshold = audit.held_out_similarities, audit.threshold
    rows = []
    for s in other:
        r = audit.check_descriptor(s.memo)
        rows.append({"id": s.id, "nearest_train_id": r.nearest_id, "similarity": r.similarity, "flagged": r.flagged})
    rows.sort(key=lambda r: -r["similarity"])
    out = {"ncc": {"threshold": threshold, "held_out_max": float(held_sims.max()),
                   "held_out_fraction_above": float(np.mean(held_sims > threshold)),
                   "fraction_flagged": float(np.mean([r["flagged"] for r in rows])),
                   "n_flagged": int(sum(r["flagged"] for r in rows)), "worst": rows[:worst],
                   "per_volume": rows}}
    if encoder is not None:
        train_f, held_f, other_f = encoder
        centre = train_f.mean(axis=0)
        held_cos, _ = cosine_nearest(train_f, held_f, centre)
        cos, best = cosine_nearest(train_f, other_f, centre)
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
    summarises the real studies once and scores several synthetic sets against them.

    Steps: the feature spaces (one row per summary, by position), the memorisation audit and the real
    diversity, then per set its scores (:func:`score_set`), its usefulness classifiers and its verdict rows."""
    options = options or EvaluateOptions()
    notes = list(notes or [])
    sources = sources or {}
    t0 = time.perf_counter() if started is None else started
    grid = tuple(grid)
    coarse = coarse_pixel_note([max(s.spacing_mm[1:]) for s in summaries])
    if coarse:
        notes.append(coarse)
    groups = {name: [i for i, s in enumerate(summaries) if s.group == name] for name in ("train", "held_out", *names)}
    train = [summaries[i] for i in groups["train"]]
    held = [summaries[i] for i in groups["held_out"]]

    spaces = feature_spaces(summaries, groups["train"], options, external, progress)
    progress("evaluate: fidelity, diversity, anatomy, memorisation")
    audit = MemorisationAudit.from_descriptors(np.stack([s.memo for s in train]), [s.id for s in train],
                                               np.stack([s.memo for s in held]), grid)
    real_diversity = mean_pairwise_ms_ssim(np.stack([s.thumb for s in train + held]), max_pairs=options.max_pairs,
                                           seed=options.seed)
    results = {name: score_set(summaries, spaces, groups, name, audit, real_diversity, options) for name in names}

    from .utility import usefulness

    labelled = all(s.label for s in train + held)
    for name in names:
        progress(f"evaluate: usefulness classifiers for {name} ({options.classifier_steps} steps each)")
        if not labelled:
            results[name]["utility"] = {"available": False, "reason": "real studies without labels"}
            continue
        group = [summaries[i] for i in groups[name]]
        results[name]["utility"] = usefulness(
            np.stack([s.thumb for s in train]), [str(s.label) for s in train],
            np.stack([s.thumb for s in held]), [str(s.label) for s in held],
            np.stack([s.thumb for s in group]), [str(s.label) for s in group],
            steps=options.classifier_steps, seed=options.seed, bootstrap=options.bootstrap)
    for r in results.values():
        r["verdicts"] = verdict_rows(r)

    metrics = {
        "format": METRICS_FORMAT,
        "inputs": {"real": sources.get("real", "(in memory)"),
                   "synthetic": {n: sources.get(n, "(in memory)") for n in names},
                   "n_train": len(train), "n_held_out": len(held), "grid": list(grid),
                   "thumbnail": list(thumbnail_shape(grid)), "seed": options.seed,
                   "encoder_steps": options.encoder_steps, "classifier_steps": options.classifier_steps,
                   "external_encoder": external.name if external is not None else None, "notes": notes},
        "real_vs_real": {"anatomy_held_out": _anatomy_means(held), "diversity": real_diversity},
        "sets": results,
        "volumes": [{"id": s.id, "group": s.group, "label": s.label, "anatomy": s.anatomy} for s in summaries],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report = Report(metrics=_jsonable(metrics), summaries=summaries)
    if out is not None:
        from .report import write_report

        report.out = write_report(report, Path(out), overwrite=overwrite)
    return report


def feature_spaces(summaries: list[VolumeSummary], train: list[int], options: EvaluateOptions, external,
                   progress: Callable[[str], None]) -> dict[str, np.ndarray]:
    """``{space: (len(summaries), d) features}``, row ``i`` for ``summaries[i]``: radiomics, the encoder
    trained here on the training thumbnails (rows ``train``), and the external encoder when given."""
    progress(f"evaluate: training the feature encoder on {len(train)} real volumes ({options.encoder_steps} steps)")
    from .encoder import TrainedEncoder

    encoder = TrainedEncoder.fit(np.stack([summaries[i].thumb for i in train]), steps=options.encoder_steps,
                                 seed=options.seed)
    spaces = {"radiomics": np.stack([s.radiomics for s in summaries]),
              "encoder": encoder.features(np.stack([s.thumb for s in summaries]))}
    if external is not None:
        spaces["external"] = np.stack([s.extra["external"] for s in summaries])
    return spaces


def score_set(summaries: list[VolumeSummary], spaces: dict[str, np.ndarray], groups: dict[str, list[int]],
              name: str, audit: MemorisationAudit, real_diversity: float, options: EvaluateOptions) -> dict:
    """Fidelity in every feature space (the set and the held-out baseline against the training reference,
    at matched size), diversity, anatomy and memorisation of the set ``groups[name]``."""
    train_i, held_i, set_i = groups["train"], groups["held_out"], groups[name]
    train, held, group = ([summaries[i] for i in idx] for idx in (train_i, held_i, set_i))
    size = min(len(held_i), len(set_i))
    fidelity = {}
    for space, feats in spaces.items():
        scale = standardiser(feats[train_i])
        ref = scale(feats[train_i])
        bw = median_bandwidth(ref)
        fidelity[space] = {
            "matched_size": size,
            "synthetic": matched_scores(ref, scale(feats[set_i]), size, draws=options.draws, seed=options.seed,
                                        bandwidth=bw),
            "baseline": matched_scores(ref, scale(feats[held_i]), size, draws=options.draws, seed=options.seed,
                                       bandwidth=bw),
        }
    diversity = {"synthetic": mean_pairwise_ms_ssim(np.stack([s.thumb for s in group]), max_pairs=options.max_pairs,
                                                    seed=options.seed),
                 "real": real_diversity}
    enc = spaces["encoder"]
    memo = _memorisation(train, group, audit, (enc[train_i], enc[held_i], enc[set_i]), options.worst_pairs)
    return {"n": len(group), "fidelity": fidelity, "diversity": diversity, "anatomy": _anatomy(train, group, held),
            "memorisation": memo}


def verdict_rows(result: dict) -> list:
    """The pass / fail rows of one set's scores (:mod:`.verdicts`), in the report's order."""
    rows = []
    for space, f in result["fidelity"].items():
        rows += verdicts.fidelity_rows(space, f["synthetic"], f["baseline"])
    rows.append(verdicts.diversity_row(result["diversity"]["synthetic"], result["diversity"]["real"]))
    rows += verdicts.anatomy_rows(result["anatomy"])
    rows += verdicts.memorisation_rows(result["memorisation"])
    rows += verdicts.utility_rows(result["utility"])
    return rows


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

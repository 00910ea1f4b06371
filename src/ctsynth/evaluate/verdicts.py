"""Plain verdicts: each metric against its target (docs/ARCHITECTURE.md "What good looks like") or, where
the design sets none, against the real-vs-real baseline with a rule stated here and in docs/evaluation.md.

Each verdict row: ``metric``, ``value``, ``baseline`` (real train vs real held-out, the same computation),
``target`` (the rule in words), ``verdict`` ("pass", "fail" or "n/a") and ``note``.
"""

from __future__ import annotations

import math
from typing import Any

FD_FACTOR = 2.0  # Frechet distance <= 2x the baseline (ARCHITECTURE target); MMD uses the same rule
PRDC_FACTOR = 0.75  # precision/recall/density/coverage >= 0.75x the baseline (our rule)
MEMORISATION_MAX = 0.01  # <= 1% flagged (ARCHITECTURE target)
LUNG_HU_TOL = 30.0  # median lung HU within 30 HU of real (ARCHITECTURE target)
TISSUE_REL_TOL = 0.20  # tissue fractions within 20% (relative, ARCHITECTURE target)
TISSUE_ABS_FLOOR = 0.01  # ... or within 1 percentage point for rare classes
WASSERSTEIN_FACTOR = 2.0  # other anatomy quantities: W1 <= 2x the baseline (our rule)
TSTR_FACTOR = 0.95  # synthetic-only AUC >= 0.95x real-only AUC (ARCHITECTURE target)
CONSISTENCY_MARGIN = 0.10  # class consistency >= real held-out accuracy - 0.10 (our rule)


def _row(metric: str, value: Any, baseline: Any, target: str, ok: bool | None, note: str = "") -> dict:
    bad = value is None or (isinstance(value, float) and math.isnan(value))
    verdict = "n/a" if ok is None or bad else ("pass" if ok else "fail")
    return {"metric": metric, "value": value, "baseline": baseline, "target": target, "verdict": verdict,
            "note": note}


def fidelity_rows(space: str, scores: dict, baseline: dict) -> list[dict]:
    rows = []
    for key, label in (("frechet_distance", "Frechet distance"), ("mmd", "MMD (RBF)")):
        v, b = scores[key], baseline[key]
        rows.append(_row(f"{label} [{space}]", v, b, f"<= {FD_FACTOR:g}x baseline",
                         v <= FD_FACTOR * b))
    for key in ("precision", "recall", "density", "coverage"):
        v, b = scores[key], baseline[key]
        rows.append(_row(f"{key} [{space}]", v, b, f">= {PRDC_FACTOR:g}x baseline", v >= PRDC_FACTOR * b))
    return rows


def diversity_row(synthetic: float, real: float) -> dict:
    ok = (1.0 - synthetic) >= 0.5 * (1.0 - real)
    return _row("mean pairwise MS-SSIM (lower = more diverse)", synthetic, real,
                "1 - value >= half of the real set's 1 - value", ok,
                "" if ok else "synthetic volumes are much more alike than real ones (mode collapse?)")


def anatomy_rows(anatomy: dict) -> list[dict]:
    rows = []
    means = anatomy["means"]
    real, synth = means["train"], means["synthetic"]
    diff = abs(synth["median_hu_lung_mask"] - real["median_hu_lung_mask"])
    held_diff = abs(means["held_out"]["median_hu_lung_mask"] - real["median_hu_lung_mask"])
    rows.append(_row("median lung HU difference", diff, held_diff, f"<= {LUNG_HU_TOL:g} HU", diff <= LUNG_HU_TOL))
    for name in ("air", "lung", "fat", "soft_tissue", "bone"):
        key = f"fraction_{name}"
        r, s, h = real[key], synth[key], means["held_out"][key]
        tol = max(TISSUE_REL_TOL * r, TISSUE_ABS_FLOOR)
        target = f"within 20% (at least {TISSUE_ABS_FLOOR:g}) of real train ({r:.3f})"  # the floor, shown
        rows.append(_row(f"tissue fraction {name}", s, h, target, abs(s - r) <= tol))
    for key in ("lung_volume_ml", "left_lung_share", "lesion_fraction"):
        w = anatomy["wasserstein"][key]
        rows.append(_row(f"Wasserstein {key}", w["synthetic"], w["baseline"], f"<= {WASSERSTEIN_FACTOR:g}x baseline",
                         w["synthetic"] <= WASSERSTEIN_FACTOR * w["baseline"] + 1e-9))
    return rows


def memorisation_rows(memo: dict) -> list[dict]:
    rows = []
    for key, label in (("ncc", "memorised fraction (NCC)"), ("encoder_cosine", "memorised fraction (encoder)")):
        if key not in memo:
            continue
        m = memo[key]
        rows.append(_row(label, m["fraction_flagged"], m["held_out_fraction_above"],
                         f"<= {MEMORISATION_MAX:.0%} above threshold {m['threshold']:.4f}",
                         m["fraction_flagged"] <= MEMORISATION_MAX))
    return rows


def utility_rows(util: dict) -> list[dict]:
    if not util.get("available"):
        return [_row("usefulness (TSTR AUC)", None, None, "needs labels", None, util.get("reason", ""))]
    real = util["auc_real"]["auc"]
    low = util["auc_real"]["ci95"][0]
    # Without a real-trained classifier that beats chance there is nothing to compare with.
    judgeable = low is not None and not math.isnan(low) and low > 0.5
    weak = "" if judgeable else ("the real-trained classifier is not better than chance (AUC interval reaches "
                                 "0.5): more real data, more --classifier-steps, or a task the thumbnails show")
    rows = []
    if "auc_synthetic" in util:
        s = util["auc_synthetic"]["auc"]
        rows.append(_row("AUC trained on synthetic (TSTR)", s, real, f">= {TSTR_FACTOR:g}x real-trained AUC",
                         s >= TSTR_FACTOR * real if judgeable else None, weak))
        rs = util["auc_real_plus_synthetic"]["auc"]
        # a real-trained AUC of 1 cannot be beaten, only matched
        rows.append(_row("AUC trained on real + synthetic", rs, real, "> real-trained AUC (or both 1)",
                         (rs > real or rs >= real >= 1.0) if judgeable else None, weak))
    else:
        rows.append(_row("AUC trained on synthetic (TSTR)", None, real, "needs both classes", None,
                         util.get("reason_synthetic", "")))
    if "class_consistency" in util:
        c, a = util["class_consistency"], util["real_accuracy_held_out"]
        rows.append(_row("class consistency", c, a, f">= real held-out accuracy - {CONSISTENCY_MARGIN:g}",
                         c >= a - CONSISTENCY_MARGIN if judgeable else None, weak))
    return rows

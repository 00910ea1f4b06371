"""`ctsynth evaluate`: fidelity, diversity, anatomy, memorisation and usefulness of synthetic CT, as a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import HELD_OUT_FRACTION


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.lower().replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 12:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X with each at least 12 (e.g. 32,96,128), got {text!r}")
    return parts  # type: ignore[return-value]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="compare synthetic CT with real CT: metrics.json + report.html",
        description="Compare one or more synthetic sets with a real set (a prepared cache or a data folder). "
                    "Writes OUT/metrics.json and a self-contained OUT/report.html and prints a summary.")
    p.add_argument("--real", required=True, type=Path, metavar="DATA_OR_PREP",
                   help="prepared cache (uses its train/held-out split) or a folder of real studies")
    p.add_argument("--synthetic", required=True, action="append", type=Path, metavar="DIR",
                   help="folder written by `ctsynth generate` (repeat for several sets)")
    p.add_argument("--out", required=True, type=Path, metavar="REPORT", help="output folder")
    p.add_argument("--grid", type=_shape, default=None, metavar="Z,Y,X",
                   help="evaluation grid every volume is resampled to (default: the cache's shape, else 32,96,128)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, encoder, classifiers, bootstraps")
    p.add_argument("--held-out-fraction", type=float, default=HELD_OUT_FRACTION,
                   help=f"share of patients held out when --real is a data folder (default {HELD_OUT_FRACTION})")
    p.add_argument("--encoder-steps", type=int, default=300, help="training steps of the feature encoder")
    p.add_argument("--classifier-steps", type=int, default=300, help="training steps of each usefulness classifier")
    p.add_argument("--encoder-weights", type=Path, default=None, metavar="FILE",
                   help="optional .safetensors of a 3D ResNet (e.g. MedicalNet) used as an extra feature space")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUC intervals")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def summary_lines(metrics: dict) -> list[str]:
    lines = []
    for name, result in metrics["sets"].items():
        rows = result["verdicts"]
        n_pass = sum(r["verdict"] == "pass" for r in rows)
        n_fail = sum(r["verdict"] == "fail" for r in rows)
        lines.append(f"{name}: {result['n']} volumes, {n_pass} pass, {n_fail} fail, "
                     f"{len(rows) - n_pass - n_fail} n/a")
        for r in rows:
            value = "-" if r["value"] is None else f"{r['value']:.4g}"
            base = "-" if r["baseline"] is None else f"{r['baseline']:.4g}"
            lines.append(f"  {r['verdict']:>4}  {r['metric']}: {value} (baseline {base}; {r['target']})")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..errors import CTSynthError
    from ..evaluate import EvaluateOptions, evaluate

    if not 0.0 < args.held_out_fraction < 1.0:
        raise CTSynthError(f"--held-out-fraction must be between 0 and 1, got {args.held_out_fraction}",
                           None, "use e.g. 0.2")
    options = EvaluateOptions(grid=args.grid, seed=args.seed, held_out_fraction=args.held_out_fraction,
                              encoder_steps=args.encoder_steps, classifier_steps=args.classifier_steps,
                              encoder_weights=args.encoder_weights, bootstrap=args.bootstrap)
    report = evaluate(args.real, args.synthetic, args.out, options=options, overwrite=args.overwrite)
    for line in summary_lines(report.metrics):
        print(line)
    print(f"report: {args.out / 'report.html'}")
    print(f"metrics: {args.out / 'metrics.json'}", file=sys.stdout)
    return 0

"""The SR table of docs/seed-systems.md, end to end: PSNR / SSIM of the super-resolution networks against
trilinear and cubic interpolation on held-out volumes, at in-plane x2 and x4 and depth x2 and x4, and the
time of `ctsynth upscale` per 48 x 512 x 512 volume.

    python benchmarks/bench_sr.py --out /tmp/srbench --budget-min 10 --jobs 2

1. a phantom cohort (`ctsynth phantom`, `--n` cases at `--size` pixels) prepared whole (mode full) at
   `--shape` (default 48 x 256 x 256; 20% of the patients held out);
2. two sr runs, each with the `sr` preset's network (32 channels, 16 x 64 x 64 patches, lr 1e-4) at batch
   `--batch` and `train.time_budget_min = --budget-min` per network: in-plane x4 + depth x2, and in-plane
   x2 + depth x4 (`--jobs 2` trains both at once); each network's metrics.json holds the whole-volume
   PSNR / SSIM of the network, trilinear and cubic B-spline on every held-out volume (up to 8);
3. benchmarks/bench_upscale.py: 48 x 128 x 128 -> 48 x 512 x 512 (in-plane x4), and 24 x 128 x 128 ->
   48 x 512 x 512 (both networks), with `uptime` before and after.

Every step whose output is already in OUT is skipped (so a rerun only prints the table). Commands run with
`nice -n 19` and one torch thread. Prints a markdown table and writes OUT/sr-table.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RUNS = {"run-in4-d2": (4, 2), "run-in2-d4": (2, 4)}
HERE = Path(__file__).resolve().parent


def sh(args: list[str], log: Path | None = None, wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print("$", " ".join(args), flush=True)
    out = open(log, "w") if log else None
    proc = subprocess.Popen(["nice", "-n", "19", *args], env=env, stdout=out or subprocess.PIPE,
                            stderr=subprocess.STDOUT if out else None, text=True)
    if not wait:
        return proc
    text, _ = proc.communicate()
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}" + (f", see {log}" if log else ""))
    return text


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def sr_yaml(shape: list[int], inplane: int, depth: int, batch: int, budget: float) -> str:
    return (f"model: sr\ndata:\n  mode: full\n  shape: {shape}\n"
            f"sr:\n  inplane_factor: {inplane}\n  depth_factor: {depth}\n  channels: 32\n  patch: [16, 64, 64]\n"
            f"  batch_size: {batch}\n  lr: 0.0001\n  steps: 20000\n  eval_studies: 8\n"
            f"train:\n  precision: \"32\"\n  checkpoint_every: 100000\n  keep_last: 1\n  log_every: 10\n"
            f"  num_workers: 0\n  time_budget_min: {budget}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=40, help="phantom cases (default 40)")
    parser.add_argument("--size", type=int, default=256, help="phantom in-plane pixels (default 256)")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 256, 256])
    parser.add_argument("--budget-min", type=float, default=10.0, help="training minutes per network")
    parser.add_argument("--batch", type=int, default=2,
                        help="patches a step (default 2; the preset's 8 takes about 5x longer a step on one thread)")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="train the two runs at once")
    parser.add_argument("--skip-upscale", action="store_true", help="no bench_upscale.py timings")
    args = parser.parse_args()
    out, ctsynth = args.out, [sys.executable, "-m", "ctsynth"]
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "phantoms" / "labels.csv").is_file():
        sh([*ctsynth, "phantom", str(out / "phantoms"), "--n", str(args.n), "--size", str(args.size)])
    (out / "data.yaml").write_text(f"model: sr\ndata:\n  mode: full\n  shape: {args.shape}\n")
    if not (out / "prep" / "manifest.json").is_file():
        sh([*ctsynth, "prepare", str(out / "phantoms"), "--config", str(out / "data.yaml"), "--out",
            str(out / "prep"), "--quiet"])
    report: dict = {"uptime_before_training": uptime()}
    procs = []
    for name, (inplane, depth) in RUNS.items():
        if (out / name / "sr_depth" / "done.json").is_file():
            continue
        (out / f"{name}.yaml").write_text(sr_yaml(args.shape, inplane, depth, args.batch, args.budget_min))
        procs.append(sh([*ctsynth, "train", str(out / "prep"), "--config", str(out / f"{name}.yaml"), "--out",
                         str(out / name)], log=out / f"{name}.log", wait=False))
        if args.jobs == 1:
            procs[-1].wait()
    for proc in procs:
        if proc.wait():
            sys.exit(f"training failed, see {out}/*.log")
    report["uptime_after_training"] = uptime()
    rows = []
    for name in RUNS:
        for stage in ("sr_inplane", "sr_depth"):
            m = json.loads((out / name / stage / "metrics.json").read_text())
            done = json.loads((out / name / stage / "done.json").read_text())
            rows.append({"axis": m["axis"], "factor": m["factor"], "run": name, "steps": done["step"],
                         "minutes": round(done["train_seconds"] / 60, 1), "held_out": m["n_studies"],
                         **{k: round(m[k], 4) for k in m if k.endswith(("_psnr_db", "_ssim"))}})
    rows.sort(key=lambda r: (r["axis"] != "inplane", r["factor"]))
    report["rows"] = rows
    if not args.skip_upscale:
        report["upscale"] = []
        for extra in ([], ["--depth", "24", "--depth-factor", "2"]):
            before = uptime()
            line = sh([sys.executable, str(HERE / "bench_upscale.py"), *extra]).strip().splitlines()[-1]
            report["upscale"].append({**json.loads(line), "uptime_before": before, "uptime_after": uptime()})
    (out / "sr-table.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n| factor | network PSNR / SSIM | trilinear PSNR / SSIM | cubic PSNR / SSIM | steps | minutes | held-out |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['axis']} x{r['factor']} | {r['sr_psnr_db']:.2f} / {r['sr_ssim']:.4f} | "
              f"{r['trilinear_psnr_db']:.2f} / {r['trilinear_ssim']:.4f} | {r['cubic_psnr_db']:.2f} / "
              f"{r['cubic_ssim']:.4f} | {r['steps']} | {r['minutes']} | {r['held_out']} |")
    x4 = next(r for r in rows if r["axis"] == "inplane" and r["factor"] == 4)
    gain = x4["sr_psnr_db"] - x4["trilinear_psnr_db"]
    print(f"\nin-plane x4: the network {'beats' if gain >= 1 else 'does NOT beat'} trilinear by >= 1 dB "
          f"({gain:+.2f} dB)")
    for u in report.get("upscale", []):
        print(f"upscale {u['in']} -> {u['out']}: {u['seconds']} s, peak {u['peak_mb']} MB ({u['memory']}), "
              f"load before: {u['uptime_before'].split('load average:')[-1].strip()}")


if __name__ == "__main__":
    main()

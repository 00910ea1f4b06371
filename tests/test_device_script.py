"""benchmarks/device/run.sh, the GPU readiness script: its --dry-run runs the whole flow on a CPU (the tiny
preset, with the GPU presets' stage 1, instead of lung/full; bench_quality.py --smoke), so the script cannot
rot between GPU runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device" / "run.sh"


def test_device_script_usage():
    bad = subprocess.run(["bash", str(SCRIPT), "--no-such-flag"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "unknown argument '--no-such-flag'" in bad.stderr
    usage = subprocess.run(["bash", str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "--fetch-wheels" in usage.stdout and "--dry-run" in usage.stdout


@pytest.mark.skipif(not (ROOT / "benchmarks" / "bench_quality.py").is_file(),
                    reason="benchmarks/bench_quality.py does not exist yet, and run.sh --dry-run runs it (--smoke)")
def test_device_script_dry_run(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), WORK_DIR=str(tmp_path / "work"), PYTHON=sys.executable)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=660)
    log = (out / "device-run.log").read_text()
    tail = log[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "ctsynth device run, mode dry" in log
    for step in ("setup", "prepare", "sampling", r"train-tiny\S*", "quality"):
        assert re.search(rf"^== {step}: ok in \d+ s$", log, re.M), f"step {step} did not pass:\n{tail}"
    # bench_train: steps/s (stage 2; stage 1 has none with the Haar transform) and peak memory per stage,
    # seconds per sampled volume
    assert re.search(r"^stage 1 autoencoder: .*peak \d+ MB$", log, re.M), tail
    assert re.search(r"^stage 2 diffusion: +\d+\.\d+ steps/s, peak \d+ MB$", log, re.M), tail
    assert re.search(r"^sampling: +\d+\.\d+ s/volume at \d+ steps, peak \d+ MB$", log, re.M), tail
    # sample_memory.py: one volume at each precision, time and peak memory
    for precision in ("32", "bf16-mixed"):
        assert re.search(rf"^sampling 16x32x48 \(tiny\S*, {precision}\): \d+\.\d+ s/volume .* peak \d+ MB", log,
                         re.M), tail
    assert "goal 48x512x512 <= 1 s and <= 8192 MB: not checked" in log
    assert "== summary" in log

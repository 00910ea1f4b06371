"""Generation: per-sample seeds, batch/rank independence, int16 HU outputs with spacing, sidecars, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ctsynth.cli import main
from ctsynth.config import load_config
from ctsynth.generate import Generator
from ctsynth.models.diffusion import build_scheduler, build_unet, sample_latents
from train_fixtures import SPACING


@pytest.fixture
def run_dir(tiny_run) -> Path:
    return tiny_run[1]


def test_same_seed_same_volume_whatever_the_batch_size(run_dir):
    gen = Generator.load(run_dir)
    one = gen.sample(4, "covid", seed=7, batch_size=1)
    four = gen.sample(4, "covid", seed=7, batch_size=4)
    for a, b in zip(one, four):
        assert a.shape == (16, 32, 48) and a.spacing_mm == SPACING and a.label == "covid"
        # identical up to float summation order inside batched convolutions (thousandths of a HU)
        assert np.abs(a.hu - b.hu).max() < 0.05
    # sample i is the sample of seed + i: the same alone as inside a request
    third = gen.sample(1, "covid", seed=9)[0]
    assert np.array_equal(third.hu, one[2].hu)
    assert np.abs(one[0].hu - one[1].hu).mean() > 10  # different seeds, different volumes
    normal = gen.sample(1, "normal", seed=7)[0]
    assert not np.array_equal(normal.hu, one[0].hu)


def test_ddim_is_deterministic_and_per_sample_with_eta():
    cfg = load_config("tiny").diffusion
    cfg.scheduler, cfg.ddim_eta = "ddim", 0.5
    torch.manual_seed(0)
    unet = build_unet(cfg, 2, 2).eval()
    scheduler = build_scheduler(cfg)
    noise = torch.randn(3, 2, 4, 8, 12)
    labels = torch.tensor([0, 1, 0])

    def run(idx: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(100 + i) for i in idx]
        return sample_latents(unet, scheduler, noise[idx], labels[idx], 2, 2.0, 5, (4, 8, 12), eta=0.5,
                              generators=gens)

    together, alone = run([0, 1, 2]), run([1])
    assert torch.allclose(together[1:2], alone, atol=1e-5)
    assert torch.equal(run([0, 1, 2]), together)


def test_cli_writes_int16_hu_with_spacing_and_sidecars_and_skips_done(run_dir, tmp_path, capsys):
    out = tmp_path / "syn"
    code = main(["generate", str(run_dir), "--n", "2", "--label", "normal", "--seed", "3", "--steps", "3",
                 "--depth", "24", "--out", str(out), "--accelerator", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 2 and summary["skipped"] == 0
    for i in range(2):
        image = sitk.ReadImage(str(out / f"normal_{i:05d}.nii.gz"))
        array = sitk.GetArrayFromImage(image)
        assert array.dtype == np.int16 and array.shape == (24, 32, 48)
        # 16 slices of 5 mm resampled to 24 slices keep the 80 mm extent
        assert image.GetSpacing() == pytest.approx((1.25, 1.25, 80 / 24))
        assert -1024 <= array.min() and array.max() <= 1500 and array.std() > 10
        side = json.loads((out / f"normal_{i:05d}.json").read_text())
        assert side["seed"] == 3 + i and side["label"] == "normal" and side["steps"] == 3
        assert side["scheduler"] == "rflow" and side["guidance"] == 2.0 and side["config_hash"]
        assert side["file"] == f"normal_{i:05d}.nii.gz" and side["shape_zyx"] == [24, 32, 48]
    before = (out / "normal_00000.nii.gz").stat().st_mtime_ns
    assert main(["generate", str(run_dir), "--n", "3", "--label", "normal", "--seed", "3", "--steps", "3",
                 "--depth", "24", "--out", str(out), "--accelerator", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 1 and summary["skipped"] == 2
    assert (out / "normal_00000.nii.gz").stat().st_mtime_ns == before


class _FlagOdd:
    """An audit that flags odd-numbered samples (the real audit is ctsynth.evaluate's, tested there)."""

    def __init__(self) -> None:
        self.calls = 0

    def check(self, volume):
        from ctsynth.evaluate.memorisation import AuditResult
        self.calls += 1
        return AuditResult(similarity=0.99, nearest_id="case_0001", threshold=0.9, flagged=self.calls % 2 == 0)


def test_audit_refuses_to_write_flagged_samples(run_dir, tiny_run, tmp_path, capsys):
    from ctsynth.generate import generate_to_folder

    report = generate_to_folder(Generator.load(run_dir), tmp_path / "a", 3, "covid", steps=2, audit=_FlagOdd())
    assert report["written"] == [0, 2] and [f["index"] for f in report["flagged"]] == [1]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "covid_00000.json", "covid_00000.nii.gz", "covid_00002.json", "covid_00002.nii.gz"]
    assert json.loads((tmp_path / "a" / "covid_00000.json").read_text())["audit"]["nearest_id"] == "case_0001"
    # the real audit against the training cache, through the CLI
    prep = tiny_run[0]
    assert main(["generate", str(run_dir), "--n", "1", "--label", "covid", "--steps", "2", "--audit", str(prep),
                 "--out", str(tmp_path / "b"), "--accelerator", "cpu"]) == 0
    audit = json.loads((tmp_path / "b" / "covid_00000.json").read_text())["audit"]
    assert 0 < audit["threshold"] <= 1 and audit["nearest_id"].startswith("case_")


def test_two_ranks_write_the_same_volumes_as_one(run_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = {}
    for devices in ("1", "2"):
        outs[devices] = tmp_path / f"out{devices}"
        proc = subprocess.run([sys.executable, "-m", "ctsynth", "generate", str(run_dir), "--n", "3", "--label", "covid",
                               "--steps", "3", "--out", str(outs[devices]), "--accelerator", "cpu",
                               "--devices", devices, "--strategy", "ddp" if devices == "2" else "auto"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["written"] == 3
    for i in range(3):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(outs["1"] / f"covid_{i:05d}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(outs["2"] / f"covid_{i:05d}.nii.gz")))
        assert np.array_equal(a, b), i


def test_bad_inputs_are_one_line_errors_and_write_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "syn"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def fails(args: list[str], needle: str) -> None:
        assert main(["generate", *args, "--n", "1", "--out", str(out), "--accelerator", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    fails([str(run_dir), "--label", "influenza"], "knows the labels normal, covid")
    fails([str(tmp_path / "nope"), "--label", "covid"], "run folder not found")
    fails([str(run_dir), "--label", "covid", "--strategy", "fsdp"], "fsdp is not supported")

    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(run_dir, broken)
    weights = broken / "diffusion" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    fails([str(broken), "--label", "covid"], "damaged")
    weights.unlink()
    fails([str(broken), "--label", "covid"], "missing or damaged")
    (broken / "diffusion" / "done.json").unlink()
    fails([str(broken), "--label", "covid"], "done.json is missing")

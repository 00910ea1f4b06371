"""`ctsynth estimate`: the projection's arithmetic on constructed logs, and a tiny config's estimate end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ctsynth.cli import main
from ctsynth.config import load_config
from ctsynth.estimate import StageMeasure, knob_variants, project, seconds_per_step
from ctsynth.train import honours_time_budget
from train_fixtures import make_tiny_cache


def write_log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seconds_per_step_leaves_out_the_warmup_and_skipped_steps(tmp_path):
    # 3 s for the first step (warm-up), then 0.5 s a step; a skipped step and a resume event in between
    rows = [{"event": "resume"}, {"step": 1, "time_s": 3.0}, {"step": 2, "time_s": 3.5}, {"step": 2, "skipped": "nan"},
            {"step": 3, "time_s": 4.0}, {"step": 4, "time_s": 4.5}, {"step": 5, "time_s": 5.0}]
    log = write_log(tmp_path / "log.jsonl", rows)
    assert seconds_per_step(log, warmup=1) == pytest.approx(0.5)
    assert seconds_per_step(log, warmup=0) == pytest.approx(0.5)  # from step 1's end: the warm-up is step 1 itself
    assert seconds_per_step(write_log(tmp_path / "one.jsonl", rows[:2]), warmup=0) is None


def test_the_projection_of_a_schedule_and_an_epoch():
    """tiny: autoencoder 16 steps of batch 2, diffusion 16 steps of batch 2. At 0.5 and 0.25 s a step, with
    2 devices and accumulation 3, a step takes 2 x 3 x 2 = 12 samples: an epoch of 30 cases is 3 steps."""
    config = load_config("tiny")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, grad_accum=3))
    measured = {"autoencoder": StageMeasure("autoencoder", 0.5, 100.0, 2, 3),
                "diffusion": StageMeasure("diffusion", 0.25, 50.0, 2, 3)}
    report = project(config, measured, cases=30, devices=2)
    ae, dm = report["stages"]
    assert (ae["schedule_s"], ae["samples_per_step"], ae["steps_per_epoch"], ae["epoch_s"]) == (8.0, 12, 3, 1.5)
    assert (dm["schedule_s"], dm["epoch_s"]) == (4.0, 0.75)
    assert report["schedule_s"] == 12.0 and report["epoch_s"] == 2.25
    assert ae["epochs_in_schedule"] == pytest.approx(16 * 12 / 30)
    # a diffusion time budget caps its schedule: 0.05 min = 3 s < 16 x 0.25 s
    capped = dataclasses.replace(config, train=dataclasses.replace(config.train, time_budget_min=0.05))
    assert project(capped, measured, cases=30, devices=2)["stages"][1]["schedule_s"] == pytest.approx(3.0)
    # so does it each super-resolution network's (the budget is per network), and not the autoencoder's
    sr = dataclasses.replace(load_config("sr-tiny"), train=dataclasses.replace(config.train, time_budget_min=0.05))
    sr_measured = {name: StageMeasure(name, 1.0, 10.0, 2, 1) for name in ("sr_inplane", "sr_depth")}
    assert [r["schedule_s"] for r in project(sr, sr_measured, cases=30)["stages"]] == [3.0, 3.0]
    # and the GAN's (its stage honours the budget too)
    gan = dataclasses.replace(load_config("gan-tiny"), train=dataclasses.replace(config.train, time_budget_min=0.05))
    assert project(gan, {"gan": StageMeasure("gan", 1.0, 10.0, 4, 1)}, cases=30)["stages"][0]["schedule_s"] == 3.0
    assert project(capped, measured, cases=30, devices=2)["stages"][0]["schedule_s"] == 8.0
    # a stage with nothing to train (the Haar autoencoder) costs nothing
    none = {"autoencoder": StageMeasure("autoencoder", None, None, 2, 1)}
    assert project(config, none, cases=30)["schedule_s"] == 0.0
    # which stages the budget ends, by name; a name that is no stage is an error, not a super-resolution network
    assert [honours_time_budget(s) for s in ("autoencoder", "diffusion", "gan", "sr_inplane", "sr_depth")] == \
        [False, True, True, True, True]
    with pytest.raises(ValueError, match="no training stage is named 'sr_nowhere'"):
        honours_time_budget("sr_nowhere")


def test_the_knobs_keep_the_samples_per_step():
    config = load_config("tiny")  # autoencoder: kl, batch 2, patch 16 x 32 x 32
    knobs = dict(knob_variants(config, "autoencoder"))
    halved = knobs["autoencoder.batch_size: 1, train.grad_accum: 2"]
    assert halved.autoencoder.batch_size * halved.train.grad_accum == 2
    assert knobs["train.grad_checkpointing: true"].train.grad_checkpointing
    assert knobs["autoencoder.patch: [16, 16, 16]"].autoencoder.patch == (16, 16, 16)
    assert [k for k, _ in knob_variants(load_config("gan-tiny"), "gan")] == [
        "gan.batch_size: 2, train.grad_accum: 2", "gan.batch_size: 1, train.grad_accum: 4"]


def test_a_tiny_estimate_runs(tmp_path, capsys):
    config = load_config("gan-tiny")
    prep = make_tiny_cache(tmp_path / "prep", config, n=4, n_held_out=1)
    assert main(["estimate", "--config", "gan-tiny", "--prep", str(prep), "--steps", "3", "--warmup", "0",
                 "--cases", "10", "--gpu-memory", "64", "--accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "gan" in out and "s/step" in out and "  fits;" in out and "knob" not in out


@pytest.mark.slow  # three training processes; test_a_tiny_estimate_runs and the knob test above are fast
def test_a_tiny_estimate_measures_the_knobs_when_it_does_not_fit(tmp_path, capsys):
    config = load_config("gan-tiny")
    prep = make_tiny_cache(tmp_path / "prep", config, n=4, n_held_out=1)
    assert main(["estimate", "--config", "gan-tiny", "--prep", str(prep), "--steps", "3", "--warmup", "0",
                 "--cases", "10", "--gpu-memory", "0.001", "--accelerator", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (gan,) = report["stages"]
    assert gan["stage"] == "gan" and gan["s_per_step"] > 0 and gan["peak_mb"] > 1 and gan["fits"] is False
    assert gan["steps"] == 8 and gan["steps_per_epoch"] == 3  # 10 cases, 4 a step
    assert gan["schedule_s"] == pytest.approx(8 * gan["s_per_step"])
    assert [k["knob"] for k in report["knobs"]] == ["gan.batch_size: 2, train.grad_accum: 2",
                                                   "gan.batch_size: 1, train.grad_accum: 4"]
    assert all(k["peak_mb"] > 1 and k["s_per_step"] > 0 and k["fits"] is False for k in report["knobs"])


def test_estimate_refuses_bad_arguments_in_one_line(capsys):
    assert main(["estimate", "--config", "tiny", "--steps", "2", "--warmup", "2"]) == 2
    assert "must exceed --warmup" in capsys.readouterr().err

"""Training after things go wrong: a kill -9 in the middle of a checkpoint write, a full disk, a resume's log.

Every case uses the tiny preset cut to 8 autoencoder and 4 diffusion steps (a checkpoint every 4), and
compares its final weights with those of one uninterrupted run of the same config (bit for bit, on CPU).
Writes of ``ctsynth.checkpoint`` go through ``_write_bytes`` in this order: stage 1's checkpoints 4 and 8
(three files each: calls 1-3, 4-6), its final weights (7), stage 2's latents (8), checkpoint 4 (9-11), final
weights (12).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ctsynth.checkpoint
from ctsynth.checkpoint import load_checkpoint
from ctsynth.cli import main
from ctsynth.config import load_config
from ctsynth.io.atomic import atomic_dir, atomic_file, is_leftover, remove_leftovers
from ctsynth.train import LaunchOptions, TrainHooks, train
from train_fixtures import make_tiny_cache, read_log

CPU = LaunchOptions(accelerator="cpu")
SRC = Path(__file__).resolve().parents[1] / "src"


def short_yaml(folder: Path) -> Path:
    path = folder / "short.yaml"
    text = (SRC / "ctsynth/configs/tiny.yaml").read_text()
    path.write_text(text.replace("  steps: 16\n  adv_start_step", "  steps: 8\n  adv_start_step")
                    .replace("  steps: 16\n  ema_decay", "  steps: 4\n  ema_decay"))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(cache, config file, run) of one uninterrupted run."""
    base = tmp_path_factory.mktemp("recovery")
    prep = make_tiny_cache(base / "prep", n=4, n_held_out=1)
    config_path = short_yaml(base)
    config = load_config(config_path)
    assert (config.autoencoder.steps, config.diffusion.steps) == (8, 4)
    assert train(prep, config, base / "run", CPU) == "done"
    return prep, config_path, base / "run"


def leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if is_leftover(p) or ".tmp" in p.name]


def assert_same_weights(run: Path, reference_run: Path) -> None:
    for stage in ("autoencoder", "diffusion"):
        a = load_file(str(run / stage / "model.safetensors"))
        b = load_file(str(reference_run / stage / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


KILLER = """
import os, signal, sys
import ctsynth.checkpoint as ckpt
from ctsynth.config import load_config
from ctsynth.train import LaunchOptions, train
kill_at, calls, write = int(sys.argv[4]), [0], ckpt._write_bytes
def dying_write(path, data):
    calls[0] += 1
    if calls[0] == kill_at:  # half the file on disk, then SIGKILL: no cleanup can run
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
ckpt._write_bytes = dying_write
train(sys.argv[1], load_config(sys.argv[2]), sys.argv[3], LaunchOptions(accelerator="cpu"))
"""


@pytest.mark.parametrize("kill_at, what", [
    (4, "checkpoint 8 of stage 1"),
    # the other kind of temporary (a file, not a folder); its removal is also covered by the fast test below
    pytest.param(12, "the final diffusion weights", marks=pytest.mark.slow)])
def test_kill_9_during_a_write_leaves_no_temporary_after_the_resume(reference, tmp_path, capsys, kill_at, what):
    prep, config_path, reference_run = reference
    run = tmp_path / "run"
    # the killed run uses the reference run's thread count: another count sums in another order (last bits)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(prep), str(config_path), str(run), str(kill_at)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    left = leftovers(run)
    assert left, f"the kill during {what} left no temporary: the fault was not injected"

    capsys.readouterr()
    assert main(["train", str(prep), "--config", str(config_path), "--out", str(run), "--accelerator", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "temporary file(s) of an interrupted write" in err and all(p.name in err for p in left)
    assert leftovers(run) == []
    assert_same_weights(run, reference_run)


@pytest.mark.parametrize("fail_at, target", [(4, "autoencoder/ckpt-00000008"),
                                              (12, "diffusion/model.safetensors")])
def test_a_full_disk_is_one_line_exit_2_and_a_rerun_resumes_bit_identical(reference, tmp_path, capsys,
                                                                          monkeypatch, fail_at, target):
    prep, config_path, reference_run = reference
    run = tmp_path / "run"
    calls, write = [0], ctsynth.checkpoint._write_bytes

    def full_disk(path: Path, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == fail_at:  # part of the file fits, then the disk is full
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    monkeypatch.setattr(ctsynth.checkpoint, "_write_bytes", full_disk)
    argv = ["train", str(prep), "--config", str(config_path), "--out", str(run), "--accelerator", "cpu"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    line = errors[0]
    assert line.startswith("ctsynth train: error:") and "disk is full" in line, line
    assert str(run / target) in line and "need" in line, line
    assert re.search(r"\d(\.\d)? ?([kMG]B|bytes)\b.* free", line), line  # how much it needed, and was free
    assert leftovers(run) == []
    newest = sorted((run / target.split("/")[0]).glob("ckpt-*"))[-1]
    load_checkpoint(newest)  # the last checkpoint is intact

    monkeypatch.setattr(ctsynth.checkpoint, "_write_bytes", write)  # space freed
    assert main(argv) == 0
    assert_same_weights(run, reference_run)


def test_the_log_of_a_resumed_run_has_each_step_once_and_says_where_it_resumed(reference, tmp_path):
    """A run killed after step 6 whose newest checkpoint is step 4 (the kill came before checkpoint 6 was
    written: here it is deleted) runs steps 5 and 6 again. Its log then has steps 1-8 once each and one
    event record at step 4 naming the checkpoint and the two records it dropped."""
    prep, config_path, reference_run = reference
    config = load_config(config_path)
    run = tmp_path / "run"
    assert train(prep, config, run, CPU, hooks=TrainHooks(stop_after={"autoencoder": 6})) == "stopped"
    log = run / "autoencoder" / "log.jsonl"
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4, 5, 6]
    import shutil
    shutil.rmtree(run / "autoencoder" / "ckpt-00000006")
    with open(log, "a") as fh:
        fh.write('{"step": 7, "loss": 0.')  # a line cut short by the kill
    assert train(prep, config, run, CPU) == "done"
    records = read_log(log)
    events = [r for r in records if "event" in r]
    assert events == [{"event": "resume", "checkpoint": "ckpt-00000004", "step": 4, "dropped": 3}]
    assert [r["step"] for r in records if "event" not in r] == list(range(1, 9))
    assert records.index(events[0]) == 4  # right after step 4's record
    assert_same_weights(run, reference_run)


def test_remove_leftovers_takes_the_temporaries_of_atomic_writes_and_nothing_else(tmp_path):
    """The names atomic_file and atomic_dir really use (taken from them), left behind as a kill leaves them,
    are removed; the stage's own files, and other hidden files, stay."""
    names = []
    for helper, target in ((atomic_file, "model.safetensors"), (atomic_file, "done.json"),
                           (atomic_dir, "ckpt-00000004")):
        with pytest.raises(KeyboardInterrupt):
            with helper(tmp_path / target) as tmp:
                names.append(tmp.name)
                raise KeyboardInterrupt
    for name in names:
        (tmp_path / name).mkdir() if name.endswith(".tmp") else (tmp_path / name).write_bytes(b"")
    (tmp_path / ".ckpt-00000004.old-4242").mkdir()
    keep = ["ckpt-00000004", "log.jsonl", "model.safetensors", ".hidden", "notes.tmp"]
    for name in keep:
        (tmp_path / name).mkdir() if name.startswith("ckpt") else (tmp_path / name).write_text("x")
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names + [".ckpt-00000004.old-4242"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)

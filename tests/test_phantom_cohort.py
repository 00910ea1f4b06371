"""Phantom cohorts on disk and the `ctsynth phantom` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ctsynth.cli import main
from ctsynth.errors import CTSynthError
from ctsynth.phantom import cohort as cohort_mod
from ctsynth.phantom import make_phantom_case, make_phantom_cohort
from ctsynth.phantom.cohort import case_seed, cohort_labels


def _labels(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["study", "label"]
    return [tuple(r) for r in rows[1:]]


def test_cohort_layout_labels_and_ground_truth(tmp_path):
    out = tmp_path / "cohort"
    records = make_phantom_cohort(out, 3, covid_fraction=0.34, seed=2, size=40)
    assert [r["id"] for r in records] == ["case_0001", "case_0002", "case_0003"]
    labels = _labels(out)
    assert [lab for _, lab in labels].count("covid") == 1            # round(3 * 0.34)
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["complete"] is True and meta["n"] == 3
    for rec, (study, label) in zip(meta["cases"], labels):
        assert rec["id"] == study and rec["label"] == label
        assert (out / f"{study}.nii.gz").is_file()
        with np.load(out / "ground_truth" / f"{study}.npz", allow_pickle=False) as gt:
            assert gt["lesion_mask"].dtype == np.uint8 and gt["lung_mask"].dtype == np.uint8
            assert list(gt["lung_mask"].shape) == rec["shape"]
            frac = gt["lesion_mask"].sum() / gt["lung_mask"].sum()
        assert frac == pytest.approx(rec["lesion_fraction"], abs=1e-5)
        assert (frac > 0) == (label == "covid")
    assert not [p for p in out.rglob(".*")]          # no temporaries left behind


def test_cohort_case_reads_back_with_same_hu_and_geometry(tmp_path):
    from ctsynth.io import read_study

    out = tmp_path / "c"
    records = make_phantom_cohort(out, 1, covid_fraction=1.0, seed=5, size=40)
    case = make_phantom_case(records[0]["seed"], "covid", size=40)
    vol = read_study(out / "case_0001.nii.gz")
    assert vol.shape == case.volume.shape
    assert np.allclose(vol.spacing_mm, case.volume.spacing_mm, atol=1e-4)
    assert np.allclose(vol.origin_mm, case.volume.origin_mm, atol=1e-3)
    assert np.abs(vol.hu - np.round(case.volume.hu)).max() <= 1.0


def test_exact_covid_count_and_case_seeds_independent_of_n():
    for n, f in [(10, 0.5), (7, 0.3), (5, 0.0), (4, 1.0), (9, 0.25)]:
        assert cohort_labels(n, f, seed=1).count("covid") == round(n * f)
    assert cohort_labels(10, 0.5, 3) == cohort_labels(10, 0.5, 3)
    assert case_seed(3, 4) == case_seed(3, 4) and case_seed(3, 4) != case_seed(4, 4)


def test_rerun_refused_then_overwrite_replaces_cohort(tmp_path):
    out = tmp_path / "c"
    make_phantom_cohort(out, 3, seed=0, size=32)
    with pytest.raises(CTSynthError, match="not empty"):
        make_phantom_cohort(out, 2, seed=0, size=32)
    (out / "notes.txt").write_text("mine")
    make_phantom_cohort(out, 2, seed=0, size=32, overwrite=True)
    assert [s for s, _ in _labels(out)] == ["case_0001", "case_0002"]
    assert not (out / "case_0003.nii.gz").exists()
    assert not (out / "ground_truth" / "case_0003.npz").exists()
    assert (out / "notes.txt").read_text() == "mine"      # files that are not ours are left alone


def test_overwrite_refuses_a_folder_that_is_not_a_cohort(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(CTSynthError, match="no phantom cohort"):
        make_phantom_cohort(tmp_path, 1, size=32, overwrite=True)
    assert (tmp_path / "data.txt").exists()


def test_interrupted_cohort_keeps_complete_cases_only(tmp_path, monkeypatch):
    calls = []
    real = cohort_mod.make_phantom_case

    def failing(seed, label, size):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(seed, label, size=size)

    monkeypatch.setattr(cohort_mod, "make_phantom_case", failing)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        make_phantom_cohort(out, 3, size=32)
    assert [s for s, _ in _labels(out)] == ["case_0001"]
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["complete"] is False and len(meta["cases"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["case_0001.nii.gz", "ground_truth", "labels.csv", "phantom.json"]


@pytest.mark.parametrize("fmt", ["dicom", "tiff"])
def test_folder_formats(tmp_path, fmt):
    out = tmp_path / fmt
    records = make_phantom_cohort(out, 1, fmt=fmt, size=32, covid_fraction=0.0)
    folder = out / "case_0001"
    assert folder.is_dir() and len(list(folder.iterdir())) >= records[0]["shape"][0]
    assert records[0]["path"] == "case_0001"


def test_cli_writes_cohort_and_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["phantom", str(out), "--n", "2", "--covid-fraction", "0.5", "--size", "32", "--seed", "4"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "wrote 2 phantom cases (1 covid, 1 normal)" in captured.out
    assert "[2/2] case_0002" in captured.err
    assert len(_labels(out)) == 2
    rc = main(["phantom", str(out), "--n", "2", "--size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--overwrite" in err[0]


@pytest.mark.parametrize("args, words", [
    (["--n", "0"], "--n must be at least 1"),
    (["--n", "2", "--covid-fraction", "1.5"], "--covid-fraction"),
    (["--n", "2", "--size", "16"], "--size"),
    (["--n", "2", "--seed", "-3"], "--seed"),
])
def test_cli_bad_arguments_one_line_exit_2(tmp_path, capsys, args, words):
    out = tmp_path / "bad"
    rc = main(["phantom", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and words in err[0] and "fix:" in err[0]
    assert not out.exists()


def test_cli_output_under_a_file_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc = main(["phantom", str(blocker / "cohort"), "--n", "1", "--size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fix:" in err[0]
    assert blocker.read_text() == "x"


def test_temporaries_of_a_killed_run_do_not_block_a_new_one(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / ".case_0001.nii.gz.abc123.tmp.nii.gz").write_bytes(b"partial")
    make_phantom_cohort(out, 1, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["case_0001.nii.gz", "ground_truth", "labels.csv", "phantom.json"]

"""`prepare_cache` / `ctsynth prepare`: shapes, HU, labels, patient splits, reruns, refusals, memory."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ctsynth.cli import main
from ctsynth.config import load_config
from ctsynth.errors import CTSynthError
from ctsynth.io.discover import StudyRef
from ctsynth.io.nifti import write_nifti
from ctsynth.preprocess.cache import read_manifest
from ctsynth.preprocess.prepare import prepare_cache
from _prepare_cohorts import FakeStudy, ellipsoid_chest


def tiny(mode: str = "full"):
    config = load_config("tiny")
    config.data = dataclasses.replace(config.data, mode=mode, shape=(16, 32, 48), held_out_fraction=0.25)
    return config


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """6 studies of 4 patients (2 with two series each), labelled by folder (covid/ normal/)."""
    root = tmp_path / "data"
    layout = [("covid", "patient1", 2), ("covid", "patient2", 1), ("normal", "patient3", 2), ("normal", "patient4", 1)]
    seed = 0
    for label, patient, n in layout:
        for series in range(n):
            volume, *_ = ellipsoid_chest(n=48, nz=20, seed=seed)
            seed += 1
            if seed == 1:
                volume.hu[10, 24, 24] = 3000.0  # metal: outside the window, must be clipped and counted
            write_nifti(volume, root / label / patient / f"series{series}.nii.gz")
    return root


def test_cache_shapes_dtypes_labels_and_hu_within_window(cohort, tmp_path):
    config = tiny("full")
    out = tmp_path / "prep"
    manifest = prepare_cache(cohort, config, out, progress=False)
    assert len(manifest.studies) == 6
    assert {e["label"] for e in manifest.studies} == {"covid", "normal"}
    for entry in manifest.studies:
        hu = np.load(out / entry["file"], allow_pickle=False)
        assert hu.dtype == np.int16 and hu.shape == (16, 32, 48)
        assert entry["label"] == entry["id"].split("/")[0]
        assert -1024 <= hu.min() and hu.max() <= 1500
        # Full mode keeps the whole field of view: its extent is the source's (in-plane widened to 3:2).
        extent = np.asarray(entry["spacing_mm"]) * np.asarray(hu.shape)
        assert extent[0] == pytest.approx(20 * 5.0)
        assert extent[2] / extent[1] == pytest.approx(48 / 32)
        # HU survive: the lungs (-850 HU) and soft tissue (40 HU) are where the ellipsoids put them.
        centre = hu[8]
        lung = centre[(centre > -960) & (centre < -500)]
        assert lung.size > 0.05 * centre.size and -900 < np.median(lung) < -780
        assert 0 < np.median(centre[(centre > -200) & (centre < 200)]) < 80
    metal = next(e for e in manifest.studies if e["id"] == "covid/patient1/series0")
    assert metal["clip_fraction"] > 0
    assert read_manifest(out).studies == manifest.studies


def test_lung_mode_crops_to_the_lungs_without_distortion(cohort, tmp_path):
    full = prepare_cache(cohort, tiny("full"), tmp_path / "full", progress=False)
    lung = prepare_cache(cohort, tiny("lung"), tmp_path / "lung", progress=False)
    for f, l in zip(full.studies, lung.studies):
        assert l["spacing_mm"][1] == pytest.approx(l["spacing_mm"][2])  # y and x scaled alike
        in_full, in_lung = (np.load(tmp_path / p / e["file"]) for p, e in (("full", f), ("lung", l)))
        # Lung-valued voxels make up much more of the crop than of the whole field of view.
        assert np.mean((in_lung > -960) & (in_lung < -500)) > 2 * np.mean((in_full > -960) & (in_full < -500))
        (z0, z1), (y0, y1), (x0, x1) = l["box_mm"]
        # The lungs' known extent (ellipsoids over slices 3..17 of 20, 5 mm each) plus the 10 mm margin.
        assert z0 == pytest.approx(3 * 5.0 - 10.0, abs=5.0) and z1 == pytest.approx(18 * 5.0 + 10.0, abs=5.0)
        assert y1 - y0 < 0.9 * 48 * 6.0  # narrower than the field of view


def test_split_is_by_patient_stratified_and_seeded(cohort, tmp_path):
    manifest = prepare_cache(cohort, tiny(), tmp_path / "prep", progress=False)
    split_of_patient: dict[str, set[str]] = {}
    for entry in manifest.studies:
        split_of_patient.setdefault(entry["patient"], set()).add(entry["split"])
    assert set(split_of_patient) == {"patient1", "patient2", "patient3", "patient4"}
    assert all(len(s) == 1 for s in split_of_patient.values())
    held = {e["label"] for e in manifest.studies if e["split"] == "held_out"}
    assert held == {"covid", "normal"}


def test_rerun_skips_unchanged_and_rereads_changed(cohort, tmp_path, monkeypatch):
    reads: list[str] = []
    original = StudyRef.read

    def counting_read(self):
        reads.append(self.id)
        return original(self)

    monkeypatch.setattr(StudyRef, "read", counting_read)
    out = tmp_path / "prep"
    first = prepare_cache(cohort, tiny(), out, progress=False)
    assert len(reads) == 6
    reads.clear()
    second = prepare_cache(cohort, tiny(), out, progress=False)
    assert reads == []
    assert [e["file"] for e in second.studies] == [e["file"] for e in first.studies]
    changed = cohort / "normal" / "patient4" / "series0.nii.gz"
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    prepare_cache(cohort, tiny(), out, progress=False)
    assert reads == ["normal/patient4/series0"]


def test_cache_from_another_data_config_is_refused_untouched(cohort, tmp_path):
    out = tmp_path / "prep"
    prepare_cache(cohort, tiny("full"), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CTSynthError, match="another data config"):
        prepare_cache(cohort, tiny("lung"), out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_foreign_nonempty_output_is_refused(cohort, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CTSynthError, match="not a ctsynth cache"):
        prepare_cache(cohort, tiny(), out, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_empty_and_unlabelled_folders_fail_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", str(empty), "--config", "tiny", "--out", str(tmp_path / "p1")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CT studies" in err and str(empty) in err
    assert not (tmp_path / "p1").exists()

    unlabelled = tmp_path / "unlabelled"
    volume, *_ = ellipsoid_chest(n=32, nz=8)
    write_nifti(volume, unlabelled / "case_0001.nii.gz")
    write_nifti(volume, unlabelled / "case_0002.nii.gz")
    assert main(["prepare", str(unlabelled), "--config", "tiny", "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "case_0001" in err and "--labels" in err
    assert not (tmp_path / "p2").exists()


def test_cli_prints_a_summary(cohort, tmp_path, capsys):
    assert main(["prepare", str(cohort), "--config", "tiny", "--out", str(tmp_path / "prep")]) == 0
    captured = capsys.readouterr()
    assert "held_out" in captured.out and "clipped" in captured.out
    assert "[6/6]" in captured.err
    assert json.loads((tmp_path / "prep" / "manifest.json").read_text())["format"] == "ctsynth-cache/1"


def test_only_one_volume_is_alive_at_a_time(tmp_path):
    FakeStudy.alive, FakeStudy.max_alive = [], 0
    studies = [FakeStudy(i) for i in range(8)]
    manifest = prepare_cache(tmp_path / "data", tiny(), tmp_path / "prep", progress=False,
                             discover=lambda *a, **k: studies)
    assert len(manifest.studies) == 8
    assert FakeStudy.max_alive == 1


def test_unreadable_studies_are_skipped_and_listed(tmp_path, capsys):
    studies = [FakeStudy(0), FakeStudy(1, fail=True), FakeStudy(2)]
    manifest = prepare_cache(tmp_path / "data", tiny(), tmp_path / "prep", progress=False,
                             discover=lambda *a, **k: studies)
    assert [e["id"] for e in manifest.studies] == ["case_0", "case_2"]
    assert [s["id"] for s in manifest.skipped] == ["case_1"]
    assert "skipped case_1" in capsys.readouterr().err
    with pytest.raises(CTSynthError, match="no study could be prepared"):
        prepare_cache(tmp_path / "data", tiny(), tmp_path / "prep2", progress=False,
                      discover=lambda *a, **k: [FakeStudy(1, fail=True)])
    assert not (tmp_path / "prep2" / "manifest.json").exists()


def test_ids_whose_file_names_would_collide_get_distinct_files(tmp_path):
    studies = [FakeStudy(0), FakeStudy(1), FakeStudy(2)]
    studies[0].id, studies[1].id = "a/b", "a__b"
    manifest = prepare_cache(tmp_path / "data", tiny(), tmp_path / "prep", progress=False,
                             discover=lambda *a, **k: studies)
    files = [e["file"] for e in manifest.studies]
    assert len(set(files)) == 3 and all((tmp_path / "prep" / f).is_file() for f in files)
    first, second = (np.load(tmp_path / "prep" / f) for f in files[:2])
    assert not np.array_equal(first, second)  # different seeds: neither overwrote the other


def test_bad_data_config_is_refused_before_reading(tmp_path):
    config = tiny()
    config.data = dataclasses.replace(config.data, mode="lungs")
    with pytest.raises(CTSynthError, match="data.mode"):
        prepare_cache(tmp_path / "data", config, tmp_path / "prep", progress=False,
                      discover=lambda *a, **k: [FakeStudy(0)])
    assert not (tmp_path / "prep").exists()


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    class Interrupting(FakeStudy):
        def read(self):
            raise KeyboardInterrupt

    studies = [FakeStudy(0), FakeStudy(1), Interrupting(2), FakeStudy(3)]
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(tmp_path / "data", tiny(), tmp_path / "prep", progress=False,
                      discover=lambda *a, **k: studies)
    assert [e["id"] for e in read_manifest(tmp_path / "prep").studies] == ["case_0", "case_1"]
    reads: list[str] = []

    class Counting(FakeStudy):
        def read(self):
            reads.append(self.id)
            return super().read()

    manifest = prepare_cache(tmp_path / "data", tiny(), tmp_path / "prep", progress=False,
                             discover=lambda *a, **k: [Counting(i) for i in range(4)])
    assert reads == ["case_2", "case_3"]
    assert len(manifest.studies) == 4

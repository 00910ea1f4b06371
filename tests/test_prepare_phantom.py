"""`prepare` in lung mode on phantom cases: the crop holds the known lungs, snugly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ctsynth import phantom
from ctsynth.config import load_config
from ctsynth.preprocess.prepare import prepare_cache


class PhantomStudy:
    def __init__(self, seed: int, label: str):
        self.case = phantom.make_phantom_case(seed, label, 64)
        self.id, self.patient, self.kind, self.label = f"case_{seed}", f"patient{seed}", "nifti", label
        self.path, self.files = Path(f"phantom_{seed}"), []

    def read(self):
        return self.case.volume


def test_lung_crop_contains_the_ground_truth_lungs(tmp_path):
    config = load_config("tiny")
    config.data = dataclasses.replace(config.data, mode="lung", shape=(16, 32, 48))
    studies = [PhantomStudy(0, "normal"), PhantomStudy(1, "covid")]
    manifest = prepare_cache(tmp_path / "data", config, tmp_path / "prep", progress=False,
                             discover=lambda *a, **k: studies)
    margin = config.data.lung_margin_mm
    for study, entry in zip(studies, manifest.studies):
        volume, truth = study.case.volume, study.case.lung_mask
        spacing = np.asarray(volume.spacing_mm)
        first = np.array([np.flatnonzero(truth.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1))]) * spacing
        last = np.array([np.flatnonzero(truth.any(axis=a))[-1] + 1 for a in ((1, 2), (0, 2), (0, 1))]) * spacing
        box = np.asarray(entry["box_mm"])
        assert np.all(box[:, 0] <= first + 1e-6) and np.all(box[:, 1] >= last - 1e-6)
        # Snug along z (lungs + margin, within one coarse slice) and along the widest in-plane axis.
        assert box[0, 0] >= first[0] - margin - 2.5 * spacing[0]
        assert box[0, 1] <= last[0] + margin + 2.5 * spacing[0]
        assert box[2, 1] - box[2, 0] <= (last[2] - first[2]) + 2 * margin + 3 * spacing[2]
        hu = np.load(tmp_path / "prep" / entry["file"])
        assert hu.shape == (16, 32, 48) and hu.dtype == np.int16


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_cli_prepares_a_phantom_cohort_from_disk(tmp_path, capsys, fmt):
    """The whole path: the phantom cohort's files, labels.csv and ground_truth/ (ignored) -> a cache."""
    from ctsynth.cli import main

    data = tmp_path / "cohort"
    phantom.make_phantom_cohort(data, 4, fmt=fmt, seed=0, size=64)
    labels = dict(line.split(",") for line in (data / "labels.csv").read_text().split()[1:])
    assert main(["prepare", str(data), "--config", "tiny", "--out", str(tmp_path / "prep")]) == 0
    captured = capsys.readouterr()
    assert "4 studies cached" in captured.out
    from ctsynth.preprocess.cache import read_manifest

    manifest = read_manifest(tmp_path / "prep")
    assert {e["id"]: e["label"] for e in manifest.studies} == labels
    assert {e["split"] for e in manifest.studies} == {"train", "held_out"}
    for entry in manifest.studies:
        hu = np.load(tmp_path / "prep" / entry["file"])
        assert hu.shape == (16, 32, 48) and hu.dtype == np.int16
        assert (hu < -500).mean() > 0.1 and (hu > -200).mean() > 0.1  # air/lung and tissue both present

"""The real hospital study (issue #14's 'done when'): RICORD's COVID-19 CT study, dumped flat under random file
names with a per-patient label sheet, gives one patient, one study, the axial routine series (scout and
reformats set aside with a note), and prepare caches one labelled axial volume. Skips where the shared data
is absent (a user's clone)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctsynth.cli import main

REAL_PACS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-pacs"
STUDY = REAL_PACS / "ricord_covid_study"


@pytest.fixture
def flat_dump(tmp_path: Path) -> Path:
    if not STUDY.is_dir():
        pytest.skip(f"real PACS test study not found at {STUDY} (it sits beside the project, not in it)")
    flat = tmp_path / "dump"
    flat.mkdir()
    names = random.Random(14)
    files = sorted(STUDY.rglob("*.dcm"))
    names.shuffle(files)
    for f in files:
        shutil.copyfile(f, flat / f"{names.getrandbits(64):016x}")
    shutil.copyfile(REAL_PACS / "labels_by_patient.csv", tmp_path / "sheet.csv")
    return flat


def test_flat_dump_one_patient_one_study_routine_series(flat_dump: Path, tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(flat_dump), "--labels", str(tmp_path / "sheet.csv"), "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    (row,) = report["studies"]
    assert row["label"] == "covid" and row["series"] == "ROUTINE CHEST NON-CON"
    assert row["shape"] == [128, 512, 512] and row["spacing_mm"] == pytest.approx([1.25, 0.703125, 0.703125])
    why = {c["description"]: c["why_not"] for c in row["series_choice"]}
    assert why["COR 3X3"].startswith("coronal reformat") and why["SAG 3X3"].startswith("sagittal reformat")
    assert why["SCOUT CHEST"].startswith("localizer")
    assert sum(n.startswith("set aside ") for n in row["notes"]) == 3
    assert "MIDRC-RICORD-1A-419639-000082" not in out and "1.2.826.0.1.3680043" not in out


def test_reformat_reoriented_on_request_matches_the_axial_anatomy(flat_dump: Path) -> None:
    from ctsynth.io.discover import discover

    studies = {s.series: s for s in discover(flat_dump, series="all").studies}
    axial = studies["ROUTINE CHEST NON-CON"].read()
    coronal = studies["COR 3X3"].read()
    assert np.allclose(coronal.direction, np.eye(3), atol=1e-6)
    assert any("coronal slices reoriented to axial" in n for n in coronal.meta["notes"])
    # Same anatomy within the slab blur: the axial series box-averaged over about one reformat voxel, sampled
    # at the world position of each reformat voxel (both grids are axis-aligned now).
    from scipy import ndimage

    size = [max(1, int(round(c / a))) for c, a in zip(coronal.spacing_mm, axial.spacing_mm)]
    smooth = ndimage.uniform_filter(axial.hu.astype(np.float32), size=size, mode="nearest")
    idx = [np.rint((coronal.origin_mm[2 - ax] + np.arange(n) * coronal.spacing_mm[ax] - axial.origin_mm[2 - ax])
                   / axial.spacing_mm[ax]).astype(int) for ax, n in enumerate(coronal.shape)]
    keep = [(i >= 0) & (i < n) for i, n in zip(idx, axial.shape)]
    assert all(k.mean() > 0.9 for k in keep)  # the reformat covers the axial block
    ref = smooth[np.ix_(idx[0][keep[0]], idx[1][keep[1]], idx[2][keep[2]])]
    got = coronal.hu[np.ix_(keep[0], keep[1], keep[2])].astype(np.float32)
    assert np.median(np.abs(got - ref)) < 30
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.95


def test_prepare_caches_one_labelled_axial_volume(flat_dump: Path, tmp_path: Path, capsys) -> None:
    code = main(["prepare", str(flat_dump), "--labels", str(tmp_path / "sheet.csv"), "--config", "tiny",
                 "--out", str(tmp_path / "prep"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    (entry,) = manifest["studies"]
    assert entry["label"] == "covid" and entry["patient"].startswith("pat-")
    assert entry["source_shape"] == [128, 512, 512]
    arr = np.load(tmp_path / "prep" / entry["file"])
    assert arr.dtype == np.int16 and arr.min() < -800  # lungs (air) in the kept box
    text = (tmp_path / "prep" / "manifest.json").read_text()
    assert "MIDRC-RICORD" not in text and "1.2.826.0.1.3680043" not in text

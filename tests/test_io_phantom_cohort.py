"""Discovery and `ctsynth inspect` over a small phantom cohort written in each format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctsynth.cli import main
from ctsynth.io import discover


@pytest.mark.parametrize("fmt", ["nifti", "dicom", "tiff"])
def test_phantom_cohort_discover_and_inspect(tmp_path: Path, capsys, fmt: str) -> None:
    from ctsynth.phantom import make_phantom_cohort

    out = tmp_path / "cohort"
    records = make_phantom_cohort(out, 2, covid_fraction=0.5, fmt=fmt, seed=3, size=64)
    found = discover(out)
    assert [s.id for s in found.studies] == [r["id"] for r in records]
    assert [s.label for s in found.studies] == [r["label"] for r in records]
    assert {s.kind for s in found.studies} == {fmt}
    assert found.labels_file == out / "labels.csv"
    assert found.notes == ["skipped folder ground_truth/ (not CT images)"]

    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for row, record in zip(report["studies"], records):
        assert row["shape"] == list(record["shape"])
        assert row["spacing_mm"] == pytest.approx(record["spacing"], abs=1e-4)
        assert row["hu"]["min"] >= -1024 - 1 and row["hu"]["p1"] < -500  # air outside the body
        assert row["problem"] is None and row["notes"] == []

"""Labels from folder names, a study,label CSV and COVID-CTset's Patient_details.csv; their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctsynth.errors import CTSynthError
from ctsynth.io.labels import label_from_path, match_labels, parse_label_map, read_labels_csv


def test_folder_names() -> None:
    assert label_from_path(["COVID", "patient1", "SR_2"]) == "covid"
    assert label_from_path(["Normal", "case7"]) == "normal"
    assert label_from_path(["non-COVID", "case7"]) == "normal"  # not 'covid' because it contains the word
    assert label_from_path(["data", "case7"]) is None
    assert label_from_path(["covid", "normal", "x"]) is None  # contradictory: no guess
    assert label_from_path(["137covid_patient1_SR_2"]) == "covid"  # flattened COVID-CTset name
    assert label_from_path(["Positive", "a"]) == "covid"
    assert label_from_path(["CT_COVID", "a.png"]) == "covid" and label_from_path(["CT_NonCOVID", "b"]) == "normal"
    assert label_from_path(["COVID 19", "a"]) == "covid"
    assert label_from_path(["cap", "a"]) is None
    assert label_from_path(["cap", "a"], parse_label_map("cap=covid")) == "covid"


def test_label_map_parsing() -> None:
    assert parse_label_map("Positive=covid, NEG=normal") == {"positive": "covid", "neg": "normal"}
    with pytest.raises(CTSynthError, match="not NAME=LABEL"):
        parse_label_map("positive")
    with pytest.raises(CTSynthError, match="not one of covid, normal"):
        parse_label_map("positive=sick")


def test_csv_with_flexible_header(tmp_path: Path) -> None:
    path = tmp_path / "my_labels.csv"
    path.write_text("Case,Class\ncase_0001.nii.gz,COVID\ncase_0002,normal\npatient1,positive\n")
    table = read_labels_csv(path)
    assert table.entries == {"case_0001": "covid", "case_0002": "normal", "patient1": "covid"}
    labels, notes = match_labels(table, [("case_0001", "case_0001"), ("case_0002", "case_0002"),
                                         ("patient1/SR_2", "patient1"), ("patient1/SR_3", "patient1")])
    assert labels == {"case_0001": "covid", "case_0002": "normal", "patient1/SR_2": "covid",
                      "patient1/SR_3": "covid"}
    assert notes == []


def test_patient_details(tmp_path: Path) -> None:
    path = tmp_path / "Patient_details.csv"
    path.write_text("Patient ID,SEX,AGE,Date,COVID-19 Infection\npatient1,F,053Y,20200407,Positive\n"
                    "patient3,M,066Y,20200418,Negative\npatient5,M,035Y,20200328,Positive\n")
    table = read_labels_csv(path)
    assert table.patient_details
    labels, notes = match_labels(table, [("patient1/SR_2", "patient1"), ("patient3/SR_4", "patient3")])
    assert labels == {"patient1/SR_2": "covid", "patient3/SR_4": "normal"}
    # The dataset-wide file lists patients that were not downloaded: a note, not an error.
    assert len(notes) == 1 and "patient5" in notes[0]


def test_csv_naming_missing_studies(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("study,label\ncase_0001,covid\ncase_0099,normal\ncase_0100,normal\n")
    with pytest.raises(CTSynthError) as info:
        match_labels(read_labels_csv(path), [("case_0001", "case_0001")])
    message = str(info.value)
    assert "labels.csv: names 2 studies that are not in the data: case_0099, case_0100" in message
    assert "fix:" in message and "\n" not in message


def test_unknown_label_and_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("study,label\ncase_0001,covid\ncase_0002,pneumonia\n")
    with pytest.raises(CTSynthError) as info:
        read_labels_csv(path)
    message = str(info.value)
    assert "line 3: unknown label 'pneumonia'" in message and "normal" in message and "--label-map" in message
    assert read_labels_csv(path, parse_label_map("pneumonia=covid")).entries["case_0002"] == "covid"

    path.write_text("name,diag\na,covid\n")
    with pytest.raises(CTSynthError, match=r"labels.csv: labels CSV has no a study column.*'study,label'"):
        read_labels_csv(path)

    path.write_text("study,label\ncase_1,covid\ncase_1,normal\n")
    with pytest.raises(CTSynthError, match="labelled both covid and normal"):
        read_labels_csv(path)

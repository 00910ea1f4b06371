"""One patient-level split (``ctsynth.split``) for prepare and evaluate: fraction, stability, patients kept
together, and evaluate's items split by the same rule without changing its input."""

from __future__ import annotations

from ctsynth.evaluate.inputs import StudyItem, split_items
from ctsynth.split import patient_split


def test_split_fraction_and_stability():
    studies = [(f"s{i}", f"p{i}", "covid" if i % 2 else "normal") for i in range(40)]
    splits = patient_split(studies, 0.25)
    held = [sid for sid, split in splits.items() if split == "held_out"]
    assert len(held) == 10
    assert patient_split(studies, 0.25) == splits
    assert patient_split(studies, 0.25, seed=1) != splits
    # Adding patients does not move the existing ones much (hash order, not a reshuffle).
    more = patient_split(studies + [(f"t{i}", f"q{i}", "covid") for i in range(4)], 0.25)
    moved = sum(more[sid] != splits[sid] for sid in splits)
    assert moved <= 2
    assert set(patient_split(studies[:3], 0.25).values()) == {"train"}  # < 4 studies: nothing held out


def test_evaluate_splits_by_the_same_rule_keeping_patients_together():
    items = [StudyItem(id=f"s{k}", patient=f"p{k // 2}", label="covid" if k % 4 < 2 else "normal", group="",
                       load=lambda: None) for k in range(40)]
    split = split_items(items, 0.25, seed=3)
    assert [i.group for i in split] == [i.group for i in split_items(items, 0.25, seed=3)]
    assert all(i.group == "" for i in items)  # the input is not changed
    rule = patient_split(((i.id, i.patient, i.label) for i in items), 0.25, seed=3)
    assert {i.id: i.group for i in split} == rule
    by_patient: dict[str, set[str]] = {}
    for item in split:
        by_patient.setdefault(item.patient, set()).add(item.group)
    assert all(len(groups) == 1 for groups in by_patient.values())
    held = [i for i in split if i.group == "held_out"]
    # round(0.25 * 10) = 2 of the 10 patients of each label, 2 studies each
    assert len(held) == 8 and {i.label for i in held} == {"covid", "normal"}

"""The patient-level split into training and held-out studies: one rule for `prepare` and `evaluate`.

By patient (all studies of a person on one side), stratified by label, deterministic: within each class the
patients are ordered by the SHA-256 of ``"{seed}:{patient}"`` and the first ``round(fraction * n)`` are held
out, at least one per class when there are at least 4 studies and the class has at least 2 patients, and
at least one patient of each class stays in training. Hash ordering keeps a patient's side when other
patients are added (a reshuffle would move many). A patient's class is the label of most of their studies
(ties: the first label in sorted order).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterable


def patient_split(studies: Iterable[tuple[str, str, str | None]], fraction: float, seed: int = 0) -> dict[str, str]:
    """``{study id: "train" | "held_out"}`` from ``(study id, patient, label)`` triples."""
    studies = list(studies)
    labels_of: dict[str, list[str]] = {}
    for _, patient, label in studies:
        labels_of.setdefault(patient, []).append(str(label))
    by_class: dict[str, list[str]] = {}
    for patient, labels in labels_of.items():
        label = sorted(Counter(labels).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        by_class.setdefault(label, []).append(patient)
    held: set[str] = set()
    for patients in by_class.values():
        patients.sort(key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
        k = int(round(fraction * len(patients)))
        if fraction > 0 and k == 0 and len(studies) >= 4 and len(patients) >= 2:
            k = 1
        k = min(k, len(patients) - 1) if len(patients) > 1 else 0
        held.update(patients[:k])
    return {sid: ("held_out" if patient in held else "train") for sid, patient, _ in studies}

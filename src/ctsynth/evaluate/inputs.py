"""What ``ctsynth evaluate`` reads: the real set (a prepared cache or a raw data folder) and synthetic sets.

Nothing is loaded up front: each input becomes a list of :class:`StudyItem` whose ``load()`` reads one
volume when it is needed, so evaluating hundreds of volumes keeps one volume in memory at a time.

- A cache (``manifest.json``): its studies and its train / held-out split, on its own grid. If it has fewer
  than two held-out studies, a split is made here as for a data folder.
- A data folder (DICOM, NIfTI or TIFF, found by :func:`ctsynth.io.discover.discover_studies`): a seeded,
  patient-level split (no patient on both sides), stratified by label.
- A synthetic folder written by ``ctsynth generate``: discovered the same way; the label comes from
  ``labels.csv`` or from a JSON sidecar (``<study>.json`` with a ``"label"`` key) beside the study.
"""

from __future__ import annotations

import json
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CTSynthError
from ..split import patient_split
from ..preprocess.cache import is_cache_dir, load_cached_volume, read_manifest
from ..volume import CTVolume

DEFAULT_GRID = (32, 96, 128)


@dataclass
class StudyItem:
    id: str
    patient: str
    label: str | None
    group: str  # "train", "held_out", or a synthetic set's name
    load: Callable[[], CTVolume]


def _sidecar_label(root: Path, study_id: str, path: Path) -> str | None:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".tif", ".tiff"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for candidate in (path.with_name(name + ".json"), root / f"{study_id}.json", path / "ctsynth.json"):
        if candidate.is_file():
            try:
                label = json.loads(candidate.read_text()).get("label")
            except (ValueError, AttributeError):
                continue
            if label:
                return str(label)
    return None


def discover_items(root: Path, group: str) -> list[StudyItem]:
    """Every study under ``root`` as a StudyItem of ``group`` (label from labels.csv or a JSON sidecar)."""
    from ..io.discover import discover_studies

    if not root.exists():
        raise CTSynthError("input folder not found", root, "give an existing folder of CT studies or a cache")
    refs = discover_studies(root)
    if not refs:
        raise CTSynthError("no CT studies found (DICOM, NIfTI or TIFF)", root,
                           "point at the folder holding the studies (run `ctsynth inspect` on it to see why)")
    items = []
    for ref in refs:
        label = ref.label or _sidecar_label(root, ref.id, Path(ref.path))
        items.append(StudyItem(id=ref.id, patient=str(ref.patient or ref.id), label=label, group=group,
                               load=_reader(ref, label)))
    return items


def _reader(ref, label: str | None) -> Callable[[], CTVolume]:
    def load() -> CTVolume:
        volume = ref.read()
        if volume.label is None and label is not None:
            volume.label = label
        return volume
    return load


def split_items(items: list[StudyItem], fraction: float, seed: int) -> list[StudyItem]:
    """``items`` with ``group`` set by :func:`ctsynth.split.patient_split` (the rule `prepare` uses), as new
    objects (the input is not changed)."""
    groups = patient_split(((i.id, i.patient, i.label) for i in items), fraction, seed)
    return [dataclasses.replace(i, group=groups[i.id]) for i in items]


def plan_real(path: Path, *, seed: int, held_out_fraction: float
              ) -> tuple[list[StudyItem], tuple[int, int, int] | None, list[str]]:
    """The real studies with their split, the cache's grid (None for a data folder) and notes."""
    notes: list[str] = []
    path = Path(path)
    if is_cache_dir(path):
        manifest = read_manifest(path)
        items = [StudyItem(id=e["id"], patient=str(e.get("patient", e["id"])), label=e.get("label"),
                           group="held_out" if e.get("split") == "held_out" else "train",
                           load=(lambda e=e: load_cached_volume(path, e)))
                 for e in manifest.studies]
        grid = tuple(int(s) for s in manifest.config.data.shape)
        if sum(i.group == "held_out" for i in items) < 2:
            notes.append(f"the cache holds fewer than 2 held-out studies; made a seeded patient-level split "
                         f"({held_out_fraction:.0%} held out) for the baselines")
            items = split_items(items, held_out_fraction, seed)
        return items, grid, notes  # type: ignore[return-value]
    items = split_items(discover_items(path, "train"), held_out_fraction, seed)
    notes.append(f"real data folder: seeded patient-level split, {held_out_fraction:.0%} held out (seed {seed})")
    return items, None, notes


def check_real_split(items: list[StudyItem], path: Path) -> None:
    n_train = sum(i.group == "train" for i in items)
    n_held = sum(i.group == "held_out" for i in items)
    if n_train < 2 or n_held < 2:
        raise CTSynthError(f"too few real studies for a baseline ({n_train} train, {n_held} held out)", path,
                           "give at least 4 real studies from at least 4 patients (a few dozen for stable numbers)")


def to_grid(volume: CTVolume, grid: tuple[int, int, int]) -> CTVolume:
    """The volume resampled to the evaluation grid (same physical extent, new spacing), float32 HU."""
    if tuple(volume.shape) != tuple(grid):
        from ..preprocess.resample import resample_volume

        volume = resample_volume(volume, shape=tuple(grid))
    return volume.with_hu(np.asarray(volume.hu, dtype=np.float32))

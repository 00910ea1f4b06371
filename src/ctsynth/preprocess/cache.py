"""The prepared-data cache: one ``.npy`` per study plus ``manifest.json``.

Layout of a cache folder (``ctsynth prepare ... --out PREP``)::

    PREP/manifest.json          format, the full config, data_hash, and one entry per study
    PREP/studies/<key>.npy      int16 HU, shape = config.data.shape (z, y, x), clipped to the HU window

The cache stores HU (clipped to the config's window) rather than [-1, 1] floats: int16 is exact, half the
size of float32, memory-maps so a random patch reads only its own bytes, and is readable by the
evaluation without a model. :func:`ctsynth.preprocess.window.normalise` maps it to [-1, 1] at load time.

Each manifest entry: ``id`` (study id, unique), ``patient`` (for patient-level splits), ``label``,
``file`` (relative path), ``source`` (where it was read from), ``source_hash`` (hash of the source
files' names, sizes and modification times, to skip unchanged studies on a rerun), ``spacing_mm`` (z, y, x after resampling),
``split`` ("train" or "held_out"), ``clip_fraction`` (fraction of voxels outside the window).
``ctsynth prepare`` adds ``shape``, ``source_shape``, ``source_spacing_mm`` and ``box_mm`` (the region of the
source that was resampled, see :mod:`ctsynth.preprocess.prepare`). The manifest's ``skipped`` list names
the studies that could not be used (``id``, ``source``, ``reason``).
"""

from __future__ import annotations

import io as _io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, config_from_dict
from ..errors import CTSynthError
from ..io.atomic import atomic_write_bytes, atomic_write_text
from ..volume import CTVolume

CACHE_FORMAT = "ctsynth-cache/1"
MANIFEST = "manifest.json"


@dataclass
class CacheManifest:
    config: Config
    studies: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def entries(self, split: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self.studies if split is None or s.get("split") == split]

    def to_json(self) -> str:
        return json.dumps({"format": CACHE_FORMAT, "config": self.config.to_dict(),
                           "data_hash": self.config.data_hash(), "studies": self.studies,
                           "skipped": self.skipped}, indent=2)


def is_cache_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def study_key(study_id: str) -> str:
    """A file-name-safe key for a study id (``patient1/SR_2`` -> ``patient1__SR_2``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_id.replace("/", "__")).strip("._") or "study"


def read_manifest(prep_dir: str | Path) -> CacheManifest:
    """Read ``PREP/manifest.json``; a missing or foreign file is a one-line error."""
    path = Path(prep_dir) / MANIFEST
    if not path.is_file():
        raise CTSynthError("not a ctsynth cache (no manifest.json)", prep_dir,
                           "run `ctsynth prepare DATA --config NAME --out PREP` first")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}")
        return CacheManifest(config=config_from_dict(raw["config"]), studies=list(raw["studies"]),
                             skipped=list(raw.get("skipped", [])))
    except (ValueError, KeyError, TypeError) as exc:
        raise CTSynthError(f"manifest.json is damaged or from another version ({exc})", path,
                           "re-run `ctsynth prepare` into a new folder") from exc


def write_manifest(prep_dir: str | Path, manifest: CacheManifest) -> None:
    atomic_write_text(Path(prep_dir) / MANIFEST, manifest.to_json())


def write_study_array(prep_dir: str | Path, study_id: str, hu: np.ndarray, key: str | None = None) -> str:
    """Save one study's int16 HU array atomically; returns its path relative to the cache folder.

    ``key`` overrides the file name (default :func:`study_key`), for ids whose keys would collide.
    """
    rel = f"studies/{key or study_key(study_id)}.npy"
    buffer = _io.BytesIO()
    np.save(buffer, np.ascontiguousarray(hu, dtype=np.int16))
    atomic_write_bytes(Path(prep_dir) / rel, buffer.getvalue())
    return rel


def load_cached_volume(prep_dir: str | Path, entry: dict[str, Any], mmap: bool = True) -> CTVolume:
    """One cached study as a CTVolume (int16 HU, memory-mapped unless ``mmap`` is false)."""
    path = Path(prep_dir) / entry["file"]
    try:
        hu = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CTSynthError(f"cached study is missing or damaged ({exc})", path,
                           "re-run `ctsynth prepare` on the same data and output") from exc
    return CTVolume(hu=hu, spacing_mm=tuple(entry["spacing_mm"]), label=entry.get("label"),
                    source=entry.get("source", str(path)),
                    meta={"study_id": entry["id"], "patient": entry.get("patient", entry["id"]),
                          "split": entry.get("split", "train")})

"""Fixtures for the train/generate tests: a tiny prepared cache of phantom chests, written with the cache API.

Uses ``ctsynth.phantom.make_phantom_case`` when it is available (resized to the config's shape with the
project's resampler); otherwise a few ellipsoids (body, two lungs, COVID-like dense blobs) so that these
tests do not depend on another part being finished.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctsynth.config import Config, load_config
from ctsynth.preprocess.cache import CacheManifest, write_manifest, write_study_array

SPACING = (5.0, 1.25, 1.25)


def _ellipsoid_chest(seed: int, label: str, shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (y / rng.uniform(0.75, 0.9)) ** 2 + (x / rng.uniform(0.85, 0.95)) ** 2 < 1
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((y + 0.05) / 0.55) ** 2 + ((x - side * 0.42) / 0.33) ** 2 + (z / 1.3) ** 2 < 1
        hu[lung & body] = -850.0
        if label == "covid":
            blob = ((y - 0.25) / 0.18) ** 2 + ((x - side * 0.55) / 0.12) ** 2 + (z / 0.6) ** 2 < 1
            hu[blob & lung] = -350.0
    hu += rng.normal(0, 15, size=shape).astype(np.float32)
    return hu


def _phantom_chest(seed: int, label: str, shape: tuple[int, int, int]) -> np.ndarray | None:
    try:
        from ctsynth.phantom import make_phantom_case
        from ctsynth.preprocess.resample import resample_volume
    except ImportError:
        return None
    case = make_phantom_case(seed, label, size=64, depth=shape[0])
    return resample_volume(case.volume, shape=shape).hu


def make_tiny_cache(out: Path, config: Config | None = None, n: int = 6, n_held_out: int = 2,
                    use_phantom: bool = False) -> Path:
    """A cache of ``n`` studies (alternating normal/covid), the last ``n_held_out`` held out."""
    config = config or load_config("tiny")
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = config.data.hu_window
    studies = []
    for i in range(n):
        label = ("normal", "covid")[i % 2]
        hu = (_phantom_chest(i, label, config.data.shape) if use_phantom else None)
        if hu is None:
            hu = _ellipsoid_chest(i, label, config.data.shape)
        study_id = f"case_{i + 1:04d}"
        rel = write_study_array(out, study_id, np.clip(np.rint(hu), lo, hi))
        studies.append({"id": study_id, "patient": study_id, "label": label, "file": rel,
                        "source": f"fixture/{study_id}", "source_hash": str(i), "spacing_mm": list(SPACING),
                        "split": "held_out" if i >= n - n_held_out else "train", "clip_fraction": 0.0})
    write_manifest(out, CacheManifest(config=config, studies=studies))
    return out


def train_tiny_run(base: Path) -> tuple[Path, Path]:
    """(cache, run) of the tiny config trained to the end under ``base`` (the session fixture ``tiny_run``
    of conftest.py builds it once and shares it)."""
    from ctsynth.train import LaunchOptions, train

    prep = make_tiny_cache(base / "prep", use_phantom=True)
    assert train(prep, load_config("tiny"), base / "run", LaunchOptions(accelerator="cpu")) == "done"
    return prep, base / "run"


def read_log(path: Path) -> list[dict]:
    import json
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

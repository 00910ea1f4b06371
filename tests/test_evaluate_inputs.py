"""What `evaluate` reads: a prepared cache (its split and grid), a data folder (a patient-level split), and
an external encoder from safetensors (loaded without unpickling)."""

from __future__ import annotations

import numpy as np
import pytest

from _evaluate_cohorts import GRID, cohort
from ctsynth.config import Config
from ctsynth.errors import CTSynthError
from ctsynth.evaluate.inputs import plan_real
from ctsynth.preprocess.cache import CacheManifest, write_manifest, write_study_array
from ctsynth.preprocess.resample import resample_volume


def test_cache_split_and_grid_are_used(tmp_path):
    config = Config()
    config.data.shape = GRID
    studies = []
    for k, volume in enumerate(cohort(0, 6)):
        hu = resample_volume(volume, shape=GRID).hu
        rel = write_study_array(tmp_path, f"case_{k}", hu)
        studies.append({"id": f"case_{k}", "patient": f"p{k}", "label": volume.label, "file": rel,
                        "source": "x", "source_hash": "0", "spacing_mm": [5.0, 5.0, 5.0],
                        "split": "held_out" if k >= 4 else "train", "clip_fraction": 0.0})
    write_manifest(tmp_path, CacheManifest(config=config, studies=studies))
    items, grid, notes = plan_real(tmp_path, seed=0, held_out_fraction=0.2)
    assert grid == GRID and not notes
    assert [i.group for i in items] == ["train"] * 4 + ["held_out"] * 2
    assert items[5].load().shape == GRID


def test_external_encoder_from_safetensors(tmp_path):
    import torch
    from monai.networks.nets import resnet10
    from safetensors.torch import save_file

    from ctsynth.evaluate.encoder import ExternalEncoder

    torch.manual_seed(0)
    net = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="B", bias_downsample=False)
    path = tmp_path / "medicalnet_resnet10.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))
    encoder = ExternalEncoder.load(path)
    assert encoder.name.startswith("resnet10")
    features = encoder.features(np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32))
    assert features.shape == (512,) and np.isfinite(features).all()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CTSynthError, match="safetensors"):
        ExternalEncoder.load(bad)


def test_thumbnail_is_an_exact_area_average():
    from ctsynth.evaluate.features import make_thumbnail

    x = np.random.default_rng(1).normal(size=(8, 12, 18)).astype(np.float32)
    blocks = x.reshape(4, 2, 4, 3, 6, 3).mean(axis=(1, 3, 5))
    assert np.allclose(make_thumbnail(x, (4, 4, 6)), blocks, atol=1e-5)
    assert make_thumbnail(x, (3, 5, 7)).mean() == pytest.approx(x.mean(), abs=1e-5)  # fractional cells


def test_synthetic_labels_come_from_generate_sidecars(tmp_path):
    import json

    from ctsynth.evaluate.inputs import discover_items
    from ctsynth.io.nifti import write_nifti

    for k, volume in enumerate(cohort(0, 2)):
        name = f"{volume.label}_{k:05d}"
        write_nifti(volume.with_hu(np.asarray(volume.hu)), tmp_path / f"{name}.nii.gz")
        (tmp_path / f"{name}.json").write_text(json.dumps({"label": volume.label, "synthetic": True}))
    items = discover_items(tmp_path, "syn")
    assert sorted((i.id, i.label) for i in items) == [("covid_00001", "covid"), ("normal_00000", "normal")]
    assert items[0].load().label in ("covid", "normal")
    with pytest.raises(CTSynthError, match="no CT studies"):
        discover_items(_empty(tmp_path), "syn")


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder

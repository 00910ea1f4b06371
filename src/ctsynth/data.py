"""PyTorch datasets over a prepared cache (``ctsynth prepare``), independent of Lightning.

API (each item is ``{"image": float32 tensor (1, z, y, x) in [-1, 1], "label": int, "id": str}``; the
class index is the label's position in ``config.data.labels``)::

    from ctsynth.data import CacheVolumes, CachePatchDataset, Augment
    volumes = CacheVolumes(prep_dir, split="held_out")              # whole volumes, no augmentation
    patches = CachePatchDataset(prep_dir, patch=(32, 96, 96), split="train", seed=0,
                                augment=Augment())                  # random patches, augmented
    item = patches[k]                                               # a pure function of (seed, k)

Item ``k`` is a pure function of ``(seed, k)``: its study is ``k mod n_studies`` (shuffling is the
sampler's job), its patch position and augmentation are drawn from a generator seeded with
``(seed, k)``. So the same seed gives the same items whatever the number of workers, their order, or a
resume mid-epoch; no ``worker_init_fn`` is needed. ``len(patches)`` is ``n_studies * patches_per_study``.

Reads are memory-mapped: a patch reads only its own bytes of the int16 cache file, so memory does not grow
with the volume size; the HU -> [-1, 1] mapping is :func:`ctsynth.preprocess.window.normalise` with the
cache's window.

Augmentation (:class:`Augment`, MONAI transforms), small on purpose because the data are anatomy:

- ``RandAffine``: rotation up to ``rotate_deg`` (3 degrees) in the axial plane and 1 degree out of it,
  scaling by up to ``scale`` (5%): patient positioning and body size vary this much between scans. A patch
  is read with a margin, transformed, and cropped back, so no padding shows in it.
- ``RandShiftIntensity`` / ``RandScaleIntensity``: up to 0.01 (about 13 HU) shift and 2% scale in
  normalised units, the order of calibration differences between scanners; larger changes would move
  tissue classes (fat vs water) that the model must learn exactly.
- No left-right flip by default: the chest is not mirror-symmetric (heart and aorta on the left, three
  right and two left lobes, the right main bronchus steeper), and a flipped scan is situs inversus, which
  the model would then learn to generate. ``flip_lr=True`` exists for experiments only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import CTSynthError
from .preprocess.cache import load_cached_volume, read_manifest
from .preprocess.window import normalise


@dataclass(frozen=True)
class Augment:
    """Augmentation settings (see the module docstring for why these sizes and why no flip)."""

    prob: float = 0.8
    rotate_deg: float = 3.0
    tilt_deg: float = 1.0
    scale: float = 0.05
    intensity_shift: float = 0.01
    intensity_scale: float = 0.02
    flip_lr: bool = False

    def margin(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Voxels to read around a patch so that rotation/scaling never samples outside it."""
        angle = math.radians(max(self.rotate_deg, self.tilt_deg))
        frac = (1.0 + self.scale) * (math.cos(angle) + math.sin(angle)) - 1.0
        return tuple(int(math.ceil(frac * max(shape) / 2)) + 1 for _ in shape)  # type: ignore[return-value]

    def build(self):
        """The MONAI transform chain for a (1, z, y, x) tensor (import inside: MONAI is heavy)."""
        from monai.transforms import Compose, RandAffine, RandAxisFlip, RandScaleIntensity, RandShiftIntensity

        # MONAI's first rotation angle turns about spatial dim 0 (z), i.e. in the axial (y, x) plane.
        chain = [
            RandAffine(prob=self.prob,
                       rotate_range=(math.radians(self.rotate_deg), math.radians(self.tilt_deg),
                                     math.radians(self.tilt_deg)),
                       scale_range=(self.scale,) * 3, mode="bilinear", padding_mode="border"),
            RandShiftIntensity(offsets=self.intensity_shift, prob=self.prob),
            RandScaleIntensity(factors=self.intensity_scale, prob=self.prob),
        ]
        if self.flip_lr:
            chain.append(RandAxisFlip(prob=0.5))
        return Compose(chain)


def _item_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


class _CacheDataset(Dataset):
    def __init__(self, prep_dir: str | Path, *, split: str | None, entries: list[dict[str, Any]] | None,
                 augment: Augment | None, seed: int) -> None:
        self.prep_dir = Path(prep_dir)
        manifest = read_manifest(self.prep_dir)
        self.window = tuple(manifest.config.data.hu_window)
        self.labels = tuple(manifest.config.data.labels)
        self.entries = list(entries) if entries is not None else manifest.entries(split)
        if not self.entries:
            raise CTSynthError(f"the cache has no {split or ''} studies".replace("  ", " "), self.prep_dir,
                               "prepare more studies or lower data.held_out_fraction")
        index = {name: i for i, name in enumerate(self.labels)}
        bad = sorted({str(e.get("label")) for e in self.entries if e.get("label") not in index})
        if bad:
            raise CTSynthError(f"cache has studies labelled {bad}, not in its config's labels {list(self.labels)}",
                               self.prep_dir, "re-run `ctsynth prepare` with the right labels")
        self.label_index = index
        self.augment = augment
        self.seed = int(seed)
        self._transform = None

    def _augmented(self, image: torch.Tensor, k: int) -> torch.Tensor:
        if self.augment is None:
            return image
        if self._transform is None:
            self._transform = self.augment.build()
        self._transform.set_random_state(seed=_item_seed(self.seed, k) % (2 ** 32))
        out = self._transform(image)
        return torch.as_tensor(out.as_tensor() if hasattr(out, "as_tensor") else out, dtype=torch.float32)

    def _item(self, entry: dict[str, Any], hu: np.ndarray, k: int) -> dict[str, Any]:
        image = torch.from_numpy(normalise(hu, self.window))[None]
        image = self._augmented(image, k)
        return {"image": image.contiguous(), "label": self.label_index[entry["label"]], "id": entry["id"]}


class CacheVolumes(_CacheDataset):
    """Whole cached volumes, ``(1, z, y, x)`` in [-1, 1]; item ``k`` is study ``k``."""

    def __init__(self, prep_dir: str | Path, *, split: str | None = None,
                 entries: list[dict[str, Any]] | None = None, augment: Augment | None = None, seed: int = 0):
        super().__init__(prep_dir, split=split, entries=entries, augment=augment, seed=seed)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, k: int) -> dict[str, Any]:
        entry = self.entries[k]
        hu = np.asarray(load_cached_volume(self.prep_dir, entry).hu)
        return self._item(entry, hu, k)


class CachePatchDataset(_CacheDataset):
    """Random patches of ``patch`` (z, y, x) voxels (clipped to the volume's shape); see the module docstring."""

    def __init__(self, prep_dir: str | Path, *, patch: tuple[int, int, int], split: str | None = "train",
                 entries: list[dict[str, Any]] | None = None, augment: Augment | None = None, seed: int = 0,
                 patches_per_study: int = 1):
        super().__init__(prep_dir, split=split, entries=entries, augment=augment, seed=seed)
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise CTSynthError(f"patch must be three positive sizes (z, y, x), got {patch}", None,
                               "set autoencoder.patch in the config")
        self.patches_per_study = max(int(patches_per_study), 1)

    def __len__(self) -> int:
        return len(self.entries) * self.patches_per_study

    def __getitem__(self, k: int) -> dict[str, Any]:
        entry = self.entries[k % len(self.entries)]
        hu = load_cached_volume(self.prep_dir, entry).hu  # memory-mapped
        rng = np.random.default_rng(_item_seed(self.seed, k))
        size = tuple(min(p, n) for p, n in zip(self.patch, hu.shape))
        start = [int(rng.integers(0, n - p + 1)) for p, n in zip(size, hu.shape)]
        if self.augment is None:
            crop = np.asarray(hu[tuple(slice(s, s + p) for s, p in zip(start, size))])
            return self._item(entry, crop, k)
        # Read a margin around the patch (edge-padded at the volume's border), transform, crop back.
        margin = self.augment.margin(size)
        lo = [s - m for s, m in zip(start, margin)]
        hi = [s + p + m for s, p, m in zip(start, size, margin)]
        region = np.asarray(hu[tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, hu.shape))])
        pad = [(max(-a, 0), max(b - n, 0)) for a, b, n in zip(lo, hi, hu.shape)]
        if any(p != (0, 0) for p in pad):
            region = np.pad(region, pad, mode="edge")
        item = self._item(entry, region, k)
        crop = tuple(slice(m, m + p) for m, p in zip(margin, size))
        item["image"] = item["image"][(slice(None),) + crop].contiguous()
        return item


__all__ = ["Augment", "CacheVolumes", "CachePatchDataset"]


SHIFT_STREAM = 100  # the shift's own stream of a training sample's draws (the cascade uses 0 and its levels)
ZOOM_STREAM = 101  # the zoom's own stream
FLIP_STREAM = 102  # the detail models' flips


def random_shifts(volumes: torch.Tensor, sample_ids: list[int], seed: int,
                  max_shift: tuple[int, int, int]) -> torch.Tensor:
    """Each volume ``(b, c, z, y, x)`` moved by a whole-voxel offset drawn uniformly in ``[-m, m]`` per axis
    (``max_shift`` = m per axis), the border replicated: the same chest cropped a few voxels off, as another
    crop of the same patient would be.

    For the wavelet cascade's training volumes (``diffusion.augment_shift``): with a few hundred crops its base
    model sees each one hundreds of times and starts to reproduce them; a shifted crop is not the stored one.
    Whole voxels only, so no resampling blur reaches the detail bands. The offset of sample ``g`` comes from
    its own generator (:func:`ctsynth.models.diffusion.sample_generator`, stream ``SHIFT_STREAM``), so a resumed
    run and any split into micro-batches or ranks draw the same offsets.
    """
    from .models.diffusion import sample_generator

    if not any(max_shift):
        return volumes
    pad = [m for m in reversed(max_shift) for _ in range(2)]  # F.pad order: x, x, y, y, z, z
    padded = torch.nn.functional.pad(volumes, pad, mode="replicate")
    z, y, x = volumes.shape[2:]
    out = torch.empty_like(volumes)
    for k, g in enumerate(sample_ids):
        gen = sample_generator(seed, g, stream=SHIFT_STREAM)
        d = [int(torch.randint(-m, m + 1, (), generator=gen)) if m else 0 for m in max_shift]
        a = [m - dk for m, dk in zip(max_shift, d)]  # content moves by +d: read from m - d in the padded volume
        out[k] = padded[k, :, a[0]:a[0] + z, a[1]:a[1] + y, a[2]:a[2] + x]
    return out


def random_zooms(volumes: torch.Tensor, sample_ids: list[int], seed: int, amount: float) -> torch.Tensor:
    """Each volume ``(b, c, z, y, x)`` scaled about its centre by a factor drawn uniformly in ``[1 - amount,
    1 + amount]`` (one factor for all three axes; trilinear, border replicated): the same chest a few percent
    larger or smaller, as another patient's would be.

    For the wavelet cascade's base model only (``diffusion.augment_zoom``): a shift of a few voxels moves its
    8x coarser band by under half of one of its voxels, which did not stop it reproducing its training bands
    (docs/quality.md); a zoom moves the whole layout. The detail models keep the unzoomed volume: the
    interpolation would blur the texture they learn. Sample ``g``'s factor comes from its own generator
    (stream ``ZOOM_STREAM``), as :func:`random_shifts`' offsets do.
    """
    from .models.diffusion import sample_generator

    if amount <= 0:
        return volumes
    factors = []
    for g in sample_ids:
        u = float(torch.rand((), generator=sample_generator(seed, g, stream=ZOOM_STREAM)))
        factors.append(1.0 + amount * (2.0 * u - 1.0))
    theta = torch.zeros(len(sample_ids), 3, 4, dtype=volumes.dtype, device=volumes.device)
    for k, f in enumerate(factors):  # output voxel at normalised position p reads the input at p / f
        theta[k, 0, 0] = theta[k, 1, 1] = theta[k, 2, 2] = 1.0 / f
    grid = torch.nn.functional.affine_grid(theta, list(volumes.shape), align_corners=False)
    return torch.nn.functional.grid_sample(volumes, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flips(volumes: torch.Tensor, sample_ids: list[int], seed: int, axes: tuple[bool, bool, bool]) -> torch.Tensor:
    """Each volume ``(b, c, z, y, x)`` mirrored along each axis ``axes`` enables, with probability 1/2 per axis,
    drawn per sample (stream ``FLIP_STREAM``, as :func:`random_shifts`' offsets).

    For the wavelet cascade's detail models only (``diffusion.augment_detail_flip``): what they learn is local
    (edges, vessels, texture given the band below), which looks the same mirrored, while a chest does not (the
    heart is on the left), so the base model keeps the volumes as they are. Against their memorising the
    training crops: the coarse levels' models see a whole crop's band at once, and after hundreds of passes
    they gave held-out crops the details of training crops (docs/quality.md). A mirror of an exact copy is a
    lossless rearrangement, so no interpolation blur reaches the bands.
    """
    from .models.diffusion import sample_generator

    if not any(axes):
        return volumes
    out = volumes.clone()
    for k, g in enumerate(sample_ids):
        gen = sample_generator(seed, g, stream=FLIP_STREAM)
        draws = torch.rand(3, generator=gen)
        dims = [1 + a for a in range(3) if axes[a] and bool(draws[a] < 0.5)]  # axes of one volume (c, z, y, x)
        if dims:
            out[k] = torch.flip(volumes[k], dims)
    return out

"""One procedural chest CT: :func:`make_phantom_case`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..volume import CTVolume
from .airways_vessels import draw_lung_trees, lung_texture
from .anatomy import draw_anatomy
from .geometry import Grid
from .layout import derive_layout
from .lesions import add_lesions
from .params import STREAM_LESIONS, STREAM_NOISE, STREAM_TREES, case_rng, sample_params
from .scanner import apply_scanner
from .tissue import TISSUES


class _TissueMasks(Mapping):
    def __init__(self, labels: np.ndarray):
        self._labels = labels

    def __getitem__(self, name: str) -> np.ndarray:
        return self._labels == TISSUES[name]

    def __iter__(self) -> Iterator[str]:
        return iter(TISSUES)

    def __len__(self) -> int:
        return len(TISSUES)


@dataclass
class PhantomCase:
    """A phantom CT with its ground truth.

    ``volume``: float32 HU (z, y, x), z = 0 the most inferior slice, identity direction, origin centred.
    ``lesion_mask``: the voxels a lesion raised to at least -700 HU (ground glass), noise-free, before
    vessels, blur and noise (see :mod:`ctsynth.phantom.lesions`). ``lung_mask``: both lungs,
    lesions, intrapulmonary vessels and bronchi included. ``lesion_fraction`` = lesion voxels / lung
    voxels. ``tissue_labels``: uint8 codes of :data:`ctsynth.phantom.tissue.TISSUES` (dominant tissue of
    each voxel before blur and noise); ``tissue_masks`` gives them as boolean masks by name.
    """

    volume: CTVolume
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    lesion_fraction: float
    params: dict[str, Any]
    tissue_labels: np.ndarray = field(repr=False)

    @property
    def tissue_masks(self) -> Mapping[str, np.ndarray]:
        """Boolean mask per tissue name, computed when asked for (a 512 case has 13 of them)."""
        return _TissueMasks(self.tissue_labels)

    @property
    def label(self) -> str:
        return self.params["label"]


def make_phantom_case(seed: int, label: str = "normal", size: int = 512, depth: int | None = None) -> PhantomCase:
    """Build one chest CT phantom. Same arguments, bit-identical result.

    The anatomy depends on ``seed`` only (not on ``label``): a COVID case and a normal case with the same
    seed share their body, and differ by the lesions alone.
    """
    p = sample_params(seed, label, size, depth)
    grid = Grid(size=size, depth=p["depth"], pixel_mm=p["pixel_mm"], slice_mm=p["slice_mm"])
    layout = derive_layout(p)
    anatomy = draw_anatomy(p, grid, layout)
    trees_rng = case_rng(seed, STREAM_TREES)
    lung = anatomy.lung_side > 0
    anatomy.hu += lung_texture(p, grid, trees_rng) * lung
    if label == "covid":
        lesion_mask, info = add_lesions(anatomy.hu, anatomy.lung_side, anatomy.cavity | lung, grid,
                                        case_rng(seed, STREAM_LESIONS))
        p["lesions"] = info
    else:
        lesion_mask = np.zeros(grid.shape, dtype=bool)
    draw_lung_trees(anatomy, p, trees_rng)
    hu = apply_scanner(anatomy.hu, grid, p["scanner"], case_rng(seed, STREAM_NOISE))
    n_lung = int(lung.sum())
    fraction = float(lesion_mask.sum()) / n_lung if n_lung else 0.0
    p["lesion_fraction"] = fraction
    volume = CTVolume(
        hu=hu, spacing_mm=(grid.slice_mm, grid.pixel_mm, grid.pixel_mm), origin_mm=grid.origin_mm,
        direction=np.eye(3), label=label, source=f"ctsynth phantom seed={seed}",
        meta={"phantom_seed": int(seed), "synthetic": True},
    )
    return PhantomCase(volume=volume, lesion_mask=lesion_mask, lung_mask=lung, lesion_fraction=fraction,
                       params=p, tissue_labels=anatomy.labels)

"""Upscaling a CT volume with a trained super-resolution run (``ctsynth upscale``), tiled, geometry and HU kept.

:func:`upscale_volume` applies the run's in-plane network, then its depth network (the order of Georgescu et
al. 2020), each skipped at a factor of 1. Per network, the output is

    trilinear resampling of the HU volume (:func:`ctsynth.preprocess.resample.resample_volume`, which also
    gives the new grid: the same physical extent, spacing / factor, the origin moved to the new first voxel
    centre, the direction unchanged)  +  the network's correction (:meth:`SuperResolution3D.corrections`)
    computed on the volume clipped to the run's HU window and mapped to [-1, 1], scaled back to HU.

So HU outside the window (metal, dense bone, air below -1024) keep their interpolated value, and a volume of
any size, spacing or origin, real or generated, goes through. The corrections are computed in tiles of the
coarse grid, each read with a halo of the network's receptive radius (:func:`tiled_corrections`): every
output voxel then sees exactly the inputs it would see untiled, so the tiled result equals the untiled one
up to float rounding, and memory is bounded by the tile, not the volume (a 48 x 512 x 512 output at the
default tile, in-plane x4 and 32 channels, needs about 2.5 GB).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CTSynthError
from .models.sr import AXES, SuperResolution3D
from .preprocess.window import normalise
from .runs import load_sr_networks, read_run
from .volume import CTVolume

DEFAULT_TILE = (16, 64, 64)  # coarse voxels (z, y, x) per tile, halo not counted


def _starts(n: int, tile: int) -> list[int]:
    return list(range(0, n, max(1, tile)))


@torch.no_grad()
def tiled_corrections(net: SuperResolution3D, x: torch.Tensor, tile: tuple[int, int, int] | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The network's output correction for ``x`` ``(1, 1, z, y, x)`` on the fine grid, computed tile by tile
    (``tile``: coarse voxels per axis, None: the whole volume at once) and assembled on the CPU."""
    scale, halo, shape = net.scale, net.receptive_radius, tuple(x.shape[-3:])
    tile = shape if tile is None else tuple(int(t) for t in tile)
    if len(tile) != 3 or min(tile) < 1:
        raise CTSynthError(f"the tile must be three positive sizes (z, y, x), got {tile}", fix="use e.g. 16,64,64")
    out = torch.zeros(1, 1, *(n * s for n, s in zip(shape, scale)))
    for corner in itertools.product(*(_starts(n, t) for n, t in zip(shape, tile))):
        lo = [max(0, c - halo) for c in corner]
        hi = [min(n, c + t + halo) for c, t, n in zip(corner, tile, shape)]
        window = x[(..., *(slice(a, b) for a, b in zip(lo, hi)))].to(device)
        corr = net.corrections(window)[1].float().cpu()
        ends = [min(n, c + t) for c, t, n in zip(corner, tile, shape)]
        keep = tuple(slice((c - a) * s, (e - a) * s) for c, a, e, s in zip(corner, lo, ends, scale))
        place = tuple(slice(c * s, e * s) for c, e, s in zip(corner, ends, scale))
        out[(0, 0, *place)] = corr[(0, 0, *keep)]
    return out


def apply_network(volume: CTVolume, net: SuperResolution3D, window: tuple[float, float],
                  tile: tuple[int, int, int] | None = DEFAULT_TILE, device: torch.device | str = "cpu") -> CTVolume:
    """One network on one volume: trilinear in HU plus the network's correction (see the module docstring)."""
    from .preprocess.resample import resample_volume

    shape = tuple(n * s for n, s in zip(volume.shape, net.scale))
    base = resample_volume(volume, shape=shape, order=1, antialias=False)
    x = torch.from_numpy(normalise(np.asarray(volume.hu, dtype=np.float32), window))[None, None]
    corr = tiled_corrections(net, x, tile, device)[0, 0].numpy()
    half_width = (window[1] - window[0]) / 2.0
    return base.with_hu((base.hu + half_width * corr).astype(np.float32))


class Upscaler:
    """A finished ``sr`` run, ready to upscale: :meth:`load`, then :meth:`upscale`."""

    def __init__(self, run_dir: Path, info: dict[str, Any], networks: dict[str, SuperResolution3D]) -> None:
        self.run_dir, self.info, self.networks = run_dir, info, networks
        self.window = tuple(float(w) for w in info["hu_window"])
        self.factors = {axis: networks[axis].factor if axis in networks else 1 for axis in AXES}

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "Upscaler":
        run_dir = Path(run_dir)
        info, config = read_run(run_dir)
        if config.model != "sr":
            raise CTSynthError(f"this run is a '{config.model}' model, not a super-resolution one", run_dir,
                               "give the --out folder of `ctsynth train PREP --config sr`")
        return cls(run_dir, info, load_sr_networks(run_dir, config, device))

    def check_factors(self, inplane: int | None, depth: int | None) -> dict[str, int]:
        """The requested factors (None: the run's own), each the run's or 1."""
        wanted = {"inplane": self.factors["inplane"] if inplane is None else int(inplane),
                  "depth": self.factors["depth"] if depth is None else int(depth)}
        for axis, f in wanted.items():
            if f not in (1, self.factors[axis]):
                raise CTSynthError(f"this run upscales {axis} by {self.factors[axis]}, not {f}", self.run_dir,
                                   f"use {self.factors[axis]} or 1, or train an sr run with sr.{axis}_factor: {f}")
        return wanted

    def upscale(self, volume: CTVolume, inplane: int | None = None, depth: int | None = None,
                tile: tuple[int, int, int] | None = DEFAULT_TILE) -> CTVolume:
        """``volume`` upscaled in-plane, then in depth (float32 HU, the same physical extent)."""
        wanted = self.check_factors(inplane, depth)
        device = next(iter(self.networks.values())).fine[0].weight.device if self.networks else "cpu"
        out = volume
        for axis in AXES:
            if wanted[axis] > 1:
                out = apply_network(out, self.networks[axis], self.window, tile, device)
        meta = {**volume.meta, "upscaled_by": [wanted["depth"], wanted["inplane"], wanted["inplane"]],
                "sr_run_config_hash": self.info["config_hash"]}
        return CTVolume(hu=out.hu, spacing_mm=out.spacing_mm, origin_mm=out.origin_mm, direction=out.direction,
                        label=volume.label, source=volume.source, meta=meta)

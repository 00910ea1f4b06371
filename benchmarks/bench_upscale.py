"""Time and peak memory of `ctsynth upscale` for one 48 x 512 x 512 output, tiled as the command does.

    python benchmarks/bench_upscale.py                       # the sr preset's in-plane x4 network, 48x128x128 in
    python benchmarks/bench_upscale.py --depth 24 --depth-factor 2   # 24x128x128 -> 48x512x512, both networks

The networks are the ``sr`` preset's, untrained (time and memory do not depend on the weights); the input a
random volume. Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, else the process's peak RSS
(:class:`ctsynth.estimate.PeakMemory`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ctsynth.config import load_config
from ctsynth.estimate import PeakMemory
from ctsynth.models.sr import build_sr
from ctsynth.upscale import DEFAULT_TILE, Upscaler
from ctsynth.volume import CTVolume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=48, help="input slices (default 48)")
    parser.add_argument("--depth-factor", type=int, default=1)
    parser.add_argument("--tile", type=int, nargs=3, default=list(DEFAULT_TILE))
    args = parser.parse_args()
    config = load_config("sr")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    nets = {"inplane": build_sr(config, "inplane").to(device).eval()}
    if args.depth_factor > 1:
        nets["depth"] = build_sr(config, "depth").to(device).eval()
    up = Upscaler(None, {"hu_window": [-1024, 1500], "config_hash": "bench"}, nets)  # type: ignore[arg-type]
    volume = CTVolume(hu=np.random.default_rng(0).normal(-300, 300, (args.depth, 128, 128)).astype(np.float32),
                      spacing_mm=(5.0, 2.8, 2.8))
    memory = PeakMemory()
    memory.reset()
    t0 = time.perf_counter()
    out = up.upscale(volume, depth=args.depth_factor, tile=tuple(args.tile))
    seconds = time.perf_counter() - t0
    print(json.dumps({"in": list(volume.shape), "out": list(out.shape), "seconds": round(seconds, 1),
                      "peak_mb": round(memory.read_mb()), "memory": memory.kind, "tile": args.tile,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

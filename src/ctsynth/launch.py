"""How Lightning Fabric runs (devices, nodes, strategy, precision): the same flags for `train` and `generate`.

Its own module because both use it: generating from a run must not import the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import CTSynthError

STRATEGIES = ("auto", "ddp", "fsdp")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


@dataclass
class LaunchOptions:
    """How Fabric runs: the same flags for `train` and `generate`."""

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None  # None: the config's train.precision


def make_fabric(opts: LaunchOptions, precision: str):
    """Create and launch a Fabric; with several devices this starts the other ranks (re-running the command)."""
    from lightning.fabric import Fabric

    if opts.strategy not in STRATEGIES:
        raise CTSynthError(f"unknown strategy '{opts.strategy}'", fix=f"use one of {list(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise CTSynthError(f"unknown precision '{precision}'", fix=f"use one of {list(PRECISIONS)}")
    if opts.strategy == "fsdp":
        raise CTSynthError(
            "--strategy fsdp is not supported yet: the EMA and the safetensors checkpoints need whole (unsharded) "
            "parameters on every rank", fix="use --strategy ddp (the lung and full models fit one 80 GB GPU each)")
    strategy: Any = opts.strategy
    if strategy == "ddp" and (opts.accelerator == "cpu" or not torch.cuda.is_available()):
        from lightning.fabric.strategies import DDPStrategy
        strategy = DDPStrategy(process_group_backend="gloo")
    try:
        fabric = Fabric(accelerator=opts.accelerator, devices=opts.devices, num_nodes=opts.num_nodes,
                        strategy=strategy, precision=precision)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CTSynthError(f"cannot start training with these launcher settings ({exc})",
                           fix="check --accelerator/--devices/--strategy/--precision for this machine") from exc
    fabric.launch()
    return fabric

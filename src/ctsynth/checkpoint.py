"""Training checkpoints that load without unpickling: safetensors for tensors, JSON for everything else.

Layout of one checkpoint (written atomically as a folder, so it appears whole or not at all)::

    RUN/<stage>/ckpt-<step:08d>/weights.safetensors    "<model>.<param>" for every model (net, EMA, discriminator)
    RUN/<stage>/ckpt-<step:08d>/optimizer.safetensors  every tensor of every optimizer state, flattened
    RUN/<stage>/ckpt-<step:08d>/state.json             step, config, HU window, RNG states, the optimizers'
                                                        non-tensor state, anything else the loop needs

RNG states are saved so that a resumed CPU run is bit-identical to an uninterrupted one.

Every file is serialised in memory first and then written (:func:`write_safetensors`, :func:`save_checkpoint`),
so a write that fails (a full disk) is one :class:`CTSynthError` that names the path and says how much the write
needed and how much was free, while the temporary is removed and the previous checkpoint stays as it was.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import CTSynthError
from .io.atomic import atomic_dir, atomic_file, os_error_to_ctsynth

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})$")
STATE = "state.json"
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"


def flatten_state_dicts(models: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"net": sd, "ema": sd}`` -> ``{"net.<key>": tensor, ...}`` (contiguous CPU copies, as safetensors wants)."""
    return {f"{name}.{key}": value.detach().to("cpu").contiguous().clone()
            for name, sd in models.items() for key, value in sd.items()}


def unflatten_state_dicts(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, rest = key.partition(".")
        out.setdefault(name, {})[rest] = value
    return out


def optimizer_to_flat(name: str, state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a torch optimizer state dict into tensors (for safetensors) and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state_dict["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{pid}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(name: str, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, _, field = key[len(prefix):].partition(".")
            state.setdefault(int(pid), {})[field] = value
    for pid, values in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as JSON-able values."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]])


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _write_all(files: dict[Path, bytes], target: Path) -> None:
    """Write every payload; a failed write is a one-line error naming ``target`` (with, on a full disk, how
    much the whole write needed and how much was free)."""
    for path, data in files.items():
        try:
            _write_bytes(path, data)
        except OSError as exc:
            error = os_error_to_ctsynth(exc, target)
            if exc.errno == errno.ENOSPC:
                free = shutil.disk_usage(target.parent).free
                error = CTSynthError(f"{error.problem} ({_megabytes(sum(map(len, files.values())))} needed, "
                                     f"{_megabytes(free)} free)", error.path, error.fix)
            raise error from exc


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (whole or not at all; a full disk is one line, see above)."""
    path = Path(path)
    data = save(tensors, metadata=metadata)
    with atomic_file(path) as tmp:
        _write_all({tmp: data}, path)


def save_checkpoint(stage_dir: Path, step: int, models: dict[str, dict[str, torch.Tensor]],
                    optimizers: dict[str, dict[str, Any]], state: dict[str, Any], keep_last: int) -> Path:
    """Write ``stage_dir/ckpt-<step>`` atomically, then delete all but the newest ``keep_last`` checkpoints."""
    target = Path(stage_dir) / f"ckpt-{step:08d}"
    opt_tensors: dict[str, torch.Tensor] = {}
    opt_rest: dict[str, Any] = {}
    for name, sd in optimizers.items():
        tensors, rest = optimizer_to_flat(name, sd)
        opt_tensors.update(tensors)
        opt_rest[name] = rest
    full_state = dict(state, step=step, optimizers=opt_rest)
    payloads = {WEIGHTS: save(flatten_state_dicts(models)), OPTIMIZER: save(opt_tensors),
                STATE: json.dumps(full_state).encode("utf-8")}
    with atomic_dir(target, overwrite=True) as tmp:
        _write_all({tmp / name: data for name, data in payloads.items()}, target)
    for old in list_checkpoints(stage_dir)[:-max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(stage_dir: Path) -> list[Path]:
    """Checkpoint folders of a stage, oldest first."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    return sorted(p for p in stage_dir.iterdir() if p.is_dir() and CKPT_PATTERN.match(p.name))


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]], dict[str, Any]]:
    """``(models, optimizer state dicts, state)`` of one checkpoint folder; a damaged one is a CTSynthError."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_text())
        models = unflatten_state_dicts(load_file(str(path / WEIGHTS)))
        opt_tensors = load_file(str(path / OPTIMIZER))
        optimizers = {name: optimizer_from_flat(name, opt_tensors, rest)
                      for name, rest in state.pop("optimizers", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise CTSynthError(f"checkpoint is missing or damaged ({type(exc).__name__}: {exc})", path,
                           "delete this checkpoint folder to resume from the previous one") from exc
    return models, optimizers, state


def load_latest_checkpoint(stage_dir: Path) -> tuple[Path, tuple] | None:
    """The newest checkpoint that loads, falling back over damaged ones with a warning; None if there is none."""
    for path in reversed(list_checkpoints(stage_dir)):
        try:
            return path, load_checkpoint(path)
        except CTSynthError as exc:
            warnings.warn(f"skipping damaged checkpoint: {exc}", stacklevel=2)
    return None


def save_weights(path: Path, models: dict[str, dict[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """Final weights of a stage (safetensors, atomic)."""
    write_safetensors(path, flatten_state_dicts(models), metadata)


def load_weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    try:
        return unflatten_state_dicts(load_file(str(path)))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CTSynthError(f"model weights are missing or damaged ({type(exc).__name__}: {exc})", path,
                           "rerun the `ctsynth train` command of this run to rewrite them") from exc

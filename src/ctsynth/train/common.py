"""What the stage runner and the stages share: stop signals, the NaN check, the deterministic data order, logs.

Data order is a pure function of ``(seed, step)``: global sample ``g`` (counted over steps, micro-batches,
ranks and batch slots) is study ``permutation(seed, epoch)[g mod n]`` (a fresh shuffle per epoch), and its
patch and augmentation come from :mod:`ctsynth.data`, a pure function of ``(seed, index)``. So a resumed run
sees exactly the batches an uninterrupted run would, whatever the number of workers.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import CTSynthError
from ..io.atomic import atomic_write_text, os_error_to_ctsynth


class StopFlag:
    """SIGTERM/SIGINT set a flag the loop checks after each step, so a checkpoint is written before exiting."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, the loop still stops on its own
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nctsynth: got {signal.Signals(signum).name}; writing a checkpoint, then stopping", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` with ``requires_grad`` off inside the block, on again after it: an adversary's score in the
    generator's loss then sends gradients to the generator only (pass the raw module, not the DDP-wrapped
    one, so its hooks do not run)."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


def skip_reason(fabric, loss_finite: bool, clip: list[tuple[torch.nn.Module, Any, float]]) -> str | None:
    """Why this step must not update the weights (None when it may), agreed by all ranks in one collective.

    ``clip``: ``(module, optimizer, max_norm)`` whose gradients are clipped to ``max_norm`` (not clipped when
    it is 0) and checked. Under bf16/fp16 mixed precision a gradient can overflow while the loss is finite;
    such a step is skipped like a non-finite loss instead of stopping the run (Fabric's clipping raises on a
    non-finite norm by default) or writing NaN into the weights.
    """
    reason = None if loss_finite else "non-finite loss"
    for module, optimizer, max_norm in clip if reason is None else ():
        norm = fabric.clip_gradients(module, optimizer, max_norm=max_norm if max_norm > 0 else float("inf"),
                                     error_if_nonfinite=False)
        if not torch.isfinite(norm):
            reason = "non-finite gradient"
            break
    if fabric.strategy.reduce_boolean_decision(reason is not None, all=False):
        return reason or "non-finite on another rank"
    return None


def study_for_sample(k: int, n: int, seed: int) -> int:
    """The study (index into the training list) that global sample ``k`` comes from: a fresh shuffle per epoch."""
    epoch, pos = divmod(k, n)
    return int(np.random.default_rng([seed, epoch]).permutation(n)[pos])


def sample_ids(step: int, micro: int, accum: int, rank: int, world: int, batch: int) -> list[int]:
    """Global sample numbers of one micro-batch of one rank."""
    t = step * accum + micro
    return [(t * world + rank) * batch + b for b in range(batch)]


class StepSampler(Sampler[int]):
    """Infinite sampler of this rank's dataset indices from a given step on (see the module docstring).

    Global sample ``g`` maps to index ``study + n * g`` of a :mod:`ctsynth.data` dataset, whose item ``k`` is
    study ``k mod n`` with its patch and augmentation drawn from ``(seed, k)``: a new patch for every ``g``.
    """

    def __init__(self, start_step: int, accum: int, rank: int, world: int, batch: int, n: int, seed: int) -> None:
        self.start_step, self.accum, self.rank, self.world, self.batch = start_step, accum, rank, world, batch
        self.n, self.seed = n, seed

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            for micro in range(self.accum):
                for g in sample_ids(step, micro, self.accum, self.rank, self.world, self.batch):
                    yield study_for_sample(g, self.n, self.seed) + self.n * g
            step += 1


def label_indices(entries: list[dict[str, Any]], labels: tuple[str, ...], prep_dir: Path) -> list[int]:
    index = {name: i for i, name in enumerate(labels)}
    bad = sorted({str(e.get("label")) for e in entries if e.get("label") not in index})
    if bad:
        raise CTSynthError(f"cache has studies labelled {bad}, not in the config's labels {list(labels)}",
                           prep_dir, "relabel the data or set data.labels in the config")
    return [index[e["label"]] for e in entries]


class JsonlLog:
    """Per-step metrics in ``<stage>/log.jsonl`` (rank 0 only): each completed step's record once.

    A run that goes back to a checkpoint at step N (a resume after a stop, a kill or a full disk; the NaN
    guard's restore) runs steps N+1... again. So :meth:`rewind` drops the records of completed steps after N
    (rewriting the file atomically; a line cut short by a kill goes too) and appends one event record, e.g.
    ``{"event": "resume", "step": N, "checkpoint": "ckpt-0000000N", "dropped": 3}``: the log reads as the run
    that made the final weights, and says where it was resumed. Records of skipped steps and events stay.
    """

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self._fh = None
        self._open()

    def _open(self) -> None:
        if self.enabled:
            try:
                self._fh = open(self.path, "a", encoding="utf-8")
            except OSError as exc:
                raise os_error_to_ctsynth(exc, self.path) from exc

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            try:
                self._fh.write(json.dumps(record) + "\n")
                self._fh.flush()
            except OSError as exc:
                raise os_error_to_ctsynth(exc, self.path) from exc

    def rewind(self, step: int, event: dict[str, Any]) -> None:
        """Drop the records of completed steps after ``step``, then append ``event`` (with ``step`` and
        ``dropped``, the number of records dropped). Nothing happens to a log that is empty or absent."""
        if self._fh is None or not self.path.is_file() or self.path.stat().st_size == 0:
            return
        self._fh.close()
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not ("skipped" in record or "event" in record
                                                    or int(record.get("step", 0)) <= step):
                dropped += 1
                continue
            kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))
        self._open()
        self.write({**event, "step": step, "dropped": dropped})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def progress_bar(enabled: bool, total: int | None, initial: int, desc: str):
    """A tqdm bar on stderr (rank 0); ``total=None`` (a time budget ends the stage) shows steps and rate only."""
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, unit="step")


def write_json(path: Path, value: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True))


def now() -> float:
    return time.perf_counter()


def gather_rng_states(fabric, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's RNG state (in rank order), so each rank resumes from its own stream."""
    if fabric.world_size == 1:
        return [state]
    gathered: list[Any] = [None] * fabric.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered

"""`ctsynth prepare`: every study under a data folder -> one int16 array of the config's shape in a cache.

Per study, one at a time (only one volume is alive at once, so peak memory does not grow with the number
of studies):

1. read it (``StudyRef.read``) into HU;
2. choose the region to keep, in mm along the array axes (:func:`study_box`):
   - ``lung`` mode: the lungs' bounding box (:func:`ctsynth.segment.lung_mask`, computed on a copy
     resampled to at least 2.5 x 2 x 2 mm, which is plenty for a box and several times faster) plus
     ``lung_margin_mm`` on every side. In-plane the box is then widened (never narrowed) about its centre
     to the aspect ratio of the target shape, so that the anatomy is scaled equally along y and x and never
     distorted; where the widened box passes the field of view it is shifted back inside, and only when it
     is larger than the field of view is the outside filled with air (-1024 HU). Along z the box is the
     lungs plus the margin, cut to the scan;
   - ``full`` mode: the whole field of view, widened in-plane to the target aspect ratio the same way.
3. resample that box to ``config.data.shape`` (z, y, x) (:func:`ctsynth.preprocess.resample.resample_box`,
   linear, anti-aliased): the z spacing is whatever puts the box's depth into ``shape[0]`` slices, and is
   stored per study;
4. record the fraction of voxels outside the HU window, clip to it, round to int16 and write
   ``studies/<key>.npy`` atomically (format: :mod:`ctsynth.preprocess.cache`).

The manifest is rewritten (atomically) after every study, so an interrupted run resumes where it stopped.

Skipping unchanged studies: ``source_hash`` is a SHA-256 of the study's files' relative names, sizes and
modification times (nanoseconds), plus the study kind. It is instant for 300 scans where hashing the
content would read every byte again; the cost is that a file rewritten with the same size and timestamp
is not noticed (``touch`` it to force a re-read). A rerun with the same data config re-reads only studies
whose hash changed (or whose array is missing) and updates labels and splits of the rest. A cache made
with another data config (``Config.data_hash``) is refused, so nothing is overwritten.

Studies that cannot be read, or where no lungs are found in ``lung`` mode, are skipped with a warning and
listed in the manifest's ``skipped`` list (a user with 300 scans wants the other 299 prepared and a clear
list of the one to look at); a cache with no usable study is an error.

Held-out split: :func:`ctsynth.split.patient_split` (by patient, stratified by label, hash-ordered) with
``data.held_out_fraction`` and ``split_seed``; the cache records it, and `evaluate` and training use it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import Config, DataConfig
from ..errors import CTSynthError
from ..split import patient_split
from ..segment import lung_mask
from ..volume import CTVolume
from .cache import (CacheManifest, is_cache_dir, read_manifest, study_key, write_manifest,
                    write_study_array)
from .resample import Box, resample_box, resample_volume
from .window import clip_fraction

AIR_HU = -1024.0
MASK_SPACING_MM = (2.5, 2.0, 2.0)


def source_hash(study: Any) -> str:
    """Hash of the study's files (relative names, sizes, mtimes) and kind; see the module docstring."""
    path = Path(study.path)
    files = list(study.files) if getattr(study, "files", None) else None
    if files is None:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    base = path if path.is_dir() else path.parent
    digest = hashlib.sha256(f"{study.kind}\n".encode())
    for file in sorted(Path(f) for f in files):
        try:
            st = file.stat()
        except OSError:
            continue
        try:
            name = file.relative_to(base).as_posix()
        except ValueError:
            name = file.name
        digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    digest.update(f"{getattr(study, 'series_uid', '') or ''}".encode())
    if (getattr(study, "options", None) or {}).get("skip_unreadable"):
        # A study read without its unreadable files is not the study a rerun without the option would read
        # (that one is refused, naming the file): the cache must not keep it as unchanged.
        digest.update(b"\nskip_unreadable")
    return digest.hexdigest()[:32]


def _widen_to_aspect(lo: np.ndarray, hi: np.ndarray, aspect_yx: float,
                     extent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Widen the (y, x) box about its centre to ``width / height = aspect_yx``; shift it into the field of
    view where it fits."""
    lo, hi = lo.copy(), hi.copy()
    height, width = hi[0] - lo[0], hi[1] - lo[1]
    if width < height * aspect_yx:
        grow = height * aspect_yx - width
        lo[1], hi[1] = lo[1] - grow / 2, hi[1] + grow / 2
    else:
        grow = width / aspect_yx - height
        lo[0], hi[0] = lo[0] - grow / 2, hi[0] + grow / 2
    for a in range(2):
        size = hi[a] - lo[a]
        if size <= extent[a]:
            shift = max(0.0, -lo[a]) - max(0.0, hi[a] - extent[a])
            lo[a], hi[a] = lo[a] + shift, hi[a] + shift
        else:  # larger than the field of view: centre it, air on both sides
            lo[a], hi[a] = (extent[a] - size) / 2, (extent[a] + size) / 2
    return lo, hi


def study_box(volume: CTVolume, data: DataConfig) -> Box:
    """The region (mm along z, y, x from the outer edge of voxel 0) that ``prepare`` keeps; see the module
    docstring. Raises CTSynthError when ``lung`` mode finds no lungs."""
    extent = np.asarray(volume.extent_mm, dtype=np.float64)
    aspect_yx = data.shape[2] / data.shape[1]
    if data.mode == "full":
        lo, hi = np.zeros(3), extent.copy()
    elif data.mode == "lung":
        spacing = tuple(max(s, m) for s, m in zip(volume.spacing_mm, MASK_SPACING_MM))
        coarse = resample_volume(volume, spacing_mm=spacing) if spacing != volume.spacing_mm else volume
        mask = lung_mask(coarse)
        if not mask.any():
            raise CTSynthError("no lungs found (no air-filled region inside the body below -320 HU)",
                               volume.source, "check that this is a chest CT in HU, or use a 'full' mode config")
        sp = np.asarray(coarse.spacing_mm)
        first = np.array([np.flatnonzero(mask.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1))])
        last = np.array([np.flatnonzero(mask.any(axis=a))[-1] for a in ((1, 2), (0, 2), (0, 1))])
        del mask, coarse
        lo = first * sp - data.lung_margin_mm
        hi = (last + 1) * sp + data.lung_margin_mm
        lo[0], hi[0] = max(lo[0], 0.0), min(hi[0], extent[0])
    else:
        raise CTSynthError(f"unknown data mode '{data.mode}'", None, "set data.mode to 'lung' or 'full'")
    lo[1:], hi[1:] = _widen_to_aspect(lo[1:], hi[1:], aspect_yx, extent[1:])
    return tuple((float(a), float(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def prepare_volume(volume: CTVolume, data: DataConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """One study -> (int16 HU array of ``data.shape``, manifest fields: spacing, box, clip fraction)."""
    box = study_box(volume, data)
    out = resample_box(volume, box, tuple(data.shape), fill=AIR_HU)  # type: ignore[arg-type]
    lo, hi = data.hu_window
    fraction = clip_fraction(out.hu, data.hu_window)
    hu = np.rint(np.clip(out.hu, lo, hi)).astype(np.int16)
    info = {"spacing_mm": [round(s, 6) for s in out.spacing_mm], "shape": list(hu.shape),
            "source_shape": list(volume.shape), "source_spacing_mm": [round(s, 6) for s in volume.spacing_mm],
            "box_mm": [[round(a, 3), round(b, 3)] for a, b in box], "clip_fraction": round(fraction, 8)}
    return hu, info


def unique_keys(ids: list[str]) -> dict[str, str]:
    """File keys for study ids: :func:`study_key`, plus a short hash of the id where two keys would collide
    (``a/b`` and ``a__b``, or ids differing only in characters that are replaced)."""
    counts = Counter(study_key(i) for i in ids)
    return {i: study_key(i) if counts[study_key(i)] == 1
            else f"{study_key(i)}-{hashlib.sha256(i.encode()).hexdigest()[:8]}" for i in ids}


def _check_labels(studies: list[Any], data: DataConfig, root: Path) -> None:
    unlabelled = [s.id for s in studies if not s.label]
    if unlabelled:
        first = ", ".join(unlabelled[:3]) + (" ..." if len(unlabelled) > 3 else "")
        raise CTSynthError(
            f"{len(unlabelled)} of {len(studies)} studies have no label (first: {first})", root,
            "give --labels FILE (a CSV with columns study,label) or put the studies in folders named after "
            f"their class ({', '.join(data.labels)})")
    foreign = [s for s in studies if s.label not in data.labels]
    if foreign:
        names = sorted({s.label for s in foreign})
        raise CTSynthError(
            f"label(s) {names} (study {foreign[0].id}) are not among the config's labels {list(data.labels)}",
            root, "map them with --label-map NAME=LABEL or fix the labels file")


def _check_data_config(data: DataConfig) -> None:
    if data.mode not in ("lung", "full"):
        raise CTSynthError(f"unknown data.mode '{data.mode}'", None, "set data.mode to 'lung' or 'full'")
    shape = tuple(data.shape)
    if len(shape) != 3 or any(not isinstance(n, int) or n < 1 for n in shape):
        raise CTSynthError(f"data.shape must be three positive integers (z, y, x), got {list(shape)}", None,
                           "fix data.shape in the config")
    lo, hi = data.hu_window
    if not -32768 <= lo < hi <= 32767:
        raise CTSynthError(f"data.hu_window {list(data.hu_window)} must be increasing and within int16", None,
                           "fix data.hu_window in the config, e.g. [-1024, 1500]")


def _open_cache(out: Path, config: Config) -> CacheManifest | None:
    """The existing manifest in ``out`` if it was made with the same data config; refuse anything else."""
    if is_cache_dir(out):
        old = read_manifest(out)
        if old.config.data_hash() != config.data_hash():
            raise CTSynthError(
                f"this cache was made with another data config ({old.config.name}, data hash "
                f"{old.config.data_hash()}; now {config.name}, {config.data_hash()}); nothing was changed", out,
                "give a new --out folder for this config")
        return old
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CTSynthError("the output exists and is not a ctsynth cache; nothing was written", out,
                           "give a new or empty --out folder")
    return None


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def prepare_cache(data: str | Path, config: Config, out: str | Path, *, labels: str | Path | None = None,
                  metadata: str | Path | None = None, label_map: str | dict[str, str] | None = None,
                  offset: float | None = None, spacing_mm: tuple[float, float, float] | None = None,
                  progress: bool = True, split_seed: int = 0,
                  discover: Callable[..., list[Any]] | None = None, series: Any = None,
                  skip_unreadable: bool = False) -> CacheManifest:
    """Build or update the cache in ``out`` from the studies under ``data``; see the module docstring.

    ``labels``, ``metadata``, ``label_map``, ``offset``, ``spacing_mm``, ``series`` (which series of a DICOM
    study, :mod:`ctsynth.io.dicom_select`) and ``skip_unreadable`` go to discovery (docs/io.md). Paths and
    reasons written to the manifest pass through discovery's redactor: no PatientID, StudyInstanceUID or
    AccessionNumber in clear.
    ``discover`` defaults to :func:`ctsynth.io.discover.discover` (its notes go to stderr); tests pass
    their own function returning study objects (``id, patient, kind, path, label, files, read()``).
    """
    root, out = Path(data), Path(out)
    _check_data_config(config.data)
    old = _open_cache(out, config)
    redact: Callable[[str], str] = str
    if discover is None:
        from ..io.discover import discover as discover_tree

        found = discover_tree(root, labels=labels, metadata=metadata, label_map=label_map, offset=offset,
                              spacing_mm=spacing_mm, series=series, skip_unreadable=skip_unreadable)
        for note in found.notes:
            _log(progress, f"ctsynth prepare: note: {note}")
        studies = found.studies
        redact = found.redact
    else:
        studies = discover(root, labels=labels, metadata=metadata, label_map=label_map)
    if not studies:
        raise CTSynthError("no CT studies found under this folder", root,
                           "point to a folder holding DICOM series, .nii/.nii.gz files or folders of .tif slices")
    _check_labels(studies, config.data, root)
    splits = patient_split(((s.id, s.patient, s.label) for s in studies), config.data.held_out_fraction,
                           seed=split_seed)
    present = {s.id for s in studies}
    # Entries by id: those of the previous run (for studies still present) until each is revisited, so a
    # manifest written mid-way never forgets a study whose array is already there.
    entries = {e["id"]: e for e in (old.studies if old else []) if e["id"] in present}
    previous = dict(entries)
    keys = unique_keys([s.id for s in studies])
    manifest = CacheManifest(config=config)
    n = len(studies)

    def save() -> None:
        manifest.studies = [entries[s.id] for s in studies if s.id in entries]
        write_manifest(out, manifest)

    for i, study in enumerate(studies, start=1):
        digest = source_hash(study)
        base = {"id": study.id, "patient": study.patient, "label": study.label, "split": splits[study.id],
                "source": redact(str(study.path)), "source_hash": digest}
        known = previous.get(study.id)
        if known and known.get("source_hash") == digest and known.get("file") == f"studies/{keys[study.id]}.npy" \
                and (out / known["file"]).is_file():
            entries[study.id] = {**known, **base}
            _log(progress, f"[{i}/{n}] {study.id}: unchanged, kept")
            continue
        entries.pop(study.id, None)
        try:
            volume = study.read()
        except (CTSynthError, OSError, ValueError, EOFError, RuntimeError, KeyError, IndexError) as exc:
            # Reader failures only (the readers raise CTSynthError; the others are a library's own errors
            # on a damaged file): one bad study must not stop the other 299.
            reason = str(exc) if isinstance(exc, CTSynthError) else f"{type(exc).__name__}: {exc}"
            manifest.skipped.append({"id": study.id, "source": redact(str(study.path)), "reason": redact(reason)})
            _log(True, f"ctsynth prepare: warning: skipped {study.id}: {reason}")
            continue
        try:
            hu, info = prepare_volume(volume, config.data)
        except CTSynthError as exc:
            manifest.skipped.append({"id": study.id, "source": redact(str(study.path)), "reason": redact(str(exc))})
            _log(True, f"ctsynth prepare: warning: skipped {study.id}: {exc}")
            continue
        finally:
            del volume
        file = write_study_array(out, study.id, hu, key=keys[study.id])
        del hu
        entries[study.id] = {**base, "file": file, **info}
        save()
        _log(progress, f"[{i}/{n}] {study.id}: {study.label}, {splits[study.id]}, "
                       f"clipped {info['clip_fraction']:.2%}")
    if not entries:
        listed = "; ".join(f"{s['id']}: {s['reason']}" for s in manifest.skipped[:2])
        raise CTSynthError(f"no study could be prepared ({listed})", root,
                           "fix or remove the studies named above")
    save()
    _remove_stale_arrays(out, old, manifest)
    return manifest


def _remove_stale_arrays(out: Path, old: CacheManifest | None, manifest: CacheManifest) -> None:
    """Delete arrays of studies that are no longer in the data (only files this cache's manifest named)."""
    if old is None:
        return
    keep = {e["file"] for e in manifest.studies}
    for entry in old.studies:
        rel = entry.get("file", "")
        if rel and rel not in keep and rel.startswith("studies/") and rel.endswith(".npy"):
            try:
                os.unlink(out / rel)
            except OSError:
                pass


def summarise(manifest: CacheManifest) -> str:
    """Studies per class per split, clip fractions and skipped studies, as printed by the CLI."""
    lines = []
    labels = list(manifest.config.data.labels)
    lines.append(f"{'split':<10}" + "".join(f"{lab:>10}" for lab in labels) + f"{'total':>10}")
    for split in ("train", "held_out"):
        entries = manifest.entries(split)
        counts = Counter(e["label"] for e in entries)
        lines.append(f"{split:<10}" + "".join(f"{counts.get(lab, 0):>10}" for lab in labels)
                     + f"{len(entries):>10}")
    fractions = [float(e.get("clip_fraction", 0.0)) for e in manifest.studies]
    if fractions:
        worst = max(manifest.studies, key=lambda e: float(e.get("clip_fraction", 0.0)))
        lines.append(f"clipped to the HU window {list(manifest.config.data.hu_window)}: mean "
                     f"{np.mean(fractions):.3%} of voxels, max {max(fractions):.3%} ({worst['id']})")
    shape = "x".join(str(s) for s in manifest.config.data.shape)
    lines.append(f"{len(manifest.studies)} studies cached as int16 HU, shape {shape} (z, y, x), "
                 f"mode {manifest.config.data.mode}")
    if manifest.skipped:
        lines.append(f"{len(manifest.skipped)} skipped:")
        lines.extend(f"  {s['id']}: {s['reason']}" for s in manifest.skipped)
    return "\n".join(lines)


__all__ = ["prepare_cache", "prepare_volume", "study_box", "source_hash", "summarise"]

"""Atomic writes: outputs appear whole or not at all.

Every writer goes through these helpers. A file is written under a temporary name in the same folder and
renamed over the target; a folder (a DICOM or TIFF series) is built under a temporary name and renamed
into place. On any failure the temporary is removed and an existing target is left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import CTSynthError


def _check_parent_writable(target: Path) -> None:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CTSynthError(f"cannot create the output folder ({exc.strerror})", parent,
                           "choose an output location you can write to") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CTSynthError("the output folder is not writable", parent,
                           "choose an output location you can write to, or fix its permissions")


def os_error_to_ctsynth(exc: OSError, path: Path) -> CTSynthError:
    """Turn a write failure into a one-line error naming the path and the fix."""
    if exc.errno == errno.ENOSPC:
        return CTSynthError("the disk is full; nothing was written", path, "free disk space or write elsewhere")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CTSynthError("permission denied; nothing was written", path, "choose an output location you can write to")
    return CTSynthError(f"could not write ({exc.strerror or exc}); nothing was written", path,
                        "check the output location")


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    The temporary keeps the target's suffixes (``.nii.gz`` stays ``.nii.gz``) so libraries that infer the
    format from the name behave.
    """
    target = Path(target)
    _check_parent_writable(target)
    suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error_to_ctsynth(exc, target) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_file(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    If ``target`` exists and ``overwrite`` is false, raises before writing anything. With ``overwrite``,
    the old folder is moved aside and only deleted once the new one is in place.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise CTSynthError("the output already exists; nothing was written", target,
                           "remove it or choose another output name")
    _check_parent_writable(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error_to_ctsynth(exc, target) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# The temporaries the helpers above leave behind when the process is killed (SIGKILL, power loss) before
# their cleanup runs: atomic_file's ".<name>.<8 random>.tmp<suffixes>" files, atomic_dir's
# ".<name>.<8 random>.tmp" folders and the ".<name>.old-<pid>" folder it moves an old target to.
_LEFTOVER = re.compile(r"^\..+\.(?:[a-z0-9_]{8}\.tmp(?:\..*)?|old-\d+)$")


def is_leftover(path: str | Path) -> bool:
    """Whether ``path`` is named as a temporary of :func:`atomic_file` or :func:`atomic_dir`."""
    return bool(_LEFTOVER.match(Path(path).name))


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporaries of interrupted atomic writes directly in ``folder``; returns what was removed.

    Only call it where no other process is writing (a resumed training run does, on rank 0, before anything
    else is written): a temporary being written at that moment would be removed under its writer.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if not is_leftover(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed

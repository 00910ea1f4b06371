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


def _check_parent_writable(target: Path, needed_bytes: int | None = None) -> None:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc, parent):
            raise os_error_to_ctsynth(exc, parent, needed_bytes) from exc
        raise CTSynthError(f"cannot create the output folder ({exc.strerror})", parent,
                           "choose an output location you can write to") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CTSynthError("the output folder is not writable", parent,
                           "choose an output location you can write to, or fix its permissions")


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile (tifffile) on a full disk
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def free_bytes(path: Path) -> int | None:
    """Free space on the device holding ``path`` (or its nearest existing parent), or None if unknown."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def is_disk_full(exc: BaseException, path: Path) -> bool:
    """Whether a write failed because the device (or the user's quota) is full.

    Libraries do not always keep the errno: pydicom re-raises ``OSError(text)`` with its own traceback in the
    text, numpy's ``tofile`` (used by tifffile) says "16384 requested and 14208 written". So the whole
    exception chain is searched for ENOSPC/EDQUOT or their messages, and a short write without an errno
    counts when the device is in fact (nearly) full.
    """
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in _DISK_FULL_ERRNOS:
            return True
        text = str(link)
        if "No space left on device" in text or "Disk quota exceeded" in text or "[Errno 28]" in text:
            return True
        if _SHORT_WRITE.search(text):
            free = free_bytes(path)
            return free is None or free < 16 * 1024 * 1024
    return False


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_full_error(path: Path, needed_bytes: int | None = None, written_bytes: int | None = None) -> CTSynthError:
    """The one message for a full disk: which path, how much it needs, how much is free."""
    free = free_bytes(Path(path))
    if needed_bytes:
        need = f"writing it needs about {_size(needed_bytes)}"
    elif written_bytes:
        need = f"it needs more than the {_size(written_bytes)} written before the disk filled"
    else:
        need = "it needs more space than is left"
    return CTSynthError(f"the disk is full: {need}, {_size(free)} free there; nothing was written", path,
                        "free disk space or write elsewhere")


def os_error_to_ctsynth(exc: BaseException, path: Path, needed_bytes: int | None = None,
                        written_bytes: int | None = None) -> CTSynthError:
    """Turn a write failure into a one-line error naming the path and the fix."""
    path = Path(path)
    if is_disk_full(exc, path):
        return disk_full_error(path, needed_bytes, written_bytes)
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CTSynthError("permission denied; nothing was written", path, "choose an output location you can write to")
    detail = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CTSynthError(f"could not write ({detail}); nothing was written", path, "check the output location")


def _written(tmp: Path) -> int:
    """Bytes in a temporary file or folder (what was written before a failure)."""
    try:
        if tmp.is_dir():
            return sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        return tmp.stat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def atomic_file(target: str | Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    The temporary keeps the target's suffixes (``.nii.gz`` stays ``.nii.gz``) so libraries that infer the
    format from the name behave. ``needed_bytes`` (an estimate) goes into the message if the disk fills.
    """
    target = Path(target)
    _check_parent_writable(target, needed_bytes)
    suffix = "".join(target.suffixes)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    except OSError as exc:
        raise os_error_to_ctsynth(exc, target, needed_bytes) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        written = _written(tmp)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) or (isinstance(exc, Exception) and not isinstance(exc, CTSynthError)
                                        and is_disk_full(exc, target)):
            raise os_error_to_ctsynth(exc, target, needed_bytes, written) from exc
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_file(target, needed_bytes=len(data)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    If ``target`` exists and ``overwrite`` is false, raises before writing anything. With ``overwrite``,
    the old folder is moved aside and only deleted once the new one is in place. ``needed_bytes`` (an
    estimate) goes into the message if the disk fills.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise CTSynthError("the output already exists; nothing was written", target,
                           "remove it or choose another output name")
    _check_parent_writable(target, needed_bytes)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise os_error_to_ctsynth(exc, target, needed_bytes) from exc
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        written = _written(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) or (isinstance(exc, Exception) and not isinstance(exc, CTSynthError)
                                        and is_disk_full(exc, target)):
            raise os_error_to_ctsynth(exc, target, needed_bytes, written) from exc
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

"""A full disk during any write: one line naming the path, how much was needed and free, exit 2, earlier
outputs intact. The disk is filled by patching the writers' lowest call to raise what a full disk raises
(mounting a small tmpfs is not possible in the test environment)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from ctsynth.cli import main
from ctsynth.errors import CTSynthError
from ctsynth.io import atomic
from ctsynth.io.write import write_volume
from ctsynth.volume import CTVolume


def _volume(seed: int = 0) -> CTVolume:
    hu = np.random.default_rng(seed).integers(-1000, 1000, (3, 8, 8)).astype(np.int16)
    return CTVolume(hu=hu, spacing_mm=(2.0, 0.7, 0.7))


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _assert_disk_full(text: str, path: Path) -> None:
    assert "\n" not in text
    assert text.startswith(str(path)) and "the disk is full" in text and " free there" in text
    assert "Traceback" not in text and "requested and" not in text and "(fix: free disk space" in text


@pytest.mark.parametrize("fmt", ["nifti", "dicom", "tiff"])
def test_each_writer_says_disk_full_and_keeps_the_earlier_output(tmp_path: Path, monkeypatch, fmt: str) -> None:
    target = tmp_path / ("out.nii.gz" if fmt == "nifti" else "out")
    write_volume(_volume(0), target, fmt)
    before = sorted((p.name, p.read_bytes()) for p in ([target] if target.is_file() else target.iterdir()))
    if fmt == "nifti":
        import nibabel

        monkeypatch.setattr(nibabel, "save", _enospc)
    elif fmt == "dicom":
        import pydicom.filewriter as fw

        # pydicom re-raises as OSError(text with its own traceback) without the errno: the case to handle.
        monkeypatch.setitem(fw.writers, "OW", (_enospc, None) if isinstance(fw.writers["OW"], tuple) else _enospc)
    else:
        import tifffile

        def short_write(*args, **kwargs):  # what numpy's tofile says when the disk fills under tifffile
            raise OSError("16384 requested and 14208 written")

        monkeypatch.setattr(tifffile, "imwrite", short_write)
        monkeypatch.setattr(atomic, "free_bytes", lambda path: 4096)
    with pytest.raises(CTSynthError) as err:
        write_volume(_volume(1), target, fmt, overwrite=True)
    _assert_disk_full(str(err.value), target)
    assert "needs about" in str(err.value)
    after = sorted((p.name, p.read_bytes()) for p in ([target] if target.is_file() else target.iterdir()))
    assert after == before  # the earlier output is untouched
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporaries left


def test_atomic_bytes_says_how_much_was_needed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    with pytest.raises(CTSynthError) as err:
        atomic.atomic_write_bytes(tmp_path / "cache.npy", bytes(3 << 20))
    _assert_disk_full(str(err.value), tmp_path / "cache.npy")
    assert "needs about 3.0 MB" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_report_folder_write(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(CTSynthError) as err:
        with atomic.atomic_dir(tmp_path / "report") as tmp:
            (tmp / "metrics.json").write_text("{}")
            _enospc()
    _assert_disk_full(str(err.value), tmp_path / "report")
    assert "more than the 2 bytes written" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_called_disk_full(tmp_path: Path) -> None:
    exc = OSError(errno.EIO, "Input/output error")
    text = str(atomic.os_error_to_ctsynth(exc, tmp_path / "x"))
    assert "disk is full" not in text and "Input/output error" in text


def test_convert_to_dicom_on_a_full_disk_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    import pydicom.filewriter as fw

    source = write_volume(_volume(2), tmp_path / "in.nii.gz", "nifti")
    monkeypatch.setitem(fw.writers, "OW", (_enospc, None) if isinstance(fw.writers["OW"], tuple) else _enospc)
    assert main(["convert", str(source), str(tmp_path / "out"), "--format", "dicom"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1
    _assert_disk_full(lines[0].split("error: ", 1)[1], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_turns_a_stray_enospc_into_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import ctsynth.cli.convert as convert

    def stray(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "somewhere"))

    monkeypatch.setattr(convert, "run", stray)
    assert main(["convert", "a.nii.gz", "b.nii.gz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "the disk is full" in err and str(tmp_path / "somewhere") in err

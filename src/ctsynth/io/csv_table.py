"""Reading the small CSV files a dataset comes with (labels, COVID-CTset metadata)."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import CTSynthError


def read_csv_table(path: Path, *, what: str, option: str, expected: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a UTF-8 CSV (a BOM is allowed); a file that cannot be read or is not CSV is one
    line naming it, ``what`` it is, the ``option`` that gave it and the ``expected`` content."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except OSError as exc:
        raise CTSynthError(f"cannot read the {what} ({exc.strerror or exc})", path,
                           f"check the {option} path") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CTSynthError(f"is not a readable CSV file ({exc})", path, f"give {expected}") from exc

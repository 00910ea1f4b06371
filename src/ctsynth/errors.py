"""The one error type that reaches the user.

Every failure a user can fix (bad input, wrong labels file, unwritable output, corrupt checkpoint) is raised
as :class:`CTSynthError`. The CLI prints it as one line and exits non-zero; library users catch it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


class CTSynthError(Exception):
    """A problem the user can fix: names the file, says what is wrong and what to do.

    ``str(error)`` is one line: ``"<path>: <problem> (fix: <fix>)"``.
    """

    def __init__(self, problem: str, path: str | Path | None = None, fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self._one_line())

    def __reduce__(self):
        # Picklable with its parts, so an error raised in a worker process reaches the user unchanged.
        return (type(self), (self.problem, self.path, self.fix))

    def _one_line(self) -> str:
        text = " ".join(self.problem.split())
        if self.path:
            text = f"{self.path}: {text}"
        if self.fix:
            text = f"{text} (fix: {' '.join(self.fix.split())})"
        return text


@contextlib.contextmanager
def reader_boundary(path: str | Path, what: str) -> Iterator[None]:
    """The last line of every reader: any exception other than `CTSynthError` becomes one, naming ``path``.

    Readers check what they parse and name the corrupt file themselves; this only guarantees that a case
    they did not foresee still reaches the user as one line and exit code 2, never as a traceback.
    """
    try:
        yield
    except (CTSynthError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except MemoryError as exc:
        raise CTSynthError(f"not enough memory to read this {what} (is its header's image size right?)", path,
                           "check the file, or free memory") from exc
    except BaseException as exc:  # noqa: BLE001 - the purpose of the boundary (a Rust codec's panic included)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CTSynthError(f"cannot read this {what} ({type(exc).__name__}{': ' + detail if detail else ''})",
                           path, "re-export or re-copy it; if it opens elsewhere, report this as a ctsynth bug") from exc

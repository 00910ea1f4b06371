"""The one error type that reaches the user.

Every failure a user can fix (bad input, wrong labels file, unwritable output, corrupt checkpoint) is raised
as :class:`CTSynthError`. The CLI prints it as one line and exits non-zero; library users catch it.
"""

from __future__ import annotations

from pathlib import Path


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

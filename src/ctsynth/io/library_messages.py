"""What the reading libraries say while they read, collected instead of printed.

nibabel logs its header repairs to stderr ("pixdim[1,2,3] should be positive; setting to abs"), tifffile
logs corrupt tags through logging's last-resort handler, and both raise Python warnings. A user reading
hundreds of studies cannot tell which file such a line was about. Readers collect the messages here and
turn them into notes (or errors) that name the file.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def collect_messages(*logger_names: str) -> Iterator[list[str]]:
    """Yield a list that fills with the log records of ``logger_names`` and the warnings raised inside.

    The list fills as the messages happen. The loggers' own handlers are set aside for the duration
    (warning filters and logger handlers are process-wide: enter it in one thread, around the whole read,
    not in each worker thread).
    """
    messages: list[str] = []
    saved = []
    for name in logger_names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers[:] = [_Collect(messages)]
        logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *args, **kwargs: messages.append(str(message))
            yield messages
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers[:] = handlers
            logger.propagate = propagate

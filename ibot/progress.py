"""Progress bars: every bar of the package comes from :func:`progress_bar`, so one rule holds.

On a terminal a bar is tqdm's own (redrawn in place). When the output is a file or a pipe (a log,
a CI job) each redraw would stay as a line, so there a bar prints a status line every
``1 / MAX_LINES`` of its total only (at most ``MAX_LINES`` lines, plus the first and the last),
and none in between when its total is unknown. Torch-free (``ibot infer`` uses it).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["MAX_LINES", "ProgressBar", "is_terminal", "progress_bar", "write"]

MAX_LINES = 20  # status lines of one bar when the output is not a terminal (one every 5%)
ProgressBar = tqdm


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is an interactive terminal (closed or odd streams count as not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, file: IO[str] | None = None,
                 **kwargs: Any) -> ProgressBar:
    """``tqdm(iterable, total=total, file=file, **kwargs)`` writing to stderr by default, with at
    most ``MAX_LINES`` status lines when ``file`` is not a terminal."""
    file = sys.stderr if file is None else file
    if not kwargs.get("disable") and not is_terminal(file):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        steps = (total or 0) - kwargs.get("initial", 0)
        # a line every `steps / MAX_LINES` steps, whatever the time between them (maxinterval=inf also
        # keeps tqdm's monitor thread from dropping to a line per step after a slow stretch)
        kwargs.update(miniters=max(1, math.ceil(steps / MAX_LINES)) if steps > 0 else math.inf,
                      mininterval=0, maxinterval=math.inf)
    return tqdm(iterable, total=total, file=file, **kwargs)


def write(message: str, file: IO[str] | None = None) -> None:
    """Print ``message`` as a line of its own above any open bar (stderr by default)."""
    tqdm.write(message, file=sys.stderr if file is None else file)

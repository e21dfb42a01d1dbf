"""Progress bars that suit where they are shown.

On a terminal, `progress_bar` is a plain tqdm bar. When stderr is a file (a batch job's log), a
bar redraws with carriage returns thousands of times; there it writes one plain line at most
every LOG_INTERVAL seconds instead. `set_quiet(True)` (the command line's --quiet) turns every
bar off.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines in a log file
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar of this process off (True) or on (False)."""
    global _quiet
    _quiet = quiet


class _LineWriter:
    """A file for tqdm that turns each redraw into one plain line, for logs."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, **kwargs) on a terminal; plain lines every LOG_INTERVAL seconds when
    stderr is not a terminal; disabled when quiet (or when kwargs say disable=True)."""
    kwargs["disable"] = kwargs.get("disable", False) or _quiet
    if not sys.stderr.isatty():
        kwargs.setdefault("file", _LineWriter(sys.stderr))
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_INTERVAL)
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, **kwargs)

"""Progress bars for the steps that can run longer than a few seconds.

One convention for every stage, the training loop's: a tqdm bar on stderr, redrawn at most once a
second and cleared when the step ends (``leave=False``), so a finished job leaves only its log
lines. Snakemake passes a job's stderr through to the terminal, where the bar shows; the rule's
log file gets the logging records only, never a bar, and no bar touches an output file.

While a bar is open, log records for the console are written above it (the bar is cleared, the
record written, the bar redrawn) instead of being glued to the bar's line; the console handler
keeps its filter, format and level. ``enabled=False`` writes nothing at all.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from tqdm import tqdm

# The training loop's settings (trainrelay.forecast.training); every bar uses them.
MININTERVAL_S = 1.0
LEAVE = False


def _new_bar(
    total: int | None,
    desc: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    initial: int = 0,
) -> tqdm:
    """A tqdm bar on stderr with the shared settings; the caller updates and closes it."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        leave=LEAVE,
        mininterval=MININTERVAL_S,
        # Fixed, not tqdm's dynamic miniters: then only update() redraws, never tqdm's monitor
        # thread (which could otherwise write in the middle of a timed benchmark trial).
        miniters=1,
        file=sys.stderr,  # looked up now, so a redirected stderr (pytest, a wrapper) gets the bar
    )


@contextlib.contextmanager
def progress_bar(
    total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0
) -> Iterator[tqdm]:
    """``with progress_bar(len(files), "manifest", "file") as bar: ... bar.update()``.

    The bar is closed (and cleared) however the block ends, so an error's last line is not glued
    to a half-drawn bar and no bar outlives its step (an open one would push every later bar of
    the process down a line); console log records written meanwhile go above the bar.
    """
    bar = _new_bar(total, desc, unit, enabled=enabled, initial=initial)
    try:
        with _console_above(bar):
            yield bar
    finally:
        bar.close()


class _AboveBars:
    """A console stream whose writes clear the open bars first and redraw them after
    (tqdm.write's way, for a logging handler's writes)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with tqdm.external_write_mode(file=self.stream):
            return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _console_handlers() -> list[logging.StreamHandler]:
    """The root logger's console handlers (a log file's handler is a StreamHandler too: not it)."""
    return [
        handler
        for handler in logging.getLogger().handlers
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout)
    ]


@contextlib.contextmanager
def _console_above(bar: tqdm) -> Iterator[None]:
    if bar.disable:
        yield
        return
    swapped = [(handler, handler.stream) for handler in _console_handlers()]
    for handler, stream in swapped:
        handler.stream = _AboveBars(stream)
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.stream = stream

"""Glue between a Snakemake ``script:`` and the library.

Each ``scripts/<rule>.py`` calls :func:`run_rule` with the ``snakemake`` object and a function
that does the work (:func:`rule_input_paths` maps a policy rule's named inputs). Logging goes to
the rule's ``log:`` file and to stderr; a :class:`~trainrelay.errors.TrainrelayError` ends the job
with one clear line and exit code 1 (no traceback: the user caused it and the line says what to
do). So does an OSError of the user's machine (disk full, quota, read-only folder, permissions),
also when pyarrow, polars or torch wrapped it: that is the environment, not a bug. Any other
exception is a bug and keeps its traceback in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trainrelay.errors import TrainrelayError, describe_environment_error, free_space_by_device


class _LogFileHandler(logging.FileHandler):
    """A log file that, once it cannot be written (a full disk), says so once and goes quiet.

    logging's default prints a "--- Logging error ---" traceback for every record, which buries
    the one line that names the full disk; stderr keeps every record anyway.
    """

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.broken:
            return
        self.broken = True
        exc = sys.exc_info()[1]
        reason = describe_environment_error(exc, [self.baseFilename]) if exc else None
        print(
            f"trainrelay: warning: cannot write the log file {self.baseFilename} "
            f"({reason or exc}); logging to stderr only",
            file=sys.stderr,
            flush=True,
        )
        # Closing flushes the buffered records again, which fails again: the file is lost anyway.
        with contextlib.suppress(OSError):
            if self.stream is not None:
                self.stream.close()
        self.stream = None  # type: ignore[assignment]


# Set to 1 by the Snakefile when snakemake runs with --verbose; the jobs inherit it.
VERBOSE_ENV = "TRAINRELAY_VERBOSE"


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


class _ConsoleFilter(logging.Filter):
    """The console shows trainrelay's own records and other libraries' errors; the libraries'
    INFO and WARNING chatter (fontTools subsetting, weasyprint, torch's export warnings) only with
    --verbose. The rule's log file keeps every record either way."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == "trainrelay" or record.name.startswith("trainrelay.")
        return self.verbose or own or record.levelno > logging.WARNING


def setup_logging(
    log_file: str | None = None, level: int = logging.INFO, verbose: bool | None = None
) -> None:
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_ConsoleFilter(verbose_requested() if verbose is None else verbose))
    handlers: list[logging.Handler] = [console]
    if log_file:
        try:
            handlers.append(_LogFileHandler(log_file, mode="w", encoding="utf-8"))
        except OSError as exc:
            reason = describe_environment_error(exc, [log_file]) or exc
            print(
                f"trainrelay: warning: cannot open the log file {log_file} ({reason}); "
                "logging to stderr only",
                file=sys.stderr,
                flush=True,
            )
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # warnings.warn (torch's export and deprecation warnings) become "py.warnings" records, so
    # they reach the log file and obey the console filter instead of printing past it. Off first:
    # captureWarnings(True) does nothing when an earlier call in this process is still recorded,
    # even if warnings.showwarning was put back since (warnings.catch_warnings does that).
    logging.captureWarnings(False)
    logging.captureWarnings(True)


def user_error_line(
    exc: BaseException,
    outputs: Sequence[str] = (),
    free_at_start: Mapping[int, int] | None = None,
) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug."""
    if isinstance(exc, TrainrelayError):
        return str(exc)
    return describe_environment_error(exc, outputs, free_at_start)


def rule_input_paths(named: Any) -> dict[str, str | None]:
    """The upstream files of a policy rule (train_policy_fold, evaluate_policy, export_onnx), from
    its Snakemake ``input`` (``text`` is optional)."""
    return {
        "features": named.features,
        "scaler": named.scaler,
        "segments": named.segments,
        "forecasts": named.forecasts,
        "text": named.get("text"),
    }


def run_rule(smk: Any, work: Callable[[Any], None]) -> None:
    """Run ``work(smk)`` with logging to the rule's log; exit 1 with one line on user errors."""
    log_file = smk.log[0] if len(smk.log) else None
    setup_logging(log_file)
    outputs = [str(path) for path in smk.output]
    free_at_start = free_space_by_device(outputs)
    stage = _stage_name(smk)
    started = time.monotonic()
    print(f"trainrelay: {stage} started", file=sys.stderr, flush=True)
    try:
        work(smk)
    except Exception as exc:
        message = user_error_line(exc, outputs, free_at_start)
        if message is None:
            logging.getLogger("trainrelay").error("unexpected failure (a bug):\n%s", traceback.format_exc())
            raise
        logging.getLogger("trainrelay").error(message)
        print(f"trainrelay: error in rule {smk.rule}: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(
        f"trainrelay: {stage} finished in {_duration(time.monotonic() - started)}",
        file=sys.stderr,
        flush=True,
    )


def _stage_name(smk: Any) -> str:
    """``train_policy_fold (fold=3)``: the rule and its wildcards, as a user names the job."""
    wildcards = getattr(smk, "wildcards", None)
    items = dict(wildcards.items()) if wildcards is not None and hasattr(wildcards, "items") else {}
    if not items:
        return str(smk.rule)
    return f"{smk.rule} ({', '.join(f'{k}={v}' for k, v in items.items())})"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"

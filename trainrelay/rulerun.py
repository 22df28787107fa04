"""Glue between a Snakemake ``script:`` and the library.

Each ``scripts/<rule>.py`` calls :func:`run_rule` with the ``snakemake`` object and a function
that does the work. Logging goes to the rule's ``log:`` file and to stderr; a
:class:`~trainrelay.errors.TrainrelayError` ends the job with one clear line and exit code 1
(no traceback: the user caused it and the line says what to do); any other exception is a bug
and keeps its traceback in the log.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

from trainrelay.errors import TrainrelayError


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def run_rule(smk: Any, work: Callable[[Any], None]) -> None:
    """Run ``work(smk)`` with logging to the rule's log; exit 1 with one line on user errors."""
    log_file = smk.log[0] if len(smk.log) else None
    setup_logging(log_file)
    try:
        work(smk)
    except TrainrelayError as exc:
        line = f"trainrelay: error in rule {smk.rule}: {exc}"
        logging.getLogger("trainrelay").error(str(exc))
        print(line, file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception:
        logging.getLogger("trainrelay").error("unexpected failure (a bug):\n%s", traceback.format_exc())
        raise

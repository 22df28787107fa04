"""Atomic file writes: nothing half-written may ever look finished.

Every writer goes through :func:`atomic_path`: it yields a temporary path in the target's
directory and renames it over the target only when the block finishes without error.
A crash leaves at most a ``.tmp-*`` file behind, never a truncated target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainrelay.errors import TrainrelayError, WriteFailure


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it to ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}.", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the finished file the mode a plain open() would (0666 & ~umask).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as exc:
        _record_failure(exc, target, tmp_path)
        tmp_path.unlink(missing_ok=True)
        raise


def _record_failure(exc: BaseException, target: Path, tmp_path: Path) -> None:
    """Note the bytes written and the free space on ``exc`` before the temporary file goes.

    torch reports a full disk as "unexpected pos 576 vs 534", without an errno; a failed write
    that left (almost) no free space is how :func:`trainrelay.errors.environment_problem` tells,
    and the bytes written say how much the stage needed at least. After the cleanup both are gone.
    """
    if isinstance(exc, TrainrelayError) or not isinstance(exc, Exception):
        return  # a user error with its own line, or Ctrl-C: nothing to diagnose
    try:
        written = tmp_path.stat().st_size
    except OSError:
        written = 0
    try:
        free: int | None = shutil.disk_usage(target.parent).free
    except OSError:
        free = None
    with contextlib.suppress(AttributeError):  # the few exception types without a __dict__
        exc.trainrelay_write = WriteFailure(target, written, free)  # type: ignore[attr-defined]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Deterministic JSON: sorted keys, fixed indent, trailing newline."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_parquet(target: str | os.PathLike[str], frame: Any) -> None:
    """Write a polars DataFrame as parquet atomically, without statistics that vary by run."""
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=True)

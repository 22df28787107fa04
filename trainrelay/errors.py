"""User-facing errors.

A :class:`TrainrelayError` is something the user can fix (bad config, missing or corrupt input,
wrong device). The CLI and the rule glue print its message as one line and exit non-zero,
without a traceback. So do they for an OSError of the user's machine (disk full, quota, read-only
folder, permissions; see :func:`describe_environment_error`), however a library wrapped it.
Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class TrainrelayError(Exception):
    """An error the user caused and can fix; its message names the file, field or setting."""


class ConfigError(TrainrelayError):
    """A config value is missing, of the wrong type or inconsistent."""


class DataError(TrainrelayError):
    """An input file is missing, unreadable, corrupt or fails a data check."""


class DeviceError(TrainrelayError):
    """The requested device or engine is not available on this machine."""


class BudgetExhausted(TrainrelayError):
    """A time budget ran out; state was saved and a rerun resumes."""


# -- one line of a message ------------------------------------------------------------------------

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # the colour codes libraries (torch, onnxruntime) print


def first_line(message: object, default: str = "") -> str:
    """The first non-blank line of ``str(message)``, stripped and without colour codes; ``default``
    when there is none. Library messages run to many lines; a user-facing error shows one."""
    for line in ANSI_ESCAPE.sub("", str(message)).splitlines():
        if line.strip():
            return line.strip()
    return default


def exception_line(exc: BaseException) -> str:
    """``"<type>: <first line of the message>"``, or the type's name alone for an empty message."""
    line = first_line(exc)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# -- OSErrors that come from the user's machine, not from a bug ----------------------------------
#
# A full disk, a read-only mount or a folder the user cannot write are the environment's fault and
# the user's to fix, so they end in one line like a TrainrelayError. Libraries wrap them: pyarrow
# raises OSError with the errno in the message, polars raises ComputeError "... (os error 28)",
# torch raises RuntimeError "unexpected pos ..." with no errno at all (atomic_path records the free
# space for that case, see trainrelay.atomic). So the whole cause/context chain is searched.

ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
# The strerror texts specific enough to trust without an errno next to them. "Permission denied"
# and "Operation not permitted" are not: CUDA says "operation not permitted when stream is
# capturing", a bug. Those count only as an OSError or with an "errno 13" / "os error 13" tag.
_SPECIFIC_TEXT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
_ERRNO_TAG = re.compile(r"(?:\[errno |os error |errno[ =:]+)(\d+)", re.IGNORECASE)
_QUOTED_PATH = re.compile(r"""['"`]([^'"`\n]*[/\\][^'"`\n]*)['"`]""")
# With this little left after a failed write, the write failed because the disk is full.
FULL_DISK_BYTES = 1 << 20


@dataclass
class WriteFailure:
    """What :func:`trainrelay.atomic.atomic_path` saw when a write failed, before it cleaned up."""

    target: Path
    written: int  # bytes in the temporary file when the write failed
    free: int | None  # bytes free on the target's filesystem at that moment


@dataclass
class EnvironmentProblem:
    errno: int
    path: str | None
    write: WriteFailure | None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return exc.errno
    text = str(exc)
    for match in _ERRNO_TAG.finditer(text):
        if int(match.group(1)) in ENVIRONMENT_ERRNOS:
            return int(match.group(1))
    lowered = text.lower()
    for number, phrase in _SPECIFIC_TEXT.items():
        if phrase in lowered:
            return number
    return None


def _path_of(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.filename:
        return str(exc.filename)
    found = _QUOTED_PATH.search(str(exc))
    return found.group(1) if found else None


def environment_problem(exc: BaseException) -> EnvironmentProblem | None:
    """The environment OSError behind ``exc`` (searched through the chain), or None for a bug."""
    chain = _chain(exc)
    write = next(
        (w for e in chain if isinstance(w := getattr(e, "trainrelay_write", None), WriteFailure)), None
    )
    path = next((p for e in chain if (p := _path_of(e))), None)
    for item in chain:
        number = _errno_of(item)
        if number is not None:
            return EnvironmentProblem(number, _path_of(item) or path, write)
    if write is not None and write.free is not None and write.free < FULL_DISK_BYTES:
        # torch's writer reports a full disk as "unexpected pos 576 vs 534": no errno anywhere,
        # but a failed write that left the filesystem (nearly) full is a full disk.
        return EnvironmentProblem(errno.ENOSPC, str(write.target), write)
    return None


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{int(count)} bytes" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _existing_folder(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path(".")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _owner_and_mode(folder: Path) -> str:
    try:
        info = folder.stat()
    except OSError:
        return ""
    return f" (owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}, you are uid {os.getuid()})"


def free_space_by_device(paths: Sequence[str | os.PathLike[str]]) -> dict[int, int]:
    """Free bytes on the filesystem of each of ``paths`` (by device), measured before a stage runs.

    When the stage then fills the disk, it needed more than this: the one estimate that does not
    depend on how far each writer got before it failed.
    """
    free: dict[int, int] = {}
    for path in paths:
        folder = _existing_folder(Path(path).parent)
        try:
            free.setdefault(folder.stat().st_dev, shutil.disk_usage(folder).free)
        except OSError:
            continue
    return free


def describe_environment_error(
    exc: BaseException,
    outputs: Sequence[str | os.PathLike[str]] = (),
    free_at_start: Mapping[int, int] | None = None,
) -> str | None:
    """One line naming the folder and what to do, or None when ``exc`` is not the environment's.

    ``outputs``: the files the failing step writes (a rule's outputs); they name the folder when the
    error does not. ``free_at_start``: :func:`free_space_by_device` of them before the step ran.
    """
    problem = environment_problem(exc)
    if problem is None:
        return None
    if problem.write is not None:
        file: Path | None = problem.write.target
    elif problem.path is not None:
        file = _user_path(Path(problem.path))
    else:
        file = Path(outputs[0]) if outputs else None
    is_folder = file is not None and file.is_dir()
    folder = _existing_folder(file if is_folder else file.parent) if file is not None else Path.cwd()
    what = f" writing '{file.name}'" if file is not None and not is_folder else ""
    tag = f"Errno {problem.errno}"
    if problem.errno in (errno.ENOSPC, errno.EDQUOT):
        need = _space_needed(problem, folder, outputs, free_at_start or {})
        if problem.errno == errno.EDQUOT:
            return (
                f"disk quota exceeded in '{folder}'{what} ({tag}): {need}; "
                "free up space within your quota or use another disk, then rerun"
            )
        free = _free_bytes(folder)
        have = f"{human_bytes(free)} free there now" if free is not None else "free space unknown"
        return (
            f"no space left on device in '{folder}'{what} ({tag}): {need} ({have}); "
            "free up space there or point the results at a bigger disk, then rerun"
        )
    if problem.errno == errno.EROFS:
        return (
            f"'{folder}' is on a read-only file system{what} ({tag}); "
            "point the results at a writable folder (or remount it read-write), then rerun"
        )
    if problem.errno == errno.EIO:
        return (
            f"input/output error in '{folder}'{what} ({tag}): the disk or network filesystem failed; "
            "check it, then rerun"
        )
    named = f"'{file}'" if file is not None else f"'{folder}'"
    return (
        f"permission denied for {named} ({tag}){_owner_and_mode(folder)}; make the folder readable "
        "and writable for this user (chmod/chown) or work in a folder you own, then rerun"
    )


def _user_path(path: Path) -> Path:
    """``path`` as the user knows it: a temporary file of atomic_path becomes its target, and a
    file in a scratch folder (``.tmp-*``) becomes the folder the scratch folder is in.
    """
    parts = path.parts
    for index, part in enumerate(parts):
        if part.startswith(".tmp-"):
            folder = Path(*parts[:index]) if index else Path(".")
            if index == len(parts) - 1 and part.count(".") >= 2:
                # atomic_path names it ".tmp-<target name>.<random>"
                return folder / part[len(".tmp-") :].rsplit(".", 1)[0]
            return folder
    return path


def _space_needed(
    problem: EnvironmentProblem,
    folder: Path,
    outputs: Sequence[str | os.PathLike[str]],
    free_at_start: Mapping[int, int],
) -> str:
    """What the stage needs at least: the free space it used up, or else the bytes it wrote."""
    try:
        started_with = free_at_start.get(folder.stat().st_dev)
    except OSError:
        started_with = None
    if started_with is not None:
        return (
            f"this stage needs more than the {human_bytes(started_with)} that were free there when it started"
        )
    written = problem.write.written if problem.write else 0
    # Outputs the stage finished before the failing one are still on disk and count too.
    written += sum(_size(p) for p in outputs if problem.write is None or Path(p) != problem.write.target)
    if written:
        return f"this stage needs more than the {human_bytes(written)} it had written when it stopped"
    return "this stage needs more space than there was"


def _size(path: str | os.PathLike[str]) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0

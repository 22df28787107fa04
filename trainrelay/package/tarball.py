"""Deterministic ``.tar.gz``: same files, same bytes.

Members are sorted, directories are listed explicitly, every entry has a fixed mtime, uid/gid 0
(``root``) and a fixed mode, and the gzip header carries neither a file name nor a time.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from trainrelay.atomic import atomic_path

FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z, the earliest time every archive format can store
EXECUTABLE_SUFFIXES = (".sh",)


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size = size
        info.mode = 0o755 if name.endswith(EXECUTABLE_SUFFIXES) else 0o644
    return info


def _directories(paths: list[str]) -> list[str]:
    dirs = {str(parent) for p in paths for parent in PurePosixPath(p).parents if str(parent) != "."}
    return sorted(dirs)


def write_tar_gz(target: str | Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (POSIX relative path -> content) as a deterministic gzip-compressed tar."""
    names = sorted(files)
    for name in names:
        if name.startswith("/") or ".." in PurePosixPath(name).parts:
            raise ValueError(f"unsafe member path {name!r}")
    entries = [(d, None) for d in _directories(names)] + [(n, files[n]) for n in names]
    entries.sort(key=lambda entry: entry[0])
    with (
        atomic_path(target) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in entries:
            if data is None:
                tar.addfile(_info(name, directory=True))
            else:
                tar.addfile(_info(name, len(data)), io.BytesIO(data))


def read_tar_gz(path: str | Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every member with its content (None for non-files); raises tarfile/gzip/OS errors as they come."""
    with tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                yield member, handle.read() if handle is not None else b""
            else:
                yield member, None

"""Deterministic tars: same files, same bytes.

One writer, :func:`write_tar`, for both archives the project makes: the deployment bundle
(:func:`write_tar_gz`, a ``.tar.gz`` of in-memory files) and the packed raw-data folder
(``trainrelay.platforms.packing.pack``, a plain ``.tar`` streamed from disk). Members go in the order given,
in PAX format with UTF-8 names, and every member gets the fixed metadata of a :class:`MemberStyle`:
one mtime, uid/gid 0, one owner name, mode 0644 (0755 for directories and executable suffixes).
The bundle lists its directories explicitly, sorts every member and writes a gzip header without a
file name or time.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from trainrelay.atomic import atomic_path

FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z, the earliest time every archive format can store
EXECUTABLE_SUFFIXES = (".sh",)
FORMAT = tarfile.PAX_FORMAT
ENCODING = "utf-8"


@dataclass(frozen=True)
class MemberStyle:
    """The metadata every member of one kind of archive gets, whatever the files on disk say."""

    mtime: int
    owner: str  # uname and gname; uid and gid are 0
    executable_suffixes: tuple[str, ...] = ()

    def member(self, name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = self.owner
        if directory:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.size = size
            executable = bool(self.executable_suffixes) and name.endswith(self.executable_suffixes)
            info.mode = 0o755 if executable else 0o644
        return info

    def header_bytes(self, name: str, size: int) -> int:
        """Bytes of a file member's header(s) as :func:`write_tar` writes them."""
        return len(self.member(name, size).tobuf(FORMAT, ENCODING, "surrogateescape"))


# The deployment bundle: owned by root, dated 1980, scripts executable.
BUNDLE_STYLE = MemberStyle(mtime=FIXED_MTIME, owner="root", executable_suffixes=EXECUTABLE_SUFFIXES)


@dataclass(frozen=True)
class TarEntry:
    """One member: ``data`` is its content, a file to copy ``size`` bytes from, or None for a directory."""

    name: str
    data: bytes | Path | None
    size: int = 0  # taken from ``data`` when it is bytes


def write_tar(out: BinaryIO, entries: Iterable[TarEntry], style: MemberStyle) -> None:
    """Write ``entries``, in the order given, to the binary stream ``out`` as a deterministic tar."""
    with tarfile.open(fileobj=out, mode="w", format=FORMAT, encoding=ENCODING) as tar:
        for entry in entries:
            if entry.data is None:
                tar.addfile(style.member(entry.name, directory=True))
            elif isinstance(entry.data, bytes):
                tar.addfile(style.member(entry.name, len(entry.data)), io.BytesIO(entry.data))
            else:
                with open(entry.data, "rb") as handle:
                    tar.addfile(style.member(entry.name, entry.size), handle)


def _directories(paths: list[str]) -> list[str]:
    dirs = {str(parent) for p in paths for parent in PurePosixPath(p).parents if str(parent) != "."}
    return sorted(dirs)


def write_tar_gz(target: str | Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (POSIX relative path -> content) as a deterministic gzip-compressed tar."""
    names = sorted(files)
    for name in names:
        if name.startswith("/") or ".." in PurePosixPath(name).parts:
            raise ValueError(f"unsafe member path {name!r}")
    entries = [TarEntry(d, None) for d in _directories(names)] + [TarEntry(n, files[n]) for n in names]
    entries.sort(key=lambda entry: entry.name)
    with (
        atomic_path(target) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        write_tar(gz, entries, BUNDLE_STYLE)


def read_tar_gz(path: str | Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Every member with its content (None for non-files); raises tarfile/gzip/OS errors as they come."""
    with tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                yield member, handle.read() if handle is not None else b""
            else:
                yield member, None

"""Check a deployment bundle against its ``SHA256SUMS`` manifest.

The manifest uses ``sha256sum``'s format (``<hex>  <path>``, paths relative to the bundle's top
directory), so ``sha256sum -c SHA256SUMS`` inside an unpacked bundle checks the same thing.
:func:`verify_bundle` accepts the ``.tar.gz`` or an unpacked bundle directory and returns one line
per problem: a file whose checksum differs, a listed file that is missing, a file that is not
listed, an unsafe path.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from trainrelay.errors import DataError
from trainrelay.package.tarball import read_tar_gz

MANIFEST = "SHA256SUMS"


def format_manifest(files: dict[str, bytes]) -> bytes:
    """``SHA256SUMS`` text for ``files`` (relative path -> content), sorted by path."""
    lines = [f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files)]
    return "".join(lines).encode("utf-8")


def parse_manifest(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"{where}: line {number} is not '<sha256>  <path>'; the manifest is damaged")
        out[name] = digest
    return out


def _tar_files(path: Path) -> tuple[dict[str, bytes], list[str]]:
    """Files of the archive relative to its single top directory, and problems with its layout."""
    files: dict[str, bytes] = {}
    problems: list[str] = []
    try:
        members = list(read_tar_gz(path))
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: not a readable .tar.gz bundle ({exc}); rebuild it with the package rule"
        ) from exc
    tops = {PurePosixPath(m.name).parts[0] for m, _ in members if PurePosixPath(m.name).parts}
    if len(tops) != 1:
        raise DataError(f"{path}: a bundle has one top directory, found {sorted(tops)}; rebuild it")
    for member, data in members:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts:
            problems.append(f"{member.name}: unsafe path in the archive")
            continue
        if member.issym() or member.islnk():
            problems.append(f"{member.name}: links are not allowed in a bundle")
        elif data is not None:
            files["/".join(parts[1:])] = data
    return files, problems


def _dir_files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def verify_bundle(path: str | Path) -> list[str]:
    """Problems found in the bundle at ``path`` (a .tar.gz or a directory); empty when it is intact."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such bundle; build it with the package rule")
    files, problems = (_dir_files(path), []) if path.is_dir() else _tar_files(path)
    if MANIFEST not in files:
        raise DataError(f"{path}: has no {MANIFEST}; it is not a trainrelay bundle or is damaged")
    listed = parse_manifest(files.pop(MANIFEST).decode("utf-8", errors="replace"), f"{path}:{MANIFEST}")
    for name in sorted(set(listed) | set(files)):
        if name not in files:
            problems.append(f"{name}: listed in {MANIFEST} but missing from the bundle")
        elif name not in listed:
            problems.append(f"{name}: in the bundle but not listed in {MANIFEST}")
        else:
            actual = hashlib.sha256(files[name]).hexdigest()
            if actual != listed[name]:
                problems.append(f"{name}: checksum mismatch (expected {listed[name]}, got {actual})")
    return problems

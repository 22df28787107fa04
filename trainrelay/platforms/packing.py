"""Pack a raw-data folder of many small files into one deterministic tar, and unpack it verified.

RunPod network volumes allocate at least 64 KB per file (the RunPod playbook; see docs/runpod.md), so
thousands of small raw files cost far more volume space, and far more per-file round trips over the
S3 API, than their bytes. ``pack`` writes one plain tar (the raw files are mostly zips already, so no
compression) whose first member ``SHA256SUMS`` lists every file's sha256 in ``sha256sum`` format, and
a ``<tar>.sha256`` file beside it with the tar's own checksum. The tar is deterministic (written by
``trainrelay.package.tarball.write_tar``, as the deployment bundle is): members in sorted order,
mtime 0, owner 0/0 without names, mode 0644; the same folder always gives the same bytes.
``unpack`` checks the tar's checksum (when the ``.sha256`` file is beside it), then writes each
file atomically and compares its sha256 with the list before it is renamed into place. Unpacked
files get the time of unpacking, not the tar's mtime 0: Snakemake reruns a rule whose outputs are
older than its script, so raw data dated 1970 would be acquired again (``tar -xf`` would do that).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from trainrelay.atomic import atomic_path, write_text
from trainrelay.core.fingerprint import file_sha256
from trainrelay.errors import DataError
from trainrelay.package.tarball import ENCODING, MemberStyle, TarEntry, write_tar

log = logging.getLogger(__name__)

SUMS_NAME = "SHA256SUMS"
# The per-file minimum allocation on a RunPod network volume (playbook figure; docs/runpod.md).
VOLUME_MIN_FILE_BYTES = 64 * 1024
_CHUNK = 1 << 20
# Every member: mtime 0, owner 0/0 without names, mode 0644 (unpack gives the files the time of
# unpacking instead of 1970).
RAW_STYLE = MemberStyle(mtime=0, owner="")


@dataclass(frozen=True)
class PackedFile:
    relpath: str  # POSIX path relative to the packed folder
    size: int
    sha256: str


@dataclass(frozen=True)
class PackResult:
    tar_path: Path
    tar_bytes: int
    tar_sha256: str
    files: tuple[PackedFile, ...]

    @property
    def payload_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def loose_volume_bytes(self) -> int:
        """Volume space the files take uploaded one by one (each at least 64 KB)."""
        return volume_bytes(f.size for f in self.files)

    @property
    def packed_volume_bytes(self) -> int:
        return volume_bytes([self.tar_bytes])


@dataclass(frozen=True)
class UnpackResult:
    dest: Path
    files: int
    bytes: int


def volume_bytes(sizes: Iterable[int], minimum: int = VOLUME_MIN_FILE_BYTES) -> int:
    """Space on a network volume: every file takes at least ``minimum`` bytes."""
    return sum(max(size, minimum) for size in sizes)


def list_files(source: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(relpath, path) of every regular file under ``source``, sorted by relpath.

    Leftover ``.tmp-*`` files of an interrupted atomic write are never finished data and are
    skipped; a symlink is refused because the tar would carry the link, not the data.
    """
    root = Path(source)
    if not root.is_dir():
        raise DataError(
            f"{root}: not a folder; give the raw-data folder to pack, e.g. data/raw/<run>/<source>"
        )
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith(".tmp-"):
                log.warning("skipping %s: an unfinished temporary file", path)
                continue
            if path.is_symlink() or not path.is_file():
                raise DataError(f"{path}: a symlink or special file; put the file itself there, then pack")
            found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise DataError(f"{root}: no files to pack; run acquire first")
    return sorted(found)


def _sums_text(files: Iterable[PackedFile]) -> bytes:
    return "".join(f"{f.sha256}  {f.relpath}\n" for f in files).encode(ENCODING)


def tar_bytes(entries: Iterable[tuple[str, int]]) -> int:
    """Exact size of the tar :func:`pack` writes for (relpath, size) entries, without reading them."""
    entries = sorted(entries)
    sums_size = sum(64 + 2 + len(rel.encode(ENCODING)) + 1 for rel, _ in entries)
    total = 0
    for name, size in [(SUMS_NAME, sums_size), *entries]:
        total += RAW_STYLE.header_bytes(name, size) + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    total += 2 * tarfile.BLOCKSIZE  # end-of-archive marker
    return -(-total // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def pack(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> PackResult:
    """Write ``out`` (a deterministic tar of ``source``) and ``out.sha256``."""
    out = Path(out)
    root = Path(source)
    if out.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{out}: inside the folder being packed; write the tar outside {root}")
    listed = list_files(root)
    files = tuple(PackedFile(rel, path.stat().st_size, file_sha256(path)) for rel, path in listed)
    sums = TarEntry(SUMS_NAME, _sums_text(files))
    entries = [TarEntry(f.relpath, path, f.size) for f, (_, path) in zip(files, listed, strict=True)]
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            write_tar(handle, [sums, *entries], RAW_STYLE)
        # A file that changed while it was read would make the list lie; check before publishing.
        changed = [f.relpath for f, (_, p) in zip(files, listed, strict=True) if p.stat().st_size != f.size]
        if changed:
            raise DataError(f"{root / changed[0]}: changed while packing; stop the writer and pack again")
    digest = file_sha256(out)
    write_text(checksum_path(out), f"{digest}  {out.name}\n")
    return PackResult(out, out.stat().st_size, digest, files)


def checksum_path(tar_path: str | os.PathLike[str]) -> Path:
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.name + ".sha256")


def verify_tar(tar_path: str | os.PathLike[str]) -> str | None:
    """Check ``tar_path`` against ``<tar>.sha256``; return the digest, or None when no such file."""
    sums = checksum_path(tar_path)
    if not sums.is_file():
        return None
    fields = sums.read_text(encoding="utf-8").split()
    expected = fields[0] if fields else ""
    actual = file_sha256(tar_path)
    if actual != expected:
        raise DataError(
            f"{tar_path}: sha256 {actual[:12]}… differs from {sums.name} ({expected[:12]}…); "
            "the upload is incomplete or corrupt, upload it again"
        )
    return actual


def _read_sums(tar: tarfile.TarFile, tar_path: Path) -> dict[str, str]:
    first = tar.next()
    if first is None or first.name != SUMS_NAME or not first.isfile():
        raise DataError(
            f"{tar_path}: no {SUMS_NAME} as first member; make the tar with `python -m trainrelay pack`"
        )
    handle = tar.extractfile(first)
    assert handle is not None
    sums: dict[str, str] = {}
    for line in handle.read().decode(ENCODING).splitlines():
        digest, _, rel = line.partition("  ")
        sums[rel] = digest
    return sums


def _safe_relpath(name: str, tar_path: Path) -> str:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"{tar_path}: member '{name}' points outside the destination; refusing to unpack")
    return rel.as_posix()


def unpack(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> UnpackResult:
    """Extract a tar made by :func:`pack` into ``dest``, verifying every file's sha256."""
    tar_path = Path(tar_path)
    dest = Path(dest)
    if not tar_path.is_file():
        raise DataError(f"{tar_path}: no such file; upload the packed raw data first")
    verify_tar(tar_path)
    written = 0
    total = 0
    try:
        with tarfile.open(tar_path, "r:", encoding=ENCODING) as tar:
            sums = _read_sums(tar, tar_path)
            seen: set[str] = set()
            # next(), not iteration: iterating a TarFile starts again at the first member.
            while (member := tar.next()) is not None:
                rel = _safe_relpath(member.name, tar_path)
                if not member.isfile():
                    raise DataError(f"{tar_path}: member '{rel}' is not a regular file; refusing to unpack")
                if rel not in sums:
                    raise DataError(f"{tar_path}: member '{rel}' is not in {SUMS_NAME}; the tar was altered")
                source = tar.extractfile(member)
                assert source is not None
                target = dest / rel
                digest = hashlib.sha256()
                with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        handle.write(chunk)
                    if digest.hexdigest() != sums[rel]:
                        raise DataError(f"{tar_path}: '{rel}' differs from its sha256; upload the tar again")
                seen.add(rel)
                written += 1
                total += member.size
    except tarfile.TarError as exc:
        raise DataError(f"{tar_path}: not a readable tar ({exc}); upload it again") from exc
    missing = sorted(set(sums) - seen)
    if missing:
        raise DataError(f"{tar_path}: {len(missing)} file(s) of {SUMS_NAME} missing, e.g. '{missing[0]}'")
    return UnpackResult(dest, written, total)

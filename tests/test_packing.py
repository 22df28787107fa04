"""Packing many small raw files into one tar for a RunPod network volume, and unpacking it verified."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import copy_workflow, jobs_in, run_snakemake, write_config
from trainrelay.cli import main as cli_main
from trainrelay.errors import DataError
from trainrelay.platforms.packing import (
    SUMS_NAME,
    VOLUME_MIN_FILE_BYTES,
    checksum_path,
    pack,
    tar_bytes,
    unpack,
    volume_bytes,
)

LONG = "a-folder-name-long-enough/" * 5 + "file-past-the-100-character-ustar-limit.csv"


def make_tree(root: Path) -> dict[str, bytes]:
    """A raw folder with nested, empty, non-ASCII and >100-character names; returns relpath -> bytes."""
    rng = __import__("random").Random(11)
    files = {f"klines/BTCUSDT/15m/part-{i:03d}.zip": rng.randbytes(rng.randint(1, 5000)) for i in range(40)}
    files["events/events.csv"] = b"timestamp,symbol,text\n"
    files["empty.bin"] = b""
    files["notes/préavis.txt"] = "déjà vu\n".encode()
    files[LONG] = rng.randbytes(70_000)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_bytes_in_equal_bytes_out(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "raw")
    result = pack(tmp_path / "raw", tmp_path / "raw.tar")
    assert [f.relpath for f in result.files] == sorted(files)
    assert result.payload_bytes == sum(len(d) for d in files.values())
    assert {f.relpath: f.sha256 for f in result.files} == {
        rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()
    }

    started = time.time()
    done = unpack(tmp_path / "raw.tar", tmp_path / "out")
    assert (done.files, done.bytes) == (len(files), result.payload_bytes)
    got = {
        p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    }
    assert got == files  # no SHA256SUMS or temporary file left among the data
    # Unpacked now, not at the tar's mtime 0: raw files older than scripts/acquire.py would be
    # acquired again (Snakemake reruns jobs whose outputs are older than their script).
    assert min(os.stat(tmp_path / "out" / rel).st_mtime for rel in files) >= started - 1


def test_tar_layout_and_checksum_file(tmp_path: Path) -> None:
    make_tree(tmp_path / "raw")
    result = pack(tmp_path / "raw", tmp_path / "raw.tar")
    with tarfile.open(tmp_path / "raw.tar") as tar:
        members = tar.getmembers()
        sums = tar.extractfile(members[0]).read().decode()
    assert members[0].name == SUMS_NAME
    assert [m.name for m in members[1:]] == [f.relpath for f in result.files]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    assert sums.splitlines() == [f"{f.sha256}  {f.relpath}" for f in result.files]
    digest = hashlib.sha256((tmp_path / "raw.tar").read_bytes()).hexdigest()
    assert result.tar_sha256 == digest
    assert checksum_path(tmp_path / "raw.tar").read_text() == f"{digest}  raw.tar\n"  # sha256sum -c format
    assert result.tar_bytes == (tmp_path / "raw.tar").stat().st_size
    # The plan sizes the tar without writing it: the estimate must be the exact size.
    assert tar_bytes([(f.relpath, f.size) for f in result.files]) == result.tar_bytes


def test_same_folder_same_bytes(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new inodes, new mtimes
    os.utime(tmp_path / "b" / "empty.bin", (1_700_000_000, 1_700_000_000))
    first = pack(tmp_path / "a", tmp_path / "one.tar")
    second = pack(tmp_path / "b", tmp_path / "two.tar")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    assert first.tar_sha256 == second.tar_sha256


def test_volume_space_saved_for_many_small_files(tmp_path: Path) -> None:
    n = 300
    for i in range(n):
        (tmp_path / "raw" / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "raw" / f"d{i % 7}" / f"f{i:04d}.csv").write_bytes(b"x" * 1024)
    result = pack(tmp_path / "raw", tmp_path / "raw.tar")
    assert VOLUME_MIN_FILE_BYTES == 65_536
    assert result.payload_bytes == n * 1024
    assert result.loose_volume_bytes == n * 65_536 == 19_660_800
    # one 512-byte header + 1024 data bytes per file, the sums member, end blocks, 10 KiB records
    assert result.tar_bytes == tar_bytes([(f.relpath, 1024) for f in result.files])
    assert result.tar_bytes == 491_520  # 300 x 1536 + 24,064 (sums) + end blocks, in 10 KiB records
    assert result.packed_volume_bytes == result.tar_bytes
    assert result.loose_volume_bytes / result.packed_volume_bytes == 40.0
    assert volume_bytes([0, 10, 70_000]) == 2 * 65_536 + 70_000


def test_corrupt_upload_is_refused_before_extracting(tmp_path: Path) -> None:
    make_tree(tmp_path / "raw")
    pack(tmp_path / "raw", tmp_path / "raw.tar")
    data = bytearray((tmp_path / "raw.tar").read_bytes())
    with tarfile.open(tmp_path / "raw.tar") as tar:
        at = tar.getmember(LONG).offset_data + 100
    data[at] ^= 0xFF  # one bit of one file's data
    (tmp_path / "raw.tar").write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"raw\.tar: sha256 \w+… differs from raw\.tar\.sha256 \(\w+…\); .*upload it again"
    ):
        unpack(tmp_path / "raw.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    checksum_path(tmp_path / "raw.tar").unlink()  # without the .sha256 file, each member is checked
    with pytest.raises(DataError, match=r"ustar-limit\.csv' differs from its sha256"):
        unpack(tmp_path / "raw.tar", tmp_path / "out")
    assert not list((tmp_path / "out").rglob("file-past-the-100-character-ustar-limit.csv"))
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def _tar_with(path: Path, members: dict[str, bytes], sums: str | None) -> None:
    with tarfile.open(path, "w") as tar:
        entries = ([(SUMS_NAME, sums.encode())] if sums is not None else []) + list(members.items())
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_hostile_or_foreign_tars_are_refused(tmp_path: Path) -> None:
    evil = b"boom"
    digest = hashlib.sha256(evil).hexdigest()
    _tar_with(tmp_path / "up.tar", {"../evil.txt": evil}, f"{digest}  ../evil.txt\n")
    with pytest.raises(DataError, match=r"'\.\./evil\.txt' points outside the destination"):
        unpack(tmp_path / "up.tar", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()

    _tar_with(tmp_path / "plain.tar", {"a.csv": b"1"}, None)
    with pytest.raises(DataError, match="no SHA256SUMS as first member; make the tar with"):
        unpack(tmp_path / "plain.tar", tmp_path / "out")

    _tar_with(
        tmp_path / "extra.tar", {"a.csv": b"1", "b.csv": b"2"}, f"{hashlib.sha256(b'1').hexdigest()}  a.csv\n"
    )
    with pytest.raises(DataError, match=r"'b\.csv' is not in SHA256SUMS"):
        unpack(tmp_path / "extra.tar", tmp_path / "out")

    _tar_with(tmp_path / "short.tar", {}, f"{digest}  gone.csv\n")
    with pytest.raises(DataError, match=r"1 file\(s\) of SHA256SUMS missing, e.g. 'gone.csv'"):
        unpack(tmp_path / "short.tar", tmp_path / "out")


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        pack(tmp_path / "nope", tmp_path / "x.tar")
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="no files to pack; run acquire first"):
        pack(tmp_path / "raw", tmp_path / "x.tar")
    (tmp_path / "raw" / "a.csv").write_text("1")
    with pytest.raises(DataError, match="inside the folder being packed"):
        pack(tmp_path / "raw", tmp_path / "raw" / "x.tar")
    (tmp_path / "raw" / "link.csv").symlink_to(tmp_path / "raw" / "a.csv")
    with pytest.raises(DataError, match=r"link\.csv: a symlink or special file"):
        pack(tmp_path / "raw", tmp_path / "x.tar")


def test_cli_pack_and_unpack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(10):
        (tmp_path / "raw" / f"{i}.csv").parent.mkdir(exist_ok=True)
        (tmp_path / "raw" / f"{i}.csv").write_bytes(b"y" * 100)
    assert cli_main(["pack", str(tmp_path / "raw"), "--out", str(tmp_path / "raw.tar")]) == 0
    out = capsys.readouterr().out
    size = (tmp_path / "raw.tar").stat().st_size
    assert f"packed 10 files (1000 bytes) into {tmp_path / 'raw.tar'} ({size} bytes, sha256 " in out
    assert f"655360 bytes loose (64 KB minimum per file), {max(size, 65536)} packed" in out
    assert cli_main(["pack", "--unpack", str(tmp_path / "raw.tar"), "--into", str(tmp_path / "o")]) == 0
    assert f"unpacked 10 files (1000 bytes) into {tmp_path / 'o'}" in capsys.readouterr().out
    assert cli_main(["pack", str(tmp_path / "raw")]) == 1
    assert "pack needs SOURCE and --out TAR" in capsys.readouterr().err


def test_unpacked_raw_data_counts_as_acquired(tmp_path: Path) -> None:
    """Raw data packed here and unpacked into a fresh clone: Snakemake does not acquire it again."""
    here = copy_workflow(tmp_path / "here")
    config = write_config(here, {"until": "embeddings", "device": "cpu"})
    raw = "data/raw/tiny/synthetic"
    run_snakemake(here, "--configfile", str(config), "--until", "acquire", timeout=300)
    packed = pack(here / raw, tmp_path / "raw-synthetic.tar")

    pod = copy_workflow(tmp_path / "pod")
    shutil.copy(config, pod / "test.yaml")
    unpack(tmp_path / "raw-synthetic.tar", pod / raw)
    for item in packed.files:
        assert (pod / raw / item.relpath).read_bytes() == (here / raw / item.relpath).read_bytes()
    proc = run_snakemake(pod, "-n", "--configfile", "test.yaml", timeout=300)
    jobs = set(jobs_in(proc.stdout))
    assert "manifest" in jobs and "acquire" not in jobs, jobs

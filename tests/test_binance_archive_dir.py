"""binance.archive_dir: archives downloaded earlier are copied, verified, instead of downloaded.

The archives come from the synthetic source, which writes exactly Binance's layout
(data/futures/um/monthly/klines/...zip + .CHECKSUM) into a tmp folder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import acquire_error
from trainrelay.config import config_errors
from trainrelay.data import archive, synthetic
from trainrelay.data.acquire import acquire, raw_targets
from trainrelay.data.manifest import build_manifest

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
KLINES_3M = "data/futures/um/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-01.zip"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One month of BTCUSDT futures archives (3m, 15m, funding), as Binance publishes them."""
    folder = tmp_path_factory.mktemp("binance-archives")
    config = copy.deepcopy(DEMO)
    config["synthetic"].update(symbols=["BTCUSDT"], start_month="2024-01", months=1, market="futures/um")
    synthetic.generate(config, folder)
    return folder


def make_config(archive_dir: Path | str | None) -> dict:
    config = copy.deepcopy(DEMO)
    config["source"] = "binance"
    # A closed port: a test that reached for the network would fail, not download.
    config["binance"].update(
        base_url="http://127.0.0.1:9",
        market="futures/um",
        symbols=["BTCUSDT"],
        months=["2024-01"],
        funding=True,
        retries=0,
        archive_dir=None if archive_dir is None else str(archive_dir),
    )
    config["manifest"].update(min_rows=100)
    return config


def copy_of(archives: Path, tmp_path: Path) -> Path:
    """A private copy of the archive folder that a test may damage."""
    folder = tmp_path / "archives"
    for path in archives.rglob("*"):
        if path.is_file():
            target = folder / path.relative_to(archives)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return folder


def test_archives_are_copied_byte_for_byte_and_pass_the_manifest(archives: Path, tmp_path: Path) -> None:
    config = make_config(archives)
    raw = tmp_path / "data/raw/t/binance"
    acquire(config, raw)
    written = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    assert written == raw_targets(config)  # the same targets as a download
    for relpath in raw_targets(config):
        if relpath.startswith("data/"):
            assert (raw / relpath).read_bytes() == (archives / relpath).read_bytes()
    manifest = build_manifest(
        raw, [str(raw / p) for p in raw_targets(config)], config, tmp_path / "m.parquet"
    )
    klines = manifest.filter((pl.col("kind") == "klines") & (pl.col("interval") == "3m"))
    assert klines["rows"].to_list() == [31 * 480] and klines["month"].to_list() == ["2024-01"]
    assert manifest.filter(pl.col("kind") == "funding")["rows"].to_list() == [93]


def test_a_second_run_keeps_verified_copies(archives: Path, tmp_path: Path) -> None:
    config = make_config(archives)
    raw = tmp_path / "raw"
    acquire(config, raw)
    copied = raw / KLINES_3M
    before = copied.stat().st_mtime_ns
    acquire(config, raw)
    assert copied.stat().st_mtime_ns == before


def test_checksum_mismatch_names_the_archive(archives: Path, tmp_path: Path) -> None:
    folder = copy_of(archives, tmp_path)
    damaged = folder / KLINES_3M
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    message = acquire_error(make_config(folder), tmp_path / "raw")
    assert message.startswith(f"{damaged}: checksum mismatch with BTCUSDT-3m-2024-01.zip.CHECKSUM (expected ")
    assert message.endswith("the archive is corrupt or incomplete: download it again")


def test_missing_checksum_file(archives: Path, tmp_path: Path) -> None:
    folder = copy_of(archives, tmp_path)
    archive.checksum_path(folder / KLINES_3M).unlink()
    message = acquire_error(make_config(folder), tmp_path / "raw")
    assert message == (
        f"{folder / KLINES_3M}.CHECKSUM: missing, so BTCUSDT-3m-2024-01.zip cannot be verified; put "
        "Binance's .CHECKSUM file beside it (data.binance.vision has one for every archive)"
    )


def test_missing_archive_names_what_is_missing(archives: Path, tmp_path: Path) -> None:
    config = make_config(archives)
    config["binance"]["months"] = ["2024-01", "2024-02"]
    message = acquire_error(config, tmp_path / "raw")
    missing = archives / "data/futures/um/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-02.zip"
    assert message == (
        f"{missing}: not found: binance.archive_dir has no BTCUSDT 3m klines for 2024-02; put the archive "
        "and its .CHECKSUM there, or fix binance.symbols, months, market or intervals"
    )


def test_archive_dir_that_is_not_a_folder(tmp_path: Path) -> None:
    message = acquire_error(make_config(tmp_path / "nope"), tmp_path / "raw")
    assert message.startswith(f"{tmp_path / 'nope'}: folder not found (binance.archive_dir)")


def test_schema_has_archive_dir() -> None:
    for value in (None, "../archives"):
        errors = config_errors(make_config(value))
        assert not [e for e in errors if e.startswith("config: binance")]
    config = make_config(None)
    del config["binance"]["archive_dir"]
    assert any("archive_dir" in e for e in config_errors(config))

"""Binance archive layout: round trips with and without header, µs timestamps, checksums, corrupt zips."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import polars as pl
import pytest

from trainrelay.data import archive
from trainrelay.errors import DataError

UTC = dt.UTC
START_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC
STEP = archive.INTERVAL_MS["15m"]

# Binance's futures header (2022+) and a spot row from 2025 with microsecond timestamps.
FUTURES_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


def sample_klines(n: int = 4) -> pl.DataFrame:
    open_ms = pl.Series([START_MS + i * STEP for i in range(n)])
    return pl.DataFrame(
        {
            "open_time": open_ms.cast(pl.Datetime("ms", "UTC")),
            "open": [42000.1 + i for i in range(n)],
            "high": [42010.5 + i for i in range(n)],
            "low": [41990.0 + i for i in range(n)],
            "close": [42001.1 + i for i in range(n)],
            "volume": [12.345 * (i + 1) for i in range(n)],
            "close_time": (open_ms + STEP - 1).cast(pl.Datetime("ms", "UTC")),
            "quote_volume": [518_512.3456 * (i + 1) for i in range(n)],
            "count": [100 + i for i in range(n)],
            "taker_buy_volume": [6.1 * (i + 1) for i in range(n)],
            "taker_buy_quote_volume": [256_000.25 * (i + 1) for i in range(n)],
        }
    )


def zip_with(path: Path, text: str, member: str | None = None) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        handle.writestr(member or path.name.removesuffix(".zip") + ".csv", text)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("header", [False, True])
def test_klines_round_trip_with_and_without_header(tmp_path: Path, header: bool) -> None:
    frame = sample_klines()
    target = tmp_path / archive.kline_relpath("futures/um", "BTCUSDT", "15m", "2024-01")
    text = archive.klines_to_csv(frame, header=header)
    assert text.startswith(FUTURES_HEADER if header else f"{START_MS},42000.1,")
    archive.write_archive(target, text)
    back = archive.read_klines(target)
    assert back.equals(frame)
    assert back.schema["open_time"] == pl.Datetime("ms", "UTC")
    assert back["close_time"][0] == dt.datetime(2024, 1, 1, 0, 14, 59, 999000, tzinfo=UTC)


def test_microsecond_timestamps_become_milliseconds(tmp_path: Path) -> None:
    micro = START_MS * 1000
    rows = [
        f"{micro + i * STEP * 1000},1.5,1.6,1.4,1.55,10,{micro + (i + 1) * STEP * 1000 - 1},15.5,3,5,7.75,0"
        for i in range(3)
    ]
    path = zip_with(tmp_path / "BTCUSDT-15m-2025-01.zip", "\n".join(rows) + "\n")
    frame = archive.read_klines(path)
    assert frame["open_time"].to_list() == [dt.datetime(2024, 1, 1, 0, 15 * i, tzinfo=UTC) for i in range(3)]
    # µs close time 899_999_999 -> ms 899_999 (integer division keeps the bar inside its interval)
    assert frame["close_time"][0] == dt.datetime(2024, 1, 1, 0, 14, 59, 999000, tzinfo=UTC)
    assert frame["close"].to_list() == [1.55, 1.55, 1.55]


def test_funding_round_trip_and_headerless(tmp_path: Path) -> None:
    times = pl.Series([START_MS + i * 8 * 3_600_000 for i in range(3)]).cast(pl.Datetime("ms", "UTC"))
    frame = pl.DataFrame(
        {
            "calc_time": times,
            "funding_interval_hours": [8, 8, 8],
            "last_funding_rate": [0.0001, -2.5e-05, 0.00031],
        }
    )
    target = tmp_path / archive.funding_relpath("futures/um", "BTCUSDT", "2024-01")
    archive.write_archive(target, archive.funding_to_csv(frame))
    assert archive.read_funding(target).equals(frame)
    headerless = zip_with(tmp_path / "f.zip", f"{START_MS},8,0.0001\n{START_MS + 28_800_000},8,-0.0002\n")
    assert archive.read_funding(headerless)["last_funding_rate"].to_list() == [0.0001, -0.0002]


def test_write_archive_is_byte_deterministic_and_checksummed(tmp_path: Path) -> None:
    text = archive.klines_to_csv(sample_klines())
    archive.write_archive(tmp_path / "a" / "X-15m-2024-01.zip", text)
    archive.write_archive(tmp_path / "b" / "X-15m-2024-01.zip", text)
    first = (tmp_path / "a" / "X-15m-2024-01.zip").read_bytes()
    assert first == (tmp_path / "b" / "X-15m-2024-01.zip").read_bytes()
    digest = archive.verify_checksum(tmp_path / "a" / "X-15m-2024-01.zip")
    assert (tmp_path / "a" / "X-15m-2024-01.zip.CHECKSUM").read_text() == f"{digest}  X-15m-2024-01.zip\n"


def test_checksum_mismatch_and_missing_are_one_line_errors(tmp_path: Path) -> None:
    target = tmp_path / "X-15m-2024-01.zip"
    archive.write_archive(target, archive.klines_to_csv(sample_klines()))
    target.write_bytes(target.read_bytes() + b"x")
    with pytest.raises(DataError, match="checksum mismatch") as info:
        archive.verify_checksum(target)
    assert "\n" not in str(info.value)
    archive.checksum_path(target).unlink()
    with pytest.raises(DataError, match="checksum file missing"):
        archive.verify_checksum(target)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"PK\x03\x04 this is not really a zip", "not a readable zip archive"),
        (b"", "not a readable zip archive"),
    ],
)
def test_corrupt_zip_is_one_line_data_error(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "BTCUSDT-15m-2024-01.zip"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as info:
        archive.read_klines(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_truncated_zip_is_one_line_data_error(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-15m-2024-01.zip"
    archive.write_archive(path, archive.klines_to_csv(sample_klines(200)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        archive.read_klines(path)
    assert "\n" not in str(info.value)


def test_zip_without_single_csv_and_garbage_csv(tmp_path: Path) -> None:
    path = zip_with(tmp_path / "a.zip", "hello", member="readme.txt")
    with pytest.raises(DataError, match="expected one CSV inside the zip, found 0"):
        archive.read_klines(path)
    garbage = zip_with(tmp_path / "b.zip", "1704067200000,abc,1,1,1,1,1704067499999,1,1,1,1,0\n")
    with pytest.raises(DataError, match="cannot parse CSV") as info:
        archive.read_klines(garbage)
    assert "\n" not in str(info.value)


def test_layout_paths() -> None:
    assert archive.kline_relpath("futures/um", "BTCUSDT", "3m", "2024-02") == (
        "data/futures/um/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-02.zip"
    )
    assert archive.funding_relpath("futures/um", "ETHUSDT", "2024-02") == (
        "data/futures/um/monthly/fundingRate/ETHUSDT/ETHUSDT-fundingRate-2024-02.zip"
    )
    with pytest.raises(DataError, match="only for futures"):
        archive.funding_relpath("spot", "BTCUSDT", "2024-02")

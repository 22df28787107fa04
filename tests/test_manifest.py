"""The manifest stage: per-file rows with exact values, and every check failing with its one line."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import polars as pl
import pytest

from tests import rawdata_factory as factory
from trainrelay.data import archive
from trainrelay.data.manifest import build_manifest
from trainrelay.errors import ConfigError, DataError

BTC_JAN = f"{factory.RAW_ROOT}/data/futures/um/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-01.zip"
BTC_FEB = f"{factory.RAW_ROOT}/data/futures/um/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-02.zip"
OUT = "results/t/manifest/base_manifest.parquet"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    return factory.build_market(tmp_path)


def run(files: list[str], overrides: dict | None = None) -> pl.DataFrame:
    return build_manifest(factory.RAW_ROOT, files, factory.config(overrides), OUT)


def fails(files: list[str], overrides: dict | None = None) -> str:
    with pytest.raises(DataError) as info:
        run(files, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def rewrite(path: str, frame: pl.DataFrame, header: bool = False) -> None:
    """Replace a kline archive (with a matching checksum, so only the content check can fail)."""
    archive.write_archive(path, archive.klines_to_csv(frame, header=header))


def test_rows_describe_each_file(tree: list[str]) -> None:
    frame = run(tree)
    assert Path(OUT).is_file()
    assert frame.get_column("path").to_list() == sorted(tree)
    assert frame.schema["first_ts"] == pl.Datetime("ms", "UTC")
    jan = frame.filter(pl.col("path") == BTC_JAN).row(0, named=True)
    # 2024-01-30 00:00 .. 2024-01-31 23:57 in 3m bars: 2 days x 480.
    assert (jan["kind"], jan["symbol"], jan["interval"], jan["month"]) == (
        "klines",
        "BTCUSDT",
        "3m",
        "2024-01",
    )
    assert jan["rows"] == 960
    assert jan["first_ts"] == dt.datetime(2024, 1, 30, tzinfo=dt.UTC)
    assert jan["last_ts"] == dt.datetime(2024, 1, 31, 23, 57, tzinfo=dt.UTC)
    assert jan["gaps"] == 0
    assert jan["bytes"] == Path(BTC_JAN).stat().st_size
    assert jan["sha256"] == hashlib.sha256(Path(BTC_JAN).read_bytes()).hexdigest()
    feb = frame.filter(pl.col("path") == BTC_FEB).row(0, named=True)
    assert feb["rows"] == 2400 - 960
    funding = frame.filter((pl.col("kind") == "funding") & (pl.col("symbol") == "BTCUSDT"))
    assert funding.get_column("rows").sum() == 15  # 5 days x 3 rates
    assert funding.get_column("interval").is_null().all() and funding.get_column("gaps").is_null().all()
    events = frame.filter(pl.col("kind") == "events").row(0, named=True)
    assert events["rows"] == 1 and events["symbol"] is None


def test_same_input_same_bytes(tree: list[str]) -> None:
    run(tree)
    first = Path(OUT).read_bytes()
    run(tree)
    assert Path(OUT).read_bytes() == first


def test_gaps_are_counted_within_and_across_months(tree: list[str]) -> None:
    jan = archive.read_klines(BTC_JAN)
    feb = archive.read_klines(BTC_FEB)
    rewrite(BTC_JAN, jan.filter(~pl.int_range(pl.len()).is_in([10, 11, 500])))  # 3 bars missing
    rewrite(BTC_FEB, feb.slice(2))  # the first two February bars missing: a gap across the boundary
    frame = run(tree, {"manifest": {"max_gaps": 5}})
    gaps = dict(frame.select("path", "gaps").filter(pl.col("path").is_in([BTC_JAN, BTC_FEB])).iter_rows())
    assert gaps == {BTC_JAN: 3, BTC_FEB: 2}
    listed = dict(
        frame.select("path", "missing").filter(pl.col("path").is_in([BTC_JAN, BTC_FEB])).iter_rows()
    )
    three = dt.timedelta(minutes=3)
    assert [(g["first"], g["last"], g["bars"], g["cause"]) for g in listed[BTC_JAN]] == [
        (jan["open_time"][10], jan["open_time"][11], 2, "missing"),
        (jan["open_time"][500], jan["open_time"][500], 1, "missing"),
    ]
    assert [(g["first"], g["bars"]) for g in listed[BTC_FEB]] == [(feb["open_time"][0], 2)]
    assert listed[BTC_FEB][0]["last"] == feb["open_time"][0] + three
    message = fails(tree, {"manifest": {"max_gaps": 2}})
    first = f"{jan['open_time'][10]:%Y-%m-%dT%H:%M:%SZ}"
    assert message.startswith(f"{BTC_JAN}: 3 missing or outage 3m bar(s) (first missing at {first})")
    assert "(manifest check 'gaps')" in message


def test_outage_bars_are_listed_and_counted_as_missing(tree: list[str]) -> None:
    """Zero volume and open = high = low = close: an exchange outage, not a quiet market."""
    jan = archive.read_klines(BTC_JAN)
    flat = pl.int_range(pl.len()).is_between(100, 103)
    price = pl.col("close").shift(1)
    rewrite(
        BTC_JAN,
        jan.with_columns(
            *[
                pl.when(flat).then(price).otherwise(pl.col(c)).alias(c)
                for c in ("open", "high", "low", "close")
            ],
            *[pl.when(flat).then(0.0).otherwise(pl.col(c)).alias(c) for c in ("volume", "taker_buy_volume")],
        ),
    )
    frame = run(tree, {"manifest": {"max_gaps": 4}})
    row = frame.filter(pl.col("path") == BTC_JAN).row(0, named=True)
    assert row["gaps"] == 4
    assert [(g["first"], g["last"], g["bars"], g["cause"]) for g in row["missing"]] == [
        (jan["open_time"][100], jan["open_time"][103], 4, "outage")
    ]
    assert "first outage at" in fails(tree, {"manifest": {"max_gaps": 3}})


def test_checksum_mismatch(tree: list[str]) -> None:
    data = bytearray(Path(BTC_JAN).read_bytes())
    data[-30] ^= 0xFF
    Path(BTC_JAN).write_bytes(bytes(data))
    message = fails(tree)
    assert message.startswith(f"{BTC_JAN}: checksum mismatch")


def test_corrupt_zip(tree: list[str]) -> None:
    garbage = b"this is not a zip archive"
    Path(BTC_JAN).write_bytes(garbage)
    archive.checksum_path(BTC_JAN).write_text(f"{hashlib.sha256(garbage).hexdigest()}  x.zip\n")
    assert fails(tree).startswith(f"{BTC_JAN}: not a readable zip archive")


def test_missing_column(tree: list[str]) -> None:
    frame = archive.read_klines(BTC_JAN).drop("volume")
    csv = frame.with_columns(pl.col("open_time", "close_time").dt.epoch("ms")).write_csv()
    archive.write_archive(BTC_JAN, csv)
    message = fails(tree)
    assert message.startswith(f"{BTC_JAN}: missing column(s) volume")


def test_non_monotonic(tree: list[str]) -> None:
    frame = archive.read_klines(BTC_JAN)
    order = list(range(frame.height))
    order[100], order[101] = 101, 100
    rewrite(BTC_JAN, frame[order])
    message = fails(tree)
    assert message == (
        f"{BTC_JAN}: timestamps not strictly increasing at row 102 (manifest check 'monotonic'); "
        "fix or re-download the file"
    )


def test_non_monotonic_across_month_boundary(tree: list[str]) -> None:
    feb = archive.read_klines(BTC_FEB)
    earlier = feb.with_columns(
        pl.col("open_time") - pl.duration(hours=1), pl.col("close_time") - pl.duration(hours=1)
    )
    rewrite(BTC_FEB, earlier)
    message = fails(tree)
    assert message.startswith(f"{BTC_FEB}: first timestamp 2024-01-31T23:00:00Z is not after the last one")
    assert "(manifest check 'monotonic')" in message


def test_duplicate_timestamps(tree: list[str]) -> None:
    frame = archive.read_klines(BTC_JAN)
    rewrite(BTC_JAN, pl.concat([frame.slice(0, 50), frame.slice(49, 1), frame.slice(50)]))
    message = fails(tree)
    assert message.startswith(f"{BTC_JAN}: duplicate timestamp 2024-01-30T02:27:00Z at row 51")
    assert "(manifest check 'unique')" in message


def test_empty_file(tree: list[str]) -> None:
    rewrite(BTC_JAN, archive.read_klines(BTC_JAN).clear(), header=True)
    assert fails(tree) == (
        f"{BTC_JAN}: no data rows (manifest check 'empty'); delete the file and re-run acquire"
    )


def test_nan_value(tree: list[str]) -> None:
    frame = archive.read_klines(BTC_JAN)
    rewrite(
        BTC_JAN,
        frame.with_columns(
            pl.when(pl.int_range(pl.len()) == 7).then(float("nan")).otherwise(pl.col("close")).alias("close")
        ),
    )
    message = fails(tree)
    assert message.startswith(f"{BTC_JAN}: missing or NaN value in column 'close' at row 8")
    assert "(manifest check 'nan')" in message


def test_configured_fine_interval_missing(tree: list[str]) -> None:
    message = fails(tree, {"intervals": {"fine": "1m"}})
    # The files are 3m klines in a folder named 3m; asking for 1m finds none.
    assert "no klines 1m files for symbol BTCUSDT (manifest check 'symbols')" in message


def test_missing_symbol(tree: list[str]) -> None:
    message = fails(tree, {"manifest": {"required_symbols": ["BTCUSDT", "SOLUSDT"]}})
    assert message.startswith(
        f"{factory.RAW_ROOT}: no klines 3m files for symbol SOLUSDT (manifest check 'symbols')"
    )


def test_configured_symbols_are_required_by_default(tree: list[str]) -> None:
    message = fails(tree, {"synthetic": {"symbols": ["BTCUSDT", "ETHUSDT", "XRPUSDT"]}})
    assert "symbol XRPUSDT" in message


def test_missing_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    files = factory.build_market(tmp_path, with_funding=False)
    message = fails(files)
    assert message.startswith(f"{factory.RAW_ROOT}: no funding files for symbol BTCUSDT")
    run(files, {"manifest": {"required_kinds": ["klines", "events"]}})  # passes when not required


def test_too_few_rows(tree: list[str]) -> None:
    message = fails(tree, {"manifest": {"min_rows": 2401}})
    folder = str(Path(BTC_JAN).parent)
    assert message.startswith(f"{folder}: BTCUSDT klines 3m has 2400 rows, fewer than manifest.min_rows=2401")
    assert "(manifest check 'min_rows')" in message


def test_kind_the_source_cannot_provide(tree: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"manifest.required_kinds has series"):
        run(tree, {"manifest": {"required_kinds": ["klines", "series"]}})


def test_series_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = Path("data/raw/files/series/ett.parquet")
    path.parent.mkdir(parents=True)
    stamps = pl.datetime_range(dt.datetime(2016, 7, 1), dt.datetime(2016, 7, 5, 23), "1h", eager=True)
    frame = pl.DataFrame({"timestamp": stamps, "OT": [float(i) for i in range(len(stamps))]})
    frame.write_parquet(path)
    overrides = {
        "source": "files",
        "files": {"symbol": "ett", "interval": "1h"},
        "manifest": {"required_kinds": ["series"], "min_rows": 100},
    }
    row = build_manifest("data/raw/files", [str(path)], factory.config(overrides), OUT).row(0, named=True)
    assert (row["kind"], row["symbol"], row["interval"], row["rows"], row["gaps"]) == (
        "series",
        "ett",
        "1h",
        120,
        0,
    )
    assert row["first_ts"] == dt.datetime(2016, 7, 1, tzinfo=dt.UTC)
    frame.with_columns(pl.col("OT").replace(3.0, None)).write_parquet(path)
    with pytest.raises(
        DataError, match=r"missing or NaN value in column 'OT' at row 4 \(manifest check 'nan'\)"
    ):
        build_manifest("data/raw/files", [str(path)], factory.config(overrides), OUT)
    frame.write_parquet(path)
    with pytest.raises(DataError, match=r"closer than the interval 4h \(manifest check 'interval'\)"):
        build_manifest(
            "data/raw/files", [str(path)], factory.config({**overrides, "files": {"interval": "4h"}}), OUT
        )


def test_coin_m_symbols_with_an_underscore_are_known_files(tmp_path) -> None:
    from trainrelay.config import config_errors, load_config
    from trainrelay.data.manifest import classify

    root = tmp_path / "data/raw/binance"
    kline = root / "data/futures/cm/monthly/klines/BTCUSD_PERP/3m/BTCUSD_PERP-3m-2024-02.zip"
    funding = root / "data/futures/cm/monthly/fundingRate/BTCUSD_PERP/BTCUSD_PERP-fundingRate-2024-02.zip"
    config = load_config(factory.REPO / "config" / "config.yaml")
    assert classify(kline, config, root).symbol == "BTCUSD_PERP"
    known = classify(funding, config, root)
    assert (known.kind, known.symbol) == ("funding", "BTCUSD_PERP")
    config["binance"].update(market="futures/cm", symbols=["BTCUSD_PERP", "ETHUSD_PERP"])
    assert config_errors(config) == []

"""The freqtrade source: a freqtrade data folder -> raw parquet files -> manifest.

Unit tests build small freqtrade folders in tmp_path; the real-data test reads the Binance BTC/ETH
folder in ../shared/data/crypto/ in place (skipped where that folder is absent).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import acquire_error
from trainrelay.config import config_errors
from trainrelay.data import archive
from trainrelay.data.acquire import acquire, raw_targets
from trainrelay.data.manifest import build_manifest, classify
from trainrelay.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
REAL_DATADIR = REPO / "../shared/data/crypto/freqtrade/binance"
START = datetime(2024, 1, 1, tzinfo=UTC)
BARS = 400  # 400 x 15m = a little over four days


def make_config(datadir: Path | str | None, **section: object) -> dict:
    config = copy.deepcopy(DEMO)
    config["source"] = "freqtrade"
    config["freqtrade"]["datadir"] = None if datadir is None else str(datadir)
    config["freqtrade"].update(section)
    config["intervals"] = {"fine": "15m", "bar": "15m"}
    config["manifest"].update(min_rows=10, max_gaps=0)
    return config


def candles(
    rows: int = BARS, every: str = "15m", start: datetime = START, price: float = 100.0
) -> pl.DataFrame:
    dates = pl.datetime_range(
        start, start.replace(year=start.year + 1), every, eager=True, time_unit="ns", time_zone="UTC"
    )[:rows]
    close = pl.Series([price + 0.01 * i for i in range(rows)], dtype=pl.Float64)
    return pl.DataFrame(
        {"date": dates, "open": close - 0.005, "high": close + 0.02, "low": close - 0.02, "close": close}
    ).with_columns(volume=pl.lit(5.0))


def funding_rates(rows: int = 14) -> pl.DataFrame:
    """freqtrade's funding layout: the rate in 'open', the rest 0; Binance's ms jitter on some times."""
    frame = candles(rows, "8h").with_columns(
        pl.col("date") + pl.duration(milliseconds=pl.int_range(pl.len()) % 3 * 4),
        open=pl.lit(0.0001),
        high=pl.lit(0.0),
        low=pl.lit(0.0),
        close=pl.lit(0.0),
        volume=pl.lit(0.0),
    )
    return frame


def write(path: Path, frame: pl.DataFrame) -> Path:
    """Write ``frame`` in the format freqtrade uses for the path's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith((".json", ".json.gz")):
        rows = frame.with_columns(pl.col("date").dt.epoch("ms")).rows()
        text = json.dumps([list(r) for r in rows])
        if path.name.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    elif path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_ipc(path, compression="lz4")
    return path


def futures_folder(root: Path, pairs: tuple[str, ...] = ("BTC_USDT_USDT", "ETH_USDT_USDT")) -> Path:
    for i, stem in enumerate(pairs):
        write(root / "futures" / f"{stem}-15m-futures.feather", candles(price=100.0 * (i + 1)))
        write(root / "futures" / f"{stem}-8h-funding_rate.feather", funding_rates())
    return root


def test_raw_targets_come_from_the_config_alone(tmp_path: Path) -> None:
    # The folder does not exist: raw_targets is evaluated while Snakemake builds the DAG.
    config = make_config(tmp_path / "nowhere")
    assert raw_targets(config) == [
        "events/events.csv",
        "futures/um/SOURCE.json",
        "futures/um/fundingRate/BTCUSDT/BTCUSDT-fundingRate.parquet",
        "futures/um/fundingRate/ETHUSDT/ETHUSDT-fundingRate.parquet",
        "futures/um/klines/BTCUSDT/15m/BTCUSDT-15m.parquet",
        "futures/um/klines/ETHUSDT/15m/ETHUSDT-15m.parquet",
    ]
    spot = make_config(tmp_path, trading_mode="spot", pairs=["BTC/USDT"], funding=False)
    spot["intervals"] = {"fine": "3m", "bar": "15m"}
    assert raw_targets(spot) == [
        "events/events.csv",
        "spot/SOURCE.json",
        "spot/klines/BTCUSDT/15m/BTCUSDT-15m.parquet",
        "spot/klines/BTCUSDT/3m/BTCUSDT-3m.parquet",
    ]


def test_acquire_writes_exactly_the_targets_with_binance_columns(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "user_data/data/binance")
    config = make_config(datadir)
    raw = tmp_path / "raw"
    acquire(config, raw)
    written = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    assert written == raw_targets(config)

    klines = pl.read_parquet(raw / "futures/um/klines/ETHUSDT/15m/ETHUSDT-15m.parquet")
    assert klines.columns == ["open_time", "open", "high", "low", "close", "volume"]
    assert klines.schema["open_time"] == pl.Datetime("ms", "UTC")
    assert all(klines.schema[c] == pl.Float64 for c in klines.columns[1:])
    assert klines.height == BARS and klines["close"][0] == pytest.approx(200.0)
    funding = pl.read_parquet(raw / "futures/um/fundingRate/BTCUSDT/BTCUSDT-fundingRate.parquet")
    assert funding.columns == ["calc_time", "last_funding_rate"]
    assert funding["calc_time"][1] == datetime(2024, 1, 1, 8, 0, 0, 4000, tzinfo=UTC)  # jitter kept
    assert funding["last_funding_rate"].to_list() == [0.0001] * 14

    provenance = json.loads((raw / "futures/um/SOURCE.json").read_text())
    assert provenance["exchange"] == "binance" and provenance["datadir"] == str(datadir)
    first = provenance["files"][0]
    assert first["file"] == "futures/BTC_USDT_USDT-15m-futures.feather"
    source = datadir / first["file"]
    assert first["bytes"] == source.stat().st_size and len(first["sha256"]) == 64


def test_archive_readers_return_only_the_columns_present(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    acquire(make_config(futures_folder(tmp_path / "binance")), raw)
    klines = archive.read_klines(raw / "futures/um/klines/BTCUSDT/15m/BTCUSDT-15m.parquet")
    assert klines.columns == ["open_time", "open", "high", "low", "close", "volume"]
    assert "taker_buy_volume" not in klines.columns and "count" not in klines.columns
    funding = archive.read_funding(raw / "futures/um/fundingRate/BTCUSDT/BTCUSDT-fundingRate.parquet")
    assert funding.columns == ["calc_time", "last_funding_rate"]


@pytest.mark.parametrize("ext", [".parquet", ".json", ".json.gz"])
def test_every_freqtrade_format_gives_the_same_raw_data(tmp_path: Path, ext: str) -> None:
    frames = {}
    for name in ("feather", ext):
        suffix = ".feather" if name == "feather" else ext
        datadir = tmp_path / name.strip(".") / "binance"
        write(datadir / "futures" / f"BTC_USDT_USDT-15m-futures{suffix}", candles())
        write(datadir / "futures" / f"BTC_USDT_USDT-8h-funding_rate{suffix}", funding_rates())
        raw = tmp_path / name.strip(".") / "raw"
        acquire(make_config(datadir, pairs=["BTC/USDT:USDT"]), raw)
        frames[name] = pl.read_parquet(raw / "futures/um/klines/BTCUSDT/15m/BTCUSDT-15m.parquet")
    assert frames["feather"].equals(frames[ext])


def test_spot_folder_with_two_intervals(tmp_path: Path) -> None:
    datadir = tmp_path / "binance"
    write(datadir / "BTC_USDT-3m.feather", candles(BARS * 5, "3m"))
    write(datadir / "BTC_USDT-15m.feather", candles())
    write(datadir / "futures" / "BTC_USDT_USDT-15m-futures.feather", candles(price=1.0))  # not read
    config = make_config(datadir, trading_mode="spot", pairs=["BTC/USDT"], funding=False)
    config["intervals"] = {"fine": "3m", "bar": "15m"}
    config["manifest"]["required_kinds"] = ["klines"]
    raw = tmp_path / "raw"
    acquire(config, raw)
    assert pl.read_parquet(raw / "spot/klines/BTCUSDT/3m/BTCUSDT-3m.parquet").height == BARS * 5
    assert pl.read_parquet(raw / "spot/klines/BTCUSDT/15m/BTCUSDT-15m.parquet")["open"][0] == 99.995


def test_manifest_reads_the_unsplit_parquet_files(tmp_path: Path) -> None:
    config = make_config(futures_folder(tmp_path / "binance"))
    raw = tmp_path / "data/raw/t/freqtrade"
    acquire(config, raw)
    files = [str(raw / p) for p in raw_targets(config)]
    manifest = build_manifest(raw, files, config, tmp_path / "manifest.parquet")
    assert manifest.height == 5  # SOURCE.json is provenance, not data: no row
    klines = manifest.filter(pl.col("kind") == "klines").row(0, named=True)
    assert (klines["symbol"], klines["interval"], klines["month"]) == ("BTCUSDT", "15m", None)
    assert klines["rows"] == BARS and klines["gaps"] == 0
    funding = manifest.filter(pl.col("kind") == "funding")
    assert funding["rows"].to_list() == [14, 14] and funding["month"].to_list() == [None, None]


def test_manifest_classifies_parquet_and_keeps_monthly_zips(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    raw = classify("data/raw/r/freqtrade/spot/klines/BTCUSDT/3m/BTCUSDT-3m.parquet", config, "data/raw/r")
    assert (raw.kind, raw.symbol, raw.interval, raw.month) == ("klines", "BTCUSDT", "3m", None)
    raw = classify("d/futures/um/fundingRate/ETHUSDT/ETHUSDT-fundingRate.parquet", config, "d")
    assert (raw.kind, raw.symbol, raw.month) == ("funding", "ETHUSDT", None)
    zipped = classify("d/data/spot/monthly/klines/BTCUSDT/3m/BTCUSDT-3m-2024-01.zip", config, "d")
    assert zipped.month == "2024-01"
    with pytest.raises(DataError, match="not a known raw file"):
        classify("d/spot/klines/BTCUSDT/3m/BTCUSDT-3m.zip", config, "d")  # a zip needs its month


def test_manifest_columns_check_names_a_parquet_that_is_not_a_candle_table(tmp_path: Path) -> None:
    config = make_config(futures_folder(tmp_path / "binance"))
    raw = tmp_path / "raw"
    acquire(config, raw)
    bad = raw / "futures/um/klines/BTCUSDT/15m/BTCUSDT-15m.parquet"
    pl.DataFrame({"open_time": [1], "price": [1.0]}).write_parquet(bad)
    files = [str(raw / p) for p in raw_targets(config)]
    with pytest.raises(DataError) as caught:
        build_manifest(raw, files, config, tmp_path / "manifest.parquet")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{bad}: not a candle table: missing column(s) open, high, low, close, volume")
    assert "(manifest check 'columns')" in message
    assert not (tmp_path / "manifest.parquet").exists()


def test_schema_accepts_the_section_and_rejects_a_bad_pair(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    # Only this section's and the source's keys: other sections' consistency checks are not ours.
    assert [e for e in config_errors(config) if e.startswith(("config: freqtrade", "config: source"))] == []
    config["freqtrade"]["pairs"] = ["BTCUSDT"]
    assert any("freqtrade.pairs" in e for e in config_errors(config))


# -- one line per user error, and nothing left looking finished ---------------------------------


def test_missing_datadir_setting_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        raw_targets(make_config(None))
    assert str(caught.value) == (
        "config: freqtrade.datadir is not set; set it to freqtrade's data folder user_data/data/<exchange>/ "
        "(relative to the workdir), e.g. ../shared/data/crypto/freqtrade/binance"
    )


def test_missing_folder(tmp_path: Path) -> None:
    message = acquire_error(make_config(tmp_path / "nope"), tmp_path / "raw")
    assert message.startswith(f"{tmp_path / 'nope'}: folder not found (freqtrade.datadir)")


def test_missing_pair_lists_the_pairs_present(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance", ("ETH_USDT_USDT",))
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message == (
        f"{datadir / 'futures'}: no candle files for pair BTC/USDT:USDT "
        "(BTC_USDT_USDT-<timeframe>-futures.{feather,parquet,json,json.gz}); it holds ETH/USDT:USDT; "
        "fix freqtrade.pairs / freqtrade.trading_mode or download the pair with `freqtrade download-data`"
    )


def test_missing_timeframe_lists_the_timeframes_and_names_the_setting(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    write(datadir / "futures" / "BTC_USDT_USDT-1h-futures.feather", candles(every="1h"))
    config = make_config(datadir)
    config["intervals"] = {"fine": "3m", "bar": "15m"}
    message = acquire_error(config, tmp_path / "raw")
    assert message == (
        f"{datadir / 'futures'}: no 3m candles for BTC/USDT:USDT; its timeframes there are 15m, 1h: "
        "set intervals.fine to one of them, or download 3m candles"
    )


def test_funding_file_without_candles(tmp_path: Path) -> None:
    datadir = tmp_path / "binance"
    write(datadir / "futures" / "BTC_USDT_USDT-8h-funding_rate.feather", funding_rates())
    message = acquire_error(make_config(datadir, pairs=["BTC/USDT:USDT"]), tmp_path / "raw")
    assert message.startswith(
        f"{datadir / 'futures'}: BTC/USDT:USDT has funding rates (BTC_USDT_USDT-8h-funding_rate.feather) "
        "but no candle files"
    )


def test_missing_funding_file(tmp_path: Path) -> None:
    datadir = tmp_path / "binance"
    write(datadir / "futures" / "BTC_USDT_USDT-15m-futures.feather", candles())
    message = acquire_error(make_config(datadir, pairs=["BTC/USDT:USDT"]), tmp_path / "raw")
    assert "no funding-rate file for BTC/USDT:USDT" in message
    assert message.endswith("or set freqtrade.funding: false")


def test_two_formats_of_one_series(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    write(datadir / "futures" / "BTC_USDT_USDT-15m-futures.json", candles())
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message == (
        f"{datadir / 'futures'}: BTC_USDT_USDT-15m-futures.feather and BTC_USDT_USDT-15m-futures.json both "
        "hold BTC/USDT:USDT 15m candles; remove one of them (freqtrade reads one format per data folder)"
    )


def test_two_funding_timeframes(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    write(datadir / "futures" / "ETH_USDT_USDT-1h-funding_rate.feather", funding_rates())
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert (
        "ETH_USDT_USDT-1h-funding_rate.feather and ETH_USDT_USDT-8h-funding_rate.feather both hold" in message
    )


def test_duplicated_timestamp_names_the_file_and_the_first_duplicate(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    frame = candles()
    path = write(
        datadir / "futures" / "ETH_USDT_USDT-15m-futures.feather", pl.concat([frame[:10], frame[9:]])
    )
    # BTC is written before ETH is read: the error must remove it again.
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message == (
        f"{path}: duplicate timestamp 2024-01-01T02:15:00.000Z (rows 10 and 11); "
        "re-download it with `freqtrade download-data --erase`"
    )


def test_unordered_timestamps(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    frame = candles()
    path = write(datadir / "futures" / "BTC_USDT_USDT-15m-futures.feather", pl.concat([frame[5:], frame[:5]]))
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message.startswith(f"{path}: timestamps not increasing at row {BARS - 4}")


def test_feather_that_is_not_a_candle_table(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    path = write(datadir / "futures" / "BTC_USDT_USDT-15m-futures.feather", candles().drop("volume", "low"))
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message == (
        f"{path}: not a freqtrade candle table: missing column(s) low, volume (has date, open, high, close; "
        "expected date, open, high, low, close, volume); point freqtrade.datadir at freqtrade's "
        "user_data/data/<exchange>/ folder"
    )


def test_feather_with_wrong_types(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    path = write(
        datadir / "futures" / "BTC_USDT_USDT-15m-futures.feather",
        candles().with_columns(pl.col("date").dt.to_string(), pl.col("close").cast(pl.String)),
    )
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message.startswith(
        f"{path}: not a freqtrade candle table: column 'date' is String, not a datetime"
    )
    write(path, candles().with_columns(pl.col("close").cast(pl.String)))
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message.startswith(f"{path}: not a freqtrade candle table: column 'close' is String, not a number")


def test_unreadable_file(tmp_path: Path) -> None:
    datadir = futures_folder(tmp_path / "binance")
    path = datadir / "futures" / "BTC_USDT_USDT-15m-futures.feather"
    path.write_bytes(b"not arrow at all")
    message = acquire_error(make_config(datadir), tmp_path / "raw")
    assert message.startswith(f"{path}: not a readable freqtrade data file (")


def test_hdf5_gets_a_conversion_hint(tmp_path: Path) -> None:
    datadir = tmp_path / "binance"
    (datadir / "futures").mkdir(parents=True)
    (datadir / "futures" / "BTC_USDT_USDT-15m-futures.h5").write_bytes(b"\x89HDF")
    message = acquire_error(make_config(datadir, pairs=["BTC/USDT:USDT"], funding=False), tmp_path / "raw")
    assert "hdf5 files are not read; convert the folder with `freqtrade convert-data" in message


def test_spot_and_futures_of_one_symbol_are_never_one_series(tmp_path: Path) -> None:
    config = make_config(tmp_path, pairs=["BTC/USDT", "BTC/USDT:USDT"])
    with pytest.raises(ConfigError) as caught:
        raw_targets(config)
    assert str(caught.value) == (
        "config: freqtrade.pairs: BTC/USDT (spot) and BTC/USDT:USDT (futures settled in USDT) are different "
        "instruments but both would be symbol BTCUSDT; keep one of them"
    )
    config["freqtrade"]["pairs"] = ["BTC/USDT:USDT", "BTC/USDT:BUSD"]
    with pytest.raises(ConfigError, match=r"settled in USDT\) and BTC/USDT:BUSD \(futures settled in BUSD\)"):
        raw_targets(config)


def test_pair_of_the_other_trading_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        raw_targets(make_config(tmp_path, pairs=["BTC/USDT"]))
    assert str(caught.value) == (
        "config: freqtrade.pairs: BTC/USDT is a spot pair but trading_mode is futures; "
        "write it as BTC/USDT:USDT or set freqtrade.trading_mode: spot"
    )
    with pytest.raises(ConfigError, match="is a futures pair but trading_mode is spot"):
        raw_targets(make_config(tmp_path, trading_mode="spot", funding=False))
    with pytest.raises(ConfigError, match=r"freqtrade\.funding is true but trading_mode is spot"):
        raw_targets(make_config(tmp_path, trading_mode="spot", pairs=["BTC/USDT"]))


# -- the real data ------------------------------------------------------------------------------


@pytest.fixture
def real_datadir() -> Path:
    if not (REAL_DATADIR / "futures").is_dir():
        pytest.skip(f"real freqtrade data not found at {REAL_DATADIR} (the shared data folder)")
    return REAL_DATADIR


def test_real_futures_through_acquire_and_manifest(
    real_datadir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the configured datadir is relative to the workdir, as in a real run
    config = make_config("../shared/data/crypto/freqtrade/binance")
    config["manifest"].update(min_rows=1000, max_gaps=4)  # the 2024-10-28 outage: 4 flat bars
    raw = tmp_path / "data/raw/real/freqtrade"
    acquire(config, raw)
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()) == raw_targets(config)
    manifest = build_manifest(
        raw, [str(raw / p) for p in raw_targets(config)], config, tmp_path / "m.parquet"
    )

    klines = manifest.filter(pl.col("kind") == "klines").sort("symbol")
    assert klines["symbol"].to_list() == ["BTCUSDT", "ETHUSDT"]
    assert klines["rows"].to_list() == [70_176, 70_176]
    assert klines["gaps"].to_list() == [4, 4]  # the outage bars count as missing (listed in `missing`)
    assert klines["first_ts"].to_list() == [datetime(2023, 1, 1, tzinfo=UTC)] * 2
    assert klines["last_ts"].to_list() == [datetime(2024, 12, 31, 23, 45, tzinfo=UTC)] * 2
    funding = manifest.filter(pl.col("kind") == "funding")
    assert funding["rows"].to_list() == [2_193, 2_193]

    rates = archive.read_funding(raw / "futures/um/fundingRate/BTCUSDT/BTCUSDT-fundingRate.parquet")
    assert rates["calc_time"][1] == datetime(2023, 1, 1, 8, 0, 0, 8000, tzinfo=UTC)  # 08:00:00.008 kept
    bars = archive.read_klines(raw / "futures/um/klines/BTCUSDT/15m/BTCUSDT-15m.parquet")
    assert bars["open"][0] == 16537.5
    # The 2024-10-28 outage is carried through as it is (four zero-volume flat bars).
    outage = bars.filter(
        pl.col("open_time").is_between(
            datetime(2024, 10, 28, 20, tzinfo=UTC), datetime(2024, 10, 28, 20, 45, tzinfo=UTC)
        )
    )
    assert outage.height == 4 and outage["volume"].to_list() == [0.0] * 4

    provenance = json.loads((raw / "futures/um/SOURCE.json").read_text())
    shas = {f["file"]: f["sha256"] for f in provenance["files"]}
    assert shas["futures/BTC_USDT_USDT-15m-futures.feather"] == (
        "cdab29223ded4de1df639b8fb41b5e06a8abadcb373537851877f48636599765"
    )
    assert provenance["datadir"] == "../shared/data/crypto/freqtrade/binance"


def test_real_spot_is_another_instrument(
    real_datadir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    config = make_config(
        "../shared/data/crypto/freqtrade/binance", trading_mode="spot", pairs=["BTC/USDT"], funding=False
    )
    config["intervals"] = {"fine": "3m", "bar": "15m"}
    config["manifest"].update(required_kinds=["klines"], min_rows=1000, max_gaps=100)
    raw = tmp_path / "data/raw/real/freqtrade"
    acquire(config, raw)
    manifest = build_manifest(
        raw, [str(raw / p) for p in raw_targets(config)], config, tmp_path / "m.parquet"
    )
    fine = manifest.filter(pl.col("interval") == "3m").row(0, named=True)
    assert fine["first_ts"] == datetime(2022, 12, 1, tzinfo=UTC)
    assert fine["gaps"] == 50  # the 2023-03-24 trading halt: 24 outage + 26 missing 3m bars
    spot = archive.read_klines(raw / "spot/klines/BTCUSDT/15m/BTCUSDT-15m.parquet")
    assert spot["open_time"][0] == datetime(2023, 1, 1, tzinfo=UTC)
    assert spot["open"][0] == 16541.77  # futures opened at 16537.5: a different instrument
    # the halt's zero-volume flat 3m bars are still there
    halt = archive.read_klines(raw / "spot/klines/BTCUSDT/3m/BTCUSDT-3m.parquet").filter(
        pl.col("open_time").is_between(
            datetime(2023, 3, 24, 11, 30, tzinfo=UTC), datetime(2023, 3, 24, 12, 39, tzinfo=UTC)
        )
    )
    assert halt.height == 24 and (halt["volume"] == 0).all()


def test_a_newer_download_reruns_acquire_and_reaches_the_manifest(tmp_path: Path) -> None:
    """The freqtrade files are acquire's inputs: after `freqtrade download-data` appends bars, the
    same command reruns acquire and the manifest holds the new rows."""
    from tests.conftest import copy_workflow, run_snakemake, write_config

    workdir = copy_workflow(tmp_path / "wf")
    datadir = futures_folder(tmp_path / "ft")
    overrides = {
        "source": "freqtrade",
        "freqtrade": {"datadir": str(datadir), "pairs": ["BTC/USDT:USDT", "ETH/USDT:USDT"]},
        "intervals": {"fine": "15m", "bar": "15m"},
        "manifest": {"min_rows": 10, "max_gaps": 0},
        "policy": {"observation": {"text": False}, "ablations": []},
    }
    config = write_config(workdir, overrides)
    target = "results/tiny/manifest/base_manifest.parquet"
    run_snakemake(workdir, target, "--configfile", str(config))
    assert "Nothing to be done" in run_snakemake(workdir, target, "-n", "--configfile", str(config)).stdout

    time.sleep(0.05)  # a newer mtime than acquire's outputs, on any filesystem clock
    write(datadir / "futures" / "BTC_USDT_USDT-15m-futures.feather", candles(BARS + 96))
    dry = run_snakemake(workdir, target, "-n", "--configfile", str(config)).stdout
    assert re.search(
        r"rule acquire:.*?reason: Updated input files: [^\n]*BTC_USDT_USDT-15m-futures", dry, re.S
    ), dry
    run_snakemake(workdir, target, "--configfile", str(config))
    manifest = pl.read_parquet(workdir / target)
    rows = dict(zip(manifest["path"].to_list(), manifest["rows"].to_list(), strict=True))
    btc = next(v for k, v in rows.items() if "BTCUSDT-15m" in k)
    assert btc == BARS + 96

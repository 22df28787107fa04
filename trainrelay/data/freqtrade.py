"""The ``freqtrade`` source: candles and funding rates from a freqtrade data directory.

freqtrade (``freqtrade download-data``) keeps one file per pair, timeframe and candle type under
``user_data/data/<exchange>/``:

- spot candles: ``BTC_USDT-15m.feather``
- futures candles: ``futures/BTC_USDT_USDT-15m-futures.feather``
- funding rates: ``futures/BTC_USDT_USDT-8h-funding_rate.feather`` (the rate in ``open``; the
  timeframe is the exchange's funding interval at download time, 8h or, after freqtrade's 2024
  migration, 1h)

in one of the formats freqtrade writes: feather (its default), parquet, json or json.gz (a list of
``[ms, open, high, low, close, volume]`` rows). Columns are ``date, open, high, low, close, volume``.

:func:`acquire_freqtrade` copies the configured pairs into the raw root in Binance's folder names, one
unsplit parquet per series (no months: the series is whatever the files hold, so a longer folder
gives more data with no config edit):

- ``<market>/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>.parquet``: open_time (Datetime ms UTC),
  open, high, low, close, volume (Float64), nothing else
- ``<market>/fundingRate/<SYMBOL>/<SYMBOL>-fundingRate.parquet``: calc_time (Datetime ms UTC, with
  Binance's millisecond jitter kept), last_funding_rate (Float64)
- ``<market>/SOURCE.json``: provenance (exchange, datadir, each source file's name, size, sha256)

where market is ``futures/um`` or ``spot`` and SYMBOL the pair without '/' and ':SETTLE' (BTCUSDT).
Every source file is checked before anything is written: a missing pair or timeframe, two files for
one series, a file that is not a candle table, duplicated or unordered timestamps each end in one
line naming the file and what to do. Bars are carried through unchanged (outage bars included:
deciding what an outage is belongs to later stages).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

from trainrelay import atomic
from trainrelay.data.files_source import datetime_as_utc_ms
from trainrelay.errors import ConfigError, DataError
from trainrelay.core.fingerprint import file_sha256
from trainrelay.core.progress import progress_bar

log = logging.getLogger(__name__)

PROVENANCE_NAME = "SOURCE.json"
CANDLE_COLUMNS = ["date", "open", "high", "low", "close", "volume"]
VALUE_COLUMNS = CANDLE_COLUMNS[1:]
# Formats read. _FILE_RE also recognises hdf5 (.h5), which needs PyTables and is not read, so that a
# folder holding it gets a line saying how to convert it.
READ_EXTENSIONS = (".feather", ".parquet", ".json", ".json.gz")
_PAIR_RE = re.compile(r"^([A-Z0-9]+)/([A-Z0-9]+)(?::([A-Z0-9]+))?$")
# freqtrade's file name: <pair with '/', ':' as '_'>-<timeframe>[-<candle type>].<ext>; timeframes
# of a month are written "1Mo" (case-insensitive file systems).
_FILE_RE = re.compile(
    r"^(?P<stem>[A-Za-z0-9_]+)-(?P<tf>[0-9]+(?:m|h|d|w|Mo))(?:-(?P<candle>[A-Za-z_]+))?"
    r"(?P<ext>\.feather|\.parquet|\.json\.gz|\.json|\.h5)$"
)
_MARKETS = {"futures": "futures/um", "spot": "spot"}


@dataclass(frozen=True)
class Pair:
    """A freqtrade pair name and what it becomes here."""

    name: str  # BTC/USDT:USDT (futures) or BTC/USDT (spot)
    base: str
    quote: str
    settle: str | None

    @property
    def symbol(self) -> str:
        return f"{self.base}{self.quote}"

    @property
    def stem(self) -> str:
        """freqtrade's file-name form of the pair (misc.pair_to_filename): BTC_USDT_USDT."""
        return "_".join(p for p in (self.base, self.quote, self.settle) if p)

    def kind(self) -> str:
        return f"futures settled in {self.settle}" if self.settle else "spot"


@dataclass(frozen=True)
class SourceFile:
    """One file of the freqtrade folder that acquire reads, and the raw file it becomes."""

    path: Path  # as opened: datadir / name
    name: str  # relative to datadir, posix
    pair: Pair
    kind: str  # klines | funding
    timeframe: str
    target: str  # relative to the raw root


def _section(config: dict[str, Any]) -> dict[str, Any]:
    section = config.get("freqtrade")
    if not isinstance(section, dict):
        raise ConfigError("config: freqtrade section missing; copy it from config/config.yaml")
    return section


def parse_pairs(config: dict[str, Any]) -> list[Pair]:
    """The configured pairs, checked: well formed, of the trading mode, one instrument per symbol."""
    section = _section(config)
    pairs = []
    for name in section["pairs"]:
        match = _PAIR_RE.match(str(name))
        if not match:
            raise ConfigError(
                f"config: freqtrade.pairs: '{name}' is not a freqtrade pair name; "
                "write BASE/QUOTE for spot or BASE/QUOTE:SETTLE for futures (e.g. BTC/USDT:USDT)"
            )
        pairs.append(Pair(name, *match.groups()))
    by_symbol: dict[str, Pair] = {}
    for pair in pairs:
        other = by_symbol.setdefault(pair.symbol, pair)
        if other is pair:
            continue
        if other.name == pair.name:
            raise ConfigError(f"config: freqtrade.pairs lists {pair.name} twice; remove one")
        # Spot and futures (or two settle currencies) trade at different prices: one series of both
        # would be wrong in a way no later check could see.
        raise ConfigError(
            f"config: freqtrade.pairs: {other.name} ({other.kind()}) and {pair.name} ({pair.kind()}) are "
            f"different instruments but both would be symbol {pair.symbol}; keep one of them"
        )
    mode = section["trading_mode"]
    if mode not in _MARKETS:
        raise ConfigError(f"config: freqtrade.trading_mode: '{mode}' is not one of futures, spot")
    for pair in pairs:
        if mode == "futures" and pair.settle is None:
            raise ConfigError(
                f"config: freqtrade.pairs: {pair.name} is a spot pair but trading_mode is futures; "
                f"write it as {pair.name}:{pair.quote} or set freqtrade.trading_mode: spot"
            )
        if mode == "spot" and pair.settle is not None:
            raise ConfigError(
                f"config: freqtrade.pairs: {pair.name} is a futures pair but trading_mode is spot; "
                f"write it as {pair.base}/{pair.quote} or set freqtrade.trading_mode: futures"
            )
    return pairs


def market(config: dict[str, Any]) -> str:
    """The raw layout's market folder for the configured trading mode: futures/um or spot."""
    mode = _section(config)["trading_mode"]
    if mode not in _MARKETS:
        raise ConfigError(f"config: freqtrade.trading_mode: '{mode}' is not one of futures, spot")
    return _MARKETS[mode]


def has_funding(config: dict[str, Any]) -> bool:
    """Whether funding rates are configured (checked against the trading mode)."""
    section = _section(config)
    if section["funding"] and section["trading_mode"] != "futures":
        raise ConfigError(
            "config: freqtrade.funding is true but trading_mode is spot, which has no funding rates; "
            "set freqtrade.funding: false"
        )
    return bool(section["funding"])


def symbols(config: dict[str, Any]) -> list[str]:
    """The symbols the configured pairs become (BTC/USDT:USDT -> BTCUSDT), in config order."""
    return [pair.symbol for pair in parse_pairs(config)]


def intervals(config: dict[str, Any]) -> list[str]:
    """The intervals acquired: intervals.fine and intervals.bar, once each."""
    return list(dict.fromkeys([config["intervals"]["fine"], config["intervals"]["bar"]]))


def kline_relpath(market_name: str, symbol: str, interval: str) -> str:
    return f"{market_name}/klines/{symbol}/{interval}/{symbol}-{interval}.parquet"


def funding_relpath(market_name: str, symbol: str) -> str:
    return f"{market_name}/fundingRate/{symbol}/{symbol}-fundingRate.parquet"


def datadir(config: dict[str, Any]) -> Path:
    """The configured freqtrade data folder (relative paths start at the workdir)."""
    value = _section(config)["datadir"]
    if not value:
        raise ConfigError(
            "config: freqtrade.datadir is not set; set it to freqtrade's data folder "
            "user_data/data/<exchange>/ (relative to the workdir), "
            "e.g. ../shared/data/crypto/freqtrade/binance"
        )
    return Path(value)


def freqtrade_relpaths(config: dict[str, Any]) -> list[str]:
    """Every file :func:`acquire_freqtrade` writes under the raw root, from the config alone."""
    datadir(config)  # a missing datadir is a config error at DAG-build time, not in the job
    pairs = parse_pairs(config)
    root = market(config)
    funding = has_funding(config)
    paths = [f"{root}/{PROVENANCE_NAME}"]
    for pair in pairs:
        paths += [kline_relpath(root, pair.symbol, interval) for interval in intervals(config)]
        if funding:
            paths.append(funding_relpath(root, pair.symbol))
    return sorted(paths)


# -- finding the source files -------------------------------------------------------------------


def _listing(folder: Path) -> dict[str, list[tuple[str, str | None, str]]]:
    """freqtrade data files in ``folder`` by pair stem: (timeframe, candle type, file name)."""
    found: dict[str, list[tuple[str, str | None, str]]] = {}
    for entry in sorted(folder.iterdir()):
        match = _FILE_RE.match(entry.name)
        if match and entry.is_file():
            found.setdefault(match["stem"], []).append((match["tf"], match["candle"], entry.name))
    return found


def _pair_name(stem: str, futures: bool) -> str:
    """BTC_USDT_USDT -> BTC/USDT:USDT, for listing what a folder holds."""
    parts = stem.split("_")
    if futures and len(parts) == 3:
        return f"{parts[0]}/{parts[1]}:{parts[2]}"
    return "/".join(parts) if len(parts) == 2 else stem


def _one_file(folder: Path, names: list[str], what: str) -> str:
    """The single file among ``names``; two formats of one series are a user's leftover."""
    if len(names) > 1:
        raise DataError(
            f"{folder}: {names[0]} and {names[1]} both hold {what}; remove one of them "
            "(freqtrade reads one format per data folder)"
        )
    name = names[0]
    if name.endswith(".h5"):
        raise DataError(
            f"{folder / name}: hdf5 files are not read; convert the folder with "
            "`freqtrade convert-data --format-from hdf5 --format-to feather` (or download it as feather)"
        )
    return name


def _setting_of(interval: str, config: dict[str, Any]) -> str:
    names = [f"intervals.{key}" for key in ("fine", "bar") if config["intervals"][key] == interval]
    return " and ".join(names)


def source_files(config: dict[str, Any]) -> list[SourceFile]:
    """The freqtrade files the configured pairs, intervals and funding need, found by listing the
    folder (no file is read); raises DataError naming what is missing or ambiguous."""
    base = datadir(config)
    pairs = parse_pairs(config)
    root = market(config)
    funding = has_funding(config)
    futures = root != "spot"
    folder = base / "futures" if futures else base
    if not base.is_dir():
        raise DataError(
            f"{base}: folder not found (freqtrade.datadir); set it to freqtrade's user_data/data/<exchange>/ "
            "folder (relative paths start at the workdir)"
        )
    if not folder.is_dir():
        raise DataError(
            f"{base}: has no futures/ folder, so no futures data (freqtrade.trading_mode: futures); "
            "download it with `freqtrade download-data --trading-mode futures` or set trading_mode: spot"
        )
    listing = _listing(folder)
    candle_type = "futures" if futures else None
    ext_hint = "{" + ",".join(ext[1:] for ext in READ_EXTENSIONS) + "}"
    result = []
    for pair in pairs:
        entries = listing.get(pair.stem, [])
        candles: dict[str, list[str]] = {}
        rates: list[tuple[str, str]] = []
        for timeframe, candle, name in entries:
            if candle == candle_type:
                candles.setdefault(timeframe, []).append(name)
            elif candle == "funding_rate":
                rates.append((timeframe, name))
        pattern = f"{pair.stem}-<timeframe>{'-futures' if futures else ''}.{ext_hint}"
        if not candles:
            if rates:
                raise DataError(
                    f"{folder}: {pair.name} has funding rates ({rates[0][1]}) but no candle files "
                    f"({pattern}); download candles with `freqtrade download-data --trading-mode futures "
                    f"--pairs {pair.name}`"
                )
            present = sorted({_pair_name(stem, futures) for stem in listing})
            raise DataError(
                f"{folder}: no candle files for pair {pair.name} ({pattern}); it holds "
                f"{', '.join(present) or 'no freqtrade data files'}; fix freqtrade.pairs / "
                "freqtrade.trading_mode or download the pair with `freqtrade download-data`"
            )
        for interval in intervals(config):
            if interval not in candles:
                have = ", ".join(sorted(candles, key=_timeframe_minutes))
                raise DataError(
                    f"{folder}: no {interval} candles for {pair.name}; its timeframes there are {have}: "
                    f"set {_setting_of(interval, config)} to one of them, or download {interval} candles"
                )
            name = _one_file(folder, candles[interval], f"{pair.name} {interval} candles")
            result.append(
                SourceFile(
                    folder / name,
                    _relname(folder, base, name),
                    pair,
                    "klines",
                    interval,
                    kline_relpath(root, pair.symbol, interval),
                )
            )
        if funding:
            if not rates:
                raise DataError(
                    f"{folder}: no funding-rate file for {pair.name} ({pair.stem}-<n>h-funding_rate.<ext>); "
                    "download it (`freqtrade download-data --trading-mode futures` fetches it with the "
                    "candles) or set freqtrade.funding: false"
                )
            name = _one_file(folder, [n for _, n in rates], f"{pair.name} funding rates")
            timeframe = next(tf for tf, n in rates if n == name)
            result.append(
                SourceFile(
                    folder / name,
                    _relname(folder, base, name),
                    pair,
                    "funding",
                    timeframe,
                    funding_relpath(root, pair.symbol),
                )
            )
    return result


def _relname(folder: Path, base: Path, name: str) -> str:
    return PurePosixPath(*(folder / name).relative_to(base).parts).as_posix()


_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080, "Mo": 43200}


def _timeframe_minutes(timeframe: str) -> int:
    """Sort key for listing timeframes shortest first (15m before 1h)."""
    digits = timeframe.rstrip("mhdwMo")
    return int(digits) * _UNIT_MINUTES[timeframe[len(digits) :]]


# -- reading one file ---------------------------------------------------------------------------


def _load(path: Path) -> pl.DataFrame:
    """The file's table as stored (json rows become the six candle columns)."""
    name = path.name
    if name.endswith((".json", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            rows = json.load(handle)
        if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != 6 for r in rows):
            raise ValueError("expected a list of [ms, open, high, low, close, volume] rows")
        schema = {"date": pl.Int64, **{c: pl.Float64 for c in VALUE_COLUMNS}}
        return pl.DataFrame(rows, schema=schema, orient="row", strict=False)
    if name.endswith(".parquet"):
        return pl.read_parquet(path)
    return pl.read_ipc(path)


def read_candles(path: str | Path) -> pl.DataFrame:
    """One freqtrade candle (or funding) file as date (Datetime ms UTC) + Float64 OHLCV, checked.

    Raises DataError naming the file when it cannot be read, is not a candle table (missing columns,
    wrong types), is empty, has a missing value, or has duplicated or unordered timestamps.
    """
    path = Path(path)
    try:
        frame = _load(path)
    except (OSError, ValueError, EOFError, pl.exceptions.PolarsError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: not a readable freqtrade data file ({message[:200]}); re-download it with "
            "`freqtrade download-data`"
        ) from None
    expected = ", ".join(CANDLE_COLUMNS)
    missing = [c for c in CANDLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: not a freqtrade candle table: missing column(s) {', '.join(missing)} "
            f"(has {', '.join(frame.columns) or 'no columns'}; expected {expected}); "
            "point freqtrade.datadir at freqtrade's user_data/data/<exchange>/ folder"
        )
    date = frame.schema["date"]
    if isinstance(date, pl.Datetime):
        stamp = datetime_as_utc_ms("date", date)
    elif date.is_integer():
        stamp = pl.col("date").cast(pl.Datetime("ms", "UTC"))  # freqtrade's json: epoch ms
    else:
        raise DataError(
            f"{path}: not a freqtrade candle table: column 'date' is {date}, not a datetime; "
            "re-download it with `freqtrade download-data`"
        )
    wrong = [f"'{c}' is {frame.schema[c]}" for c in VALUE_COLUMNS if not frame.schema[c].is_numeric()]
    if wrong:
        raise DataError(
            f"{path}: not a freqtrade candle table: column {wrong[0]}, not a number; "
            "re-download it with `freqtrade download-data`"
        )
    frame = frame.select(stamp.alias("date"), *[pl.col(c).cast(pl.Float64) for c in VALUE_COLUMNS])
    if frame.height == 0:
        raise DataError(f"{path}: no rows; re-download it with `freqtrade download-data`")
    for column in frame.columns:
        values = frame.get_column(column)
        bad = values.is_null() | values.is_nan() if values.dtype.is_float() else values.is_null()
        if bad.any():
            row = int(bad.arg_true()[0]) + 1
            raise DataError(
                f"{path}: missing or NaN value in column '{column}' at row {row}; "
                "re-download it with `freqtrade download-data`"
            )
    steps = frame.get_column("date").diff().dt.total_milliseconds()
    if (steps == 0).any():
        row = int((steps == 0).arg_true()[0])
        raise DataError(
            f"{path}: duplicate timestamp {_fmt(frame['date'][row])} (rows {row} and {row + 1}); "
            "re-download it with `freqtrade download-data --erase`"
        )
    if (steps < 0).any():
        row = int((steps < 0).arg_true()[0])
        raise DataError(
            f"{path}: timestamps not increasing at row {row + 1} ({_fmt(frame['date'][row])} after "
            f"{_fmt(frame['date'][row - 1])}); re-download it with `freqtrade download-data --erase`"
        )
    return frame


def _fmt(ts: Any) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _raw_frame(source: SourceFile, frame: pl.DataFrame) -> pl.DataFrame:
    """The raw file's columns: Binance's names, and only what freqtrade holds."""
    if source.kind == "funding":
        return frame.select(pl.col("date").alias("calc_time"), pl.col("open").alias("last_funding_rate"))
    return frame.rename({"date": "open_time"})


# -- acquire ------------------------------------------------------------------------------------


def acquire_freqtrade(config: dict[str, Any], raw_root: str | Path) -> None:
    """Write the configured pairs of the freqtrade folder under ``raw_root`` (see
    :func:`freqtrade_relpaths`); SOURCE.json, written last, marks a complete copy."""
    raw_root = Path(raw_root)
    section = _section(config)
    folder = datadir(config)
    if folder.name and folder.name != section["exchange"]:
        # freqtrade names the folder after the exchange; another name may be another exchange's data.
        log.warning(
            "freqtrade: datadir %s is not named after freqtrade.exchange '%s'; is it that exchange's data?",
            folder,
            section["exchange"],
        )
    sources = source_files(config)  # every file found before any is read
    written: list[Path] = []
    records = []
    try:
        # One file in memory at a time; a bad one later removes what was written before it.
        with progress_bar(len(sources), "acquire", "file") as bar:
            for source in sources:
                frame = read_candles(source.path)
                target = raw_root / source.target
                atomic.write_parquet(target, _raw_frame(source, frame))
                written.append(target)
                stamps = frame.get_column("date")
                records.append(
                    {
                        "file": source.name,
                        "pair": source.pair.name,
                        "kind": source.kind,
                        "timeframe": source.timeframe,
                        "bytes": source.path.stat().st_size,
                        "sha256": file_sha256(source.path),
                        "rows": frame.height,
                        "first": _fmt(stamps[0]),
                        "last": _fmt(stamps[-1]),
                        "written": source.target,
                    }
                )
                log.info(
                    "freqtrade: %s -> %s (%d rows, %s .. %s)",
                    source.name,
                    source.target,
                    frame.height,
                    _fmt(stamps[0]),
                    _fmt(stamps[-1]),
                )
                bar.update()
        provenance = {
            "source": "freqtrade",
            "exchange": section["exchange"],
            "datadir": section["datadir"],
            "trading_mode": section["trading_mode"],
            "files": records,
        }
        atomic.write_json(raw_root / market(config) / PROVENANCE_NAME, provenance)
    except BaseException:
        # A half-copied folder must not look finished to a later run outside Snakemake.
        for path in written:
            path.unlink(missing_ok=True)
        raise

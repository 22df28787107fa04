"""The ``manifest`` stage: one checked row per raw file.

Every raw file is read once and checked before any feature is built from it: checksum, that it
parses, that it has rows and no NaN, that its timestamps are strictly increasing and unique
(also across month boundaries), the missing-bar count, and then for the whole data set that the
required symbols and kinds are present with enough rows. A failing check raises
:class:`~trainrelay.errors.DataError` with one line: the file, what is wrong, the check's name
and what to do.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

from trainrelay import atomic
from trainrelay.data import archive, features, freqtrade
from trainrelay.data.events import read_events
from trainrelay.data.files_source import datetime_as_utc_ms
from trainrelay.errors import ConfigError, DataError
from trainrelay.core.fingerprint import file_sha256
from trainrelay.core.progress import progress_bar

log = logging.getLogger(__name__)

KINDS = ("klines", "funding", "events", "series")
# Kinds that exist once per symbol (events is one market-wide file).
SYMBOL_KINDS = ("klines", "funding", "series")
# Kinds made of bars at a fixed interval: min_rows and the gap count apply to them. Funding
# (three rates a day) would never reach a min_rows meant for bars.
BAR_KINDS = ("klines", "series")

MANIFEST_SCHEMA = {
    "path": pl.String,
    "kind": pl.String,
    "symbol": pl.String,
    "interval": pl.String,
    "month": pl.String,
    "rows": pl.Int64,
    "first_ts": pl.Datetime("ms", "UTC"),
    "last_ts": pl.Datetime("ms", "UTC"),
    "gaps": pl.Int64,  # bars missing or written during an outage (the sum over ``missing``)
    "missing": pl.List(
        pl.Struct(
            {
                "first": pl.Datetime("ms", "UTC"),
                "last": pl.Datetime("ms", "UTC"),
                "bars": pl.Int64,
                "cause": pl.String,
            }
        )
    ),
    "bytes": pl.Int64,
    "sha256": pl.String,
}

# Monthly zips (binance, synthetic) carry their month; the freqtrade source's one parquet per series
# has none (month None).
_KLINE_RE = re.compile(r"/klines/([A-Z0-9_]+)/([0-9]+[mhd])/\1-\2(?:-([0-9]{4}-[0-9]{2})\.zip|\.parquet)$")
_FUNDING_RE = re.compile(r"/fundingRate/([A-Z0-9_]+)/\1-fundingRate(?:-([0-9]{4}-[0-9]{2})\.zip|\.parquet)$")
_SERIES_RE = re.compile(r"(?:^|/)series/([A-Za-z0-9_]+)\.parquet$")
_EVENTS_RE = re.compile(r"(?:^|/)events/events\.csv$")

_FIX = {
    "checksum": "delete the file and re-run acquire",
    "empty": "delete the file and re-run acquire",
    "nan": "fix or re-download the file",
    "monotonic": "fix or re-download the file",
    "unique": "fix or re-download the file",
    "interval": "set the interval in the config to the data's interval or fix the file",
    "gaps": "re-download the file or raise manifest.max_gaps",
    "columns": "fix the file (see docs/artifacts.md for the raw layout)",
}


@dataclass(frozen=True)
class RawFile:
    """A raw file and what its path says about it."""

    path: Path  # as opened
    rel: str  # relative to the workdir, as written to the manifest
    kind: str
    symbol: str | None
    interval: str | None
    month: str | None


def _fail(path: str | Path, problem: str, check: str) -> DataError:
    return DataError(f"{path}: {problem} (manifest check '{check}'); {_FIX[check]}")


def manifest_path(path: str | Path, raw_root: str | Path) -> str:
    """The path written to the manifest: from ``raw_root`` on when the path contains it, else
    relative to the workdir. A storage plugin (Colab's Drive, S3) hands the job a local copy under
    ``.snakemake/storage/...``; recording the logical ``data/raw/...`` keeps the manifest the same
    wherever the files were staged."""
    text = Path(path).as_posix()
    root = Path(raw_root).as_posix().rstrip("/") + "/"
    at = text.find(root)
    if at == 0 or (at > 0 and text[at - 1] == "/"):
        return text[at:]
    return PurePosixPath(Path(os.path.relpath(Path(path).resolve(), Path.cwd().resolve()))).as_posix()


def classify(path: str | Path, config: dict[str, Any], raw_root: str | Path) -> RawFile:
    """Tell a raw file's kind, symbol, interval and month from its place in the raw layout."""
    path = Path(path)
    text = path.as_posix()
    rel = manifest_path(path, raw_root)
    if match := _KLINE_RE.search(text):
        symbol, interval, month = match.groups()
        return RawFile(path, rel, "klines", symbol, interval, month)
    if match := _FUNDING_RE.search(text):
        symbol, month = match.groups()
        return RawFile(path, rel, "funding", symbol, None, month)
    if match := _SERIES_RE.search(text):
        return RawFile(path, rel, "series", match.group(1), config["files"]["interval"], None)
    if _EVENTS_RE.search(text):
        return RawFile(path, rel, "events", None, None, None)
    raise DataError(
        f"{path}: not a known raw file (klines, fundingRate, series/<symbol>.parquet or events/events.csv); "
        "remove it from the raw folder or re-run acquire"
    )


def configured_symbols(config: dict[str, Any]) -> list[str]:
    """The symbols the configured source provides."""
    source = config["source"]
    if source == "files":
        return [config["files"]["symbol"]]
    if source == "freqtrade":
        return freqtrade.symbols(config)
    return list(config[source]["symbols"])


def _first_bad_row(mask: pl.Series) -> int | None:
    """1-based row number of the first True in ``mask`` (None when there is none)."""
    hits = mask.fill_null(False).arg_true()
    return int(hits[0]) + 1 if len(hits) else None


def _fmt(ts: Any) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ") if ts is not None else "none"


def _check_numeric(raw: RawFile, frame: pl.DataFrame, columns: list[str]) -> None:
    for column in columns:
        values = frame.get_column(column)
        bad = values.is_null() | values.is_nan() if values.dtype.is_float() else values.is_null()
        if (row := _first_bad_row(bad)) is not None:
            raise _fail(raw.path, f"missing or NaN value in column '{column}' at row {row}", "nan")


def _check_order(raw: RawFile, ts: pl.Series, previous_last: Any) -> None:
    """Strictly increasing and unique, within the file and after the previous month's file."""
    if previous_last is not None and ts[0] <= previous_last:
        check = "unique" if ts[0] == previous_last else "monotonic"
        raise _fail(
            raw.path,
            f"first timestamp {_fmt(ts[0])} is not after the last one of the previous file "
            f"({_fmt(previous_last)})",
            check,
        )
    diff = ts.diff().dt.total_milliseconds()
    if (row := _first_bad_row(diff == 0)) is not None:
        raise _fail(raw.path, f"duplicate timestamp {_fmt(ts[row - 1])} at row {row}", "unique")
    if (row := _first_bad_row(diff < 0)) is not None:
        raise _fail(raw.path, f"timestamps not strictly increasing at row {row}", "monotonic")


def _stretches(ts: pl.Series, flags: pl.Series) -> list[tuple[Any, Any, int]]:
    """(first, last, count) of each run of consecutive True ``flags`` along ``ts``."""
    runs = (
        pl.DataFrame({"ts": ts, "flag": flags})
        .with_columns((pl.col("flag") != pl.col("flag").shift(1)).fill_null(True).cum_sum().alias("run"))
        .filter(pl.col("flag"))
        .group_by("run", maintain_order=True)
        .agg(pl.col("ts").first().alias("first"), pl.col("ts").last().alias("last"), pl.len().alias("n"))
    )
    return [(row["first"], row["last"], int(row["n"])) for row in runs.iter_rows(named=True)]


def missing_bars(
    raw: RawFile, frame: pl.DataFrame, ts: pl.Series, previous_last: Any, max_gaps: int
) -> list[dict[str, Any]]:
    """Every stretch of missing bars of a bar file, including the step from the previous file.

    Two causes: ``missing`` (no bar at that time) and ``outage`` (a kline with zero volume and
    open = high = low = close, what the exchange writes while nothing can trade; the segments
    stage drops those like missing bars). Both count against ``manifest.max_gaps``.
    """
    step = archive.INTERVAL_MS[raw.interval]
    stamps = ts if previous_last is None else pl.concat([pl.Series([previous_last], dtype=ts.dtype), ts])
    diff = stamps.diff().dt.total_milliseconds().drop_nulls()
    if (hit := _first_bad_row(diff < step)) is not None:
        # diff[i] is the step into the file's row i+1 (after the previous file) or i+2 (within it).
        row = hit if previous_last is not None else hit + 1
        seconds = int(diff[hit - 1]) // 1000
        problem = f"bars {seconds} s apart at row {row}, closer than the interval {raw.interval}"
        raise _fail(raw.path, problem, "interval")
    stretches = []
    for at in (diff > step).arg_true().to_list():
        count = int(diff[at]) // step - 1
        first = stamps[at] + timedelta(milliseconds=step)
        stretches.append({"first": first, "last": first + timedelta(milliseconds=step * (count - 1)),
                          "bars": count, "cause": "missing"})  # fmt: skip
    if raw.kind == "klines":
        outage = features.is_outage(frame)
        for first, last, count in _stretches(ts, outage):
            stretches.append({"first": first, "last": last, "bars": count, "cause": "outage"})
    stretches.sort(key=lambda g: g["first"])
    total = sum(g["bars"] for g in stretches)
    if total > max_gaps:
        first = stretches[0]
        cause, at = first["cause"], _fmt(first["first"])
        problem = f"{total} missing or outage {raw.interval} bar(s) (first {cause} at {at})"
        raise _fail(raw.path, f"{problem}, more than manifest.max_gaps={max_gaps}", "gaps")
    return stretches


def _read_frame(raw: RawFile) -> tuple[pl.DataFrame, str, list[str]]:
    """The file's rows, its timestamp column and its numeric value columns."""
    if raw.kind in ("klines", "funding") and raw.path.suffix == ".parquet":
        required = archive.PARQUET_KLINE_COLUMNS if raw.kind == "klines" else archive.PARQUET_FUNDING_COLUMNS
        if problem := archive.parquet_problem(raw.path, required):
            raise _fail(raw.path, problem, "columns")
    if raw.kind == "klines":
        frame = archive.read_klines(raw.path)
        numeric = [c for c in frame.columns if c not in ("open_time", "close_time")]
        return frame, "open_time", numeric
    if raw.kind == "funding":
        return archive.read_funding(raw.path), "calc_time", ["last_funding_rate"]
    if raw.kind == "series":
        return read_series(raw.path)
    frame = read_events(raw.path)
    _check_events_filled(raw.path, frame)
    return frame, "timestamp", []


def read_series(path: str | Path) -> tuple[pl.DataFrame, str, list[str]]:
    """A ``series/<symbol>.parquet`` file: ``timestamp`` as Datetime(ms, UTC), values as Float64."""
    path = Path(path)
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = f"not a readable parquet file ({message})"
        raise DataError(f"{path}: {problem}; delete it and re-run acquire") from None
    if "timestamp" not in frame.columns:
        raise _fail(path, "missing column 'timestamp'", "columns")
    values = [c for c in frame.columns if c != "timestamp"]
    not_numeric = [c for c in values if not frame.schema[c].is_numeric()]
    if not_numeric or not values:
        problem = f"non-numeric column(s) {', '.join(not_numeric)}" if not_numeric else "no value columns"
        raise _fail(path, problem, "columns")
    stamp = frame.schema["timestamp"]
    if stamp.is_integer():
        ts = pl.col("timestamp").cast(pl.Datetime("ms", "UTC"))
    elif isinstance(stamp, pl.Datetime):
        ts = datetime_as_utc_ms("timestamp", stamp)
    else:
        raise _fail(path, f"column 'timestamp' is {stamp}, not a datetime or epoch milliseconds", "columns")
    frame = frame.with_columns(ts.alias("timestamp"), *[pl.col(c).cast(pl.Float64) for c in values])
    return frame, "timestamp", values


def _check_events_filled(path: Path, frame: pl.DataFrame) -> None:
    for column in frame.columns:
        if (row := _first_bad_row(frame.get_column(column).is_null())) is not None:
            raise _fail(path, f"empty value in column '{column}' at row {row}", "nan")


def inspect_file(raw: RawFile, previous_last: Any, max_gaps: int) -> dict[str, Any]:
    """Check one raw file and return its manifest row."""
    sha256 = archive.verify_checksum(raw.path) if raw.path.suffix == ".zip" else file_sha256(raw.path)
    frame, ts_column, numeric = _read_frame(raw)
    if frame.height == 0 and raw.kind != "events":  # an events file with only its header means "no events"
        raise _fail(raw.path, "no data rows", "empty")
    _check_numeric(raw, frame, [ts_column, *numeric])
    ts = frame.get_column(ts_column)
    gaps, missing = None, None
    if raw.kind != "events":
        _check_order(raw, ts, previous_last)
        if raw.kind in BAR_KINDS:
            missing = missing_bars(raw, frame, ts, previous_last, max_gaps)
            gaps = sum(g["bars"] for g in missing)
    return {
        "path": raw.rel,
        "kind": raw.kind,
        "symbol": raw.symbol,
        "interval": raw.interval,
        "month": raw.month,
        "rows": frame.height,
        "first_ts": ts.min() if frame.height else None,
        "last_ts": ts.max() if frame.height else None,
        "gaps": gaps,
        "missing": missing,
        "bytes": raw.path.stat().st_size,
        "sha256": sha256,
    }


def _required(config: dict[str, Any]) -> tuple[list[str], list[str], str]:
    settings = config["manifest"]
    symbols = settings["required_symbols"]
    symbols = configured_symbols(config) if symbols is None else list(symbols)
    kinds = list(settings["required_kinds"])
    source = config["source"]
    offered = {"files": {"series", "events"}}.get(source, {"klines", "funding", "events"})
    if source == "freqtrade" and not freqtrade.has_funding(config):
        offered = {"klines", "events"}
    wrong = [k for k in kinds if k not in offered]
    if wrong:
        qualifier = " with these freqtrade.trading_mode/funding settings" if source == "freqtrade" else ""
        raise ConfigError(
            f"config: manifest.required_kinds has {', '.join(wrong)}, which source '{source}' does not "
            f"provide{qualifier}; use a subset of {sorted(offered)}"
        )
    interval = config["files"]["interval"] if source == "files" else config["intervals"]["fine"]
    return symbols, kinds, interval


def _check_presence(rows: pl.DataFrame, raw_root: str | Path, config: dict[str, Any]) -> None:
    symbols, kinds, interval = _required(config)
    min_rows = config["manifest"]["min_rows"]
    for kind in kinds:
        if kind == "events":
            if rows.filter(pl.col("kind") == "events").height == 0:
                raise DataError(
                    f"{raw_root}/events/events.csv: missing (manifest check 'kinds'); re-run acquire "
                    "or remove 'events' from manifest.required_kinds"
                )
            continue
        for symbol in symbols:
            have = rows.filter((pl.col("kind") == kind) & (pl.col("symbol") == symbol))
            if kind in BAR_KINDS:
                have = have.filter(pl.col("interval") == interval)
            if have.height == 0:
                what = f"{kind} {interval}" if kind in BAR_KINDS else kind
                raise DataError(
                    f"{raw_root}: no {what} files for symbol {symbol} (manifest check 'symbols'); "
                    f"re-run acquire for it or drop it from manifest.required_symbols / the source's symbols"
                )
    # Minimum rows per series of bars (symbol + kind + interval), summed over its months.
    totals = (
        rows.filter(pl.col("kind").is_in(list(BAR_KINDS)))
        .group_by("kind", "symbol", "interval")
        .agg(pl.col("rows").sum(), pl.col("path").first())
        .sort("kind", "symbol", "interval")
    )
    for row in totals.iter_rows(named=True):
        if row["rows"] < min_rows:
            folder = str(PurePosixPath(row["path"]).parent)
            raise DataError(
                f"{folder}: {row['symbol']} {row['kind']} {row['interval']} has {row['rows']} rows, "
                f"fewer than manifest.min_rows={min_rows} (manifest check 'min_rows'); "
                "acquire more months or lower min_rows"
            )


def build_manifest(
    raw_root: str | Path,
    raw_files: list[str],
    config: dict[str, Any],
    output: str | Path,
    *,
    progress: bool = True,
) -> pl.DataFrame:
    """Check every raw file and write ``base_manifest.parquet`` (one row per file, sorted by path);
    ``progress``: a bar per file on stderr."""
    max_gaps = config["manifest"]["max_gaps"]
    # Checksums are checked with their zips; SOURCE.json is the freqtrade source's provenance note.
    skipped = (".CHECKSUM", f"/{freqtrade.PROVENANCE_NAME}")
    files = [classify(p, config, raw_root) for p in raw_files if not Path(p).as_posix().endswith(skipped)]
    # Months in order within each series so that order and gaps are checked across month boundaries.
    files.sort(key=lambda f: (f.kind, f.symbol or "", f.interval or "", f.month or "", f.rel))
    records: list[dict[str, Any]] = []
    last_seen: dict[tuple[str, str | None, str | None], Any] = {}
    with progress_bar(len(files), "manifest", "file", enabled=progress) as bar:
        for raw in files:
            key = (raw.kind, raw.symbol, raw.interval)
            record = inspect_file(raw, last_seen.get(key), max_gaps)
            if record["last_ts"] is not None:
                last_seen[key] = record["last_ts"]
            records.append(record)
            gaps = "" if record["gaps"] is None else f", {record['gaps']} missing or outage bar(s)"
            log.info("%s: %d rows%s", raw.rel, record["rows"], gaps)
            bar.update()
    frame = pl.DataFrame(records, schema=MANIFEST_SCHEMA).sort("path")
    _check_presence(frame, raw_root, config)
    atomic.write_parquet(output, frame)
    log.info("manifest: %d files checked -> %s", frame.height, output)
    return frame

"""The ``files`` source: any user CSV/parquet time series, normalised to ``series/<symbol>.parquet``.

The output has a ``timestamp`` column (Datetime(ms, UTC)) followed by Float64 value columns, sorted
by time, so that a public benchmark series such as ETTh1 runs through the same stages as market bars.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from trainrelay.atomic import write_parquet
from trainrelay.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TIMESTAMP = "timestamp"
# Integer epochs: below 1e11 are seconds (until year 5138), below 1e14 milliseconds, else microseconds.
_SECONDS_BELOW = 100_000_000_000
_MILLIS_BELOW = 100_000_000_000_000


def read_table(path: str | Path, setting: str) -> pl.DataFrame:
    """Read a CSV or parquet file; ``setting`` names the config key for the error message."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{setting}: file '{path}' not found; fix the path (relative paths start at the workdir)"
        )
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pl.read_parquet(path)
        if suffix in {".csv", ".txt", ".tsv"}:
            separator = "\t" if suffix == ".tsv" else ","
            return pl.read_csv(path, separator=separator, infer_schema_length=10_000)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{setting}: cannot read '{path}' ({message})") from None
    raise DataError(f"{setting}: '{path}' is neither CSV (.csv/.tsv/.txt) nor parquet (.parquet/.pq)")


def parse_timestamps(series: pl.Series, where: str) -> pl.Series:
    """Any timestamp column (datetime, date, epoch s/ms/µs integers, ISO-like strings) -> Datetime(ms, UTC).

    Naive datetimes are taken as UTC; strings with an offset are converted to UTC. ``where`` names
    the file and column in the error message.
    """
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        parsed = series.dt.replace_time_zone("UTC") if dtype.time_zone is None else series
        parsed = parsed.dt.convert_time_zone("UTC")
    elif dtype == pl.Date:
        parsed = series.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
    elif dtype.is_integer():
        value = series.cast(pl.Int64)
        frame = pl.DataFrame({"v": value})
        millis = frame.select(
            pl.when(pl.col("v").abs() < _SECONDS_BELOW)
            .then(pl.col("v") * 1000)
            .when(pl.col("v").abs() < _MILLIS_BELOW)
            .then(pl.col("v"))
            .otherwise(pl.col("v") // 1000)
        ).to_series()
        parsed = millis.cast(pl.Datetime("ms", "UTC"))
    elif dtype == pl.String:
        parsed = _parse_strings(series, where)
    else:
        raise DataError(
            f"{where}: timestamps of type {dtype} are not supported; use ISO strings or epoch integers"
        )
    parsed = parsed.cast(pl.Datetime("ms", "UTC")).alias(series.name)
    bad = parsed.is_null() & series.is_not_null()
    if bad.any():
        first = series.filter(bad)[0]
        raise DataError(
            f"{where}: cannot parse timestamp '{first}' (row {bad.arg_true()[0] + 1}); use ISO 8601"
        )
    if series.is_null().any():
        raise DataError(f"{where}: empty timestamp in row {series.is_null().arg_true()[0] + 1}")
    return parsed


def _parse_strings(series: pl.Series, where: str) -> pl.Series:
    stripped = series.str.strip_chars()
    # Offsets such as +02:00 or Z need a tz-aware parse; naive strings are UTC.
    has_offset = stripped.str.contains(r"(Z|[+-]\d{2}:?\d{2})$").fill_null(False)
    try:
        if has_offset.all():
            return stripped.str.to_datetime(time_unit="ms", time_zone="UTC", strict=False)
        if not has_offset.any():
            return stripped.str.to_datetime(time_unit="ms", strict=False).dt.replace_time_zone("UTC")
    except (pl.exceptions.PolarsError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0]
        raise DataError(f"{where}: cannot parse timestamps ({message}); use ISO 8601") from None
    raise DataError(f"{where}: timestamps mix values with and without a UTC offset; use one form")


def normalise_series(
    path: str | Path, timestamp_column: str, columns: list[str] | None, where: str = "files.path"
) -> pl.DataFrame:
    """Read a user time series and return ``timestamp`` + Float64 value columns, sorted by time."""
    frame = read_table(path, where)
    source = f"{where} '{path}'"
    if timestamp_column not in frame.columns:
        raise DataError(
            f"{source}: timestamp column '{timestamp_column}' not found "
            f"(columns: {', '.join(frame.columns)}); "
            "set files.timestamp_column"
        )
    if columns is None:
        chosen = [c for c in frame.columns if c != timestamp_column and frame.schema[c].is_numeric()]
        if not chosen:
            raise DataError(
                f"{source}: no numeric column besides '{timestamp_column}'; list them in files.columns"
            )
    else:
        chosen = list(columns)
        missing = [c for c in chosen if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: column(s) {', '.join(missing)} not found; fix files.columns")
        non_numeric = [c for c in chosen if not frame.schema[c].is_numeric()]
        if non_numeric:
            kinds = ", ".join(f"{c} ({frame.schema[c]})" for c in non_numeric)
            raise DataError(f"{source}: column(s) {kinds} are not numeric; drop them from files.columns")
    if TIMESTAMP in chosen:
        raise DataError(
            f"{source}: a value column is named '{TIMESTAMP}'; rename it or leave it out of files.columns"
        )
    stamps = parse_timestamps(frame[timestamp_column], f"{source} column '{timestamp_column}'")
    out = frame.select([pl.col(c).cast(pl.Float64) for c in chosen]).with_columns(stamps.alias(TIMESTAMP))
    out = out.select([TIMESTAMP, *chosen]).sort(TIMESTAMP, maintain_order=True)
    duplicated = out[TIMESTAMP].is_duplicated()
    if duplicated.any():
        raise DataError(f"{source}: timestamp {out[TIMESTAMP].filter(duplicated)[0]} occurs more than once")
    return out


def series_relpath(symbol: str) -> str:
    return f"series/{symbol}.parquet"


def acquire_files(files_config: dict, raw_root: str | Path) -> None:
    """Normalise ``files.path`` into ``<raw_root>/series/<symbol>.parquet``."""
    if not files_config.get("path"):
        raise ConfigError("files.path is not set; name the CSV or parquet file to use with source: files")
    frame = normalise_series(files_config["path"], files_config["timestamp_column"], files_config["columns"])
    target = Path(raw_root) / series_relpath(files_config["symbol"])
    write_parquet(target, frame)
    log.info("files: %d rows x %d columns -> %s", frame.height, frame.width - 1, target)

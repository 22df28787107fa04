"""The ``files`` source: any user CSV/parquet time series, normalised to ``series/<symbol>.parquet``.

The output has a ``timestamp`` column (Datetime(ms, UTC)) followed by Float64 value columns, sorted
by time, so that a public benchmark series such as ETTh1 runs through the same stages as market bars.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import polars as pl

from trainrelay.atomic import write_parquet
from trainrelay.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TIMESTAMP = "timestamp"
# Integer epochs: below 1e11 are seconds (until year 5138), below 1e14 milliseconds, else microseconds.
_SECONDS_BELOW = 100_000_000_000
_MILLIS_BELOW = 100_000_000_000_000
_CSV_SUFFIXES = (".csv", ".txt", ".tsv")


def is_csv(path: str | Path) -> bool:
    return Path(path).suffix.lower() in _CSV_SUFFIXES


def describe_row(path: str | Path | None, index: int, header: bool = True) -> str:
    """Where row ``index`` (0-based, in file order) is, for a person opening the file.

    In a CSV that is the 1-based data row and the line (the header is line 1; polars reads a blank
    line as a row of empty cells, so they stay in step unless a quoted cell spans lines).
    """
    if path is not None and is_csv(path):
        return f"data row {index + 1} (line {index + 1 + int(header)})"
    return f"row {index + 1}"


def read_table(path: str | Path, setting: str) -> pl.DataFrame:
    """Read a CSV or parquet file; ``setting`` names the config key for the error message."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{setting}: file '{path}' not found; fix the path (relative paths start at the workdir)"
        )
    suffix = path.suffix.lower()
    separator = "\t" if suffix == ".tsv" else ","
    try:
        if suffix in {".parquet", ".pq"}:
            frame = pl.read_parquet(path)
        elif suffix in _CSV_SUFFIXES:
            # The whole file decides each column's type (not its first rows), so one bad cell
            # anywhere turns its column into text, which normalise_series then reports by row;
            # with a sample, a bad cell after it fails the read naming no row at all.
            frame = pl.read_csv(path, separator=separator, infer_schema_length=None)
        else:
            raise DataError(f"{setting}: '{path}' is neither CSV (.csv/.tsv/.txt) nor parquet (.parquet/.pq)")
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if suffix in _CSV_SUFFIXES:
            # polars names no line for a ragged row or a bad byte; find it.
            message = csv_problem(path.read_bytes(), separator) or message
        raise DataError(f"{setting}: cannot read '{path}' ({message})") from None
    # polars renames a repeated header name to "<name>_duplicated_<n>": a column would be lost.
    renamed = [c for c in frame.columns if re.search(r"_duplicated_\d+$", c)]
    if renamed:
        name = re.sub(r"_duplicated_\d+$", "", renamed[0])
        raise DataError(f"{setting} '{path}': column '{name}' appears twice in the header; rename one")
    return frame


def csv_problem(data: bytes, separator: str = ",", fields: int | None = None) -> str | None:
    """The first line of CSV ``data`` that cannot be read, described; None when none is found.

    ``fields``: how many fields a line has; None takes the count from the header line.
    """
    raw_lines = data.splitlines()
    for number, raw in enumerate(raw_lines, start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
    rows = csv.reader(io.StringIO(b"\n".join(raw_lines).decode("utf-8")), delimiter=separator)
    if fields is None:
        header = next(rows, None)
        if header is None:
            return "the file is empty; it needs a header line and data rows"
        fields = len(header)
    for row in rows:
        if row and len(row) > fields:
            return (
                f"line {rows.line_num} has {len(row)} fields but {fields} are expected; "
                "fix that line (a stray separator, or a value with a comma that needs quotes)"
            )
    return None


def datetime_as_utc_ms(name: str, dtype: pl.Datetime) -> pl.Expr:
    """Datetime column ``name`` as Datetime(ms, UTC); a naive one is taken as UTC, as every source
    here writes UTC (local time would shift the bars by the machine's offset)."""
    stamp = pl.col(name)
    stamp = stamp.dt.replace_time_zone("UTC") if dtype.time_zone is None else stamp
    return stamp.dt.convert_time_zone("UTC").dt.cast_time_unit("ms")


def parse_timestamps(series: pl.Series, where: str, path: str | Path | None = None) -> pl.Series:
    """Any timestamp column (datetime, date, epoch s/ms/µs integers, ISO-like strings) -> Datetime(ms, UTC).

    Naive datetimes are taken as UTC; strings with an offset are converted to UTC. ``where`` names
    the file and column in the error message; ``path``, when given, lets it say the line too.
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
        row = describe_row(path, bad.arg_true()[0])
        raise DataError(f"{where}: cannot parse timestamp '{first}' in {row}; use ISO 8601")
    if series.is_null().any():
        row = describe_row(path, series.is_null().arg_true()[0])
        raise DataError(f"{where}: empty timestamp in {row}; fill it or remove the row")
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
    if frame.height == 0:
        raise DataError(f"{source}: no data rows (only a header); use a file with data")
    if timestamp_column not in frame.columns:
        raise DataError(
            f"{source}: timestamp column '{timestamp_column}' not found "
            f"(columns: {', '.join(frame.columns)}); "
            "set files.timestamp_column"
        )
    if columns is None:
        candidates = [c for c in frame.columns if c != timestamp_column]
        text = [c for c in candidates if _is_text_column(frame[c])]
        if text:
            # Not a silent drop: say which columns are left out and how to choose instead.
            log.warning(
                "%s: column(s) %s hold no numbers (text or empty cells) and are left out; "
                "list the value columns in files.columns to choose them yourself",
                source,
                ", ".join(f"{c} ({frame.schema[c]})" for c in text),
            )
        chosen = [c for c in candidates if c not in text]
        if not chosen:
            raise DataError(
                f"{source}: no numeric column besides '{timestamp_column}'; list them in files.columns"
            )
    else:
        chosen = list(columns)
        missing = [c for c in chosen if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: column(s) {', '.join(missing)} not found; fix files.columns")
        non_numeric = [c for c in chosen if _is_text_column(frame[c])]
        if non_numeric:
            kinds = ", ".join(f"{c} ({frame.schema[c]})" for c in non_numeric)
            raise DataError(f"{source}: column(s) {kinds} are not numeric; drop them from files.columns")
    if TIMESTAMP in chosen:
        raise DataError(
            f"{source}: a value column is named '{TIMESTAMP}'; rename it or leave it out of files.columns"
        )
    values = [_numeric_values(frame[c], source, path, listed=columns is not None) for c in chosen]
    stamps = parse_timestamps(frame[timestamp_column], f"{source} column '{timestamp_column}'", path)
    out = pl.DataFrame(values).with_columns(stamps.alias(TIMESTAMP))
    duplicated = stamps.is_duplicated()
    if duplicated.any():
        # Rows in file order, so the user finds both lines.
        first, second = (int(i) for i in (stamps == stamps.filter(duplicated)[0]).arg_true()[:2])
        raise DataError(
            f"{source}: timestamp {stamps[first]} occurs more than once "
            f"({describe_row(path, first)} and {describe_row(path, second)}); keep one of them"
        )
    return out.select([TIMESTAMP, *chosen]).sort(TIMESTAMP, maintain_order=True)


def _is_text_column(series: pl.Series) -> bool:
    """A column with no number in it (labels, names, flags): never a value column.

    A column polars read as text because of a few bad cells among numbers is not one of these:
    :func:`_numeric_values` reports its bad cells by row instead of dropping the column.
    """
    if series.dtype.is_numeric():
        return False
    if series.dtype != pl.String:
        return True  # booleans, datetimes, lists: not a measurement
    return bool(_as_numbers(series).is_null().all())


def _as_numbers(series: pl.Series) -> pl.Series:
    # Spaces around a number are formatting, not a different value.
    return series.str.strip_chars().cast(pl.Float64, strict=False)


def _numeric_values(series: pl.Series, source: str, path: str | Path, listed: bool) -> pl.Series:
    """``series`` as Float64; DataError naming column and row for a cell that is not a finite number."""
    name = series.name
    numbers = _as_numbers(series) if series.dtype == pl.String else series.cast(pl.Float64)
    empty = series.is_null()
    if series.dtype == pl.String:
        empty = empty | (series.str.strip_chars() == "")
    not_a_number = numbers.is_null() & ~empty
    not_finite = ~numbers.is_finite() & numbers.is_not_null()
    problems = [
        (int(not_a_number.arg_true()[0]), "is not a number") if not_a_number.any() else None,
        (int(empty.arg_true()[0]), "is empty") if empty.any() else None,
        (int(not_finite.arg_true()[0]), "is not a finite number") if not_finite.any() else None,
    ]
    found = [p for p in problems if p is not None]
    if not found:
        return numbers.alias(name)
    index, what = min(found)
    cell = "" if what == "is empty" else f" '{series[index]}'"
    leave_out = "" if listed else ", or list the value columns in files.columns to leave this one out"
    raise DataError(
        f"{source}: column '{name}', {describe_row(path, index)}: the cell{cell} {what}; "
        f"fix or remove that row{leave_out}"
    )


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

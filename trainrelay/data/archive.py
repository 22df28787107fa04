"""Binance public-data archive layout, shared by the synthetic and binance sources.

Both sources write (or download) the same files: ``SYMBOL-INTERVAL-YYYY-MM.zip`` holding one
kline CSV, plus ``SYMBOL-INTERVAL-YYYY-MM.zip.CHECKSUM`` (``<sha256>  <zip name>``), under
Binance's own folder structure. Demo and real data therefore share one parsing path.

Binance has changed its CSVs over time: older archives have no header row, newer futures
archives have one, and spot archives from 2025 carry microsecond timestamps. The readers here
accept all of them and normalise to millisecond UTC datetimes.

The ``freqtrade`` source writes one unsplit ``.parquet`` per symbol and interval instead of monthly
zips (see :mod:`trainrelay.data.freqtrade`); :func:`read_klines` and :func:`read_funding` read those
too and return only the columns the file holds (freqtrade keeps no quote volume, trade count or
taker volumes, and nothing here invents them).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import polars as pl

from trainrelay.atomic import atomic_path, write_text
from trainrelay.data.files_source import csv_problem, datetime_as_utc_ms, describe_row
from trainrelay.errors import DataError

KLINE_COLUMNS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
]
FUNDING_COLUMNS = ["calc_time", "funding_interval_hours", "last_funding_rate"]

# Fixed timestamp inside zips so that the same CSV bytes give the same zip bytes.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
# Timestamps above this are microseconds (ms timestamps stay below it until the year 5138).
_MICROSECOND_THRESHOLD = 100_000_000_000_000

INTERVAL_MS = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "8h": 28_800_000,
    "1d": 86_400_000,
}


def market_root(market: str) -> str:
    """Folder of a market in Binance's layout: ``futures/um``, ``futures/cm`` or ``spot``."""
    if market not in {"futures/um", "futures/cm", "spot"}:
        raise DataError(f"market '{market}' is not one of futures/um, futures/cm, spot")
    return f"data/{market}/monthly"


def kline_relpath(market: str, symbol: str, interval: str, month: str) -> str:
    name = f"{symbol}-{interval}-{month}.zip"
    return f"{market_root(market)}/klines/{symbol}/{interval}/{name}"


def funding_relpath(market: str, symbol: str, month: str) -> str:
    if not market.startswith("futures"):
        raise DataError(f"funding rates exist only for futures markets, not '{market}'")
    return f"{market_root(market)}/fundingRate/{symbol}/{symbol}-fundingRate-{month}.zip"


def checksum_path(zip_path: str | Path) -> Path:
    return Path(f"{zip_path}.CHECKSUM")


def write_archive(zip_path: str | Path, csv_text: str) -> None:
    """Write ``csv_text`` as the single member of a deterministic zip, plus its ``.CHECKSUM``."""
    zip_path = Path(zip_path)
    member = zip_path.name.removesuffix(".zip") + ".csv"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        archive.writestr(info, csv_text.encode("utf-8"), compresslevel=6)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    with atomic_path(zip_path) as tmp:
        tmp.write_bytes(data)
    write_text(checksum_path(zip_path), f"{digest}  {zip_path.name}\n")


def verify_checksum(zip_path: str | Path) -> str:
    """Check ``zip_path`` against its ``.CHECKSUM`` file; return the sha256 or raise DataError."""
    zip_path = Path(zip_path)
    check = checksum_path(zip_path)
    if not check.is_file():
        raise DataError(f"{check}: checksum file missing; re-run acquire to fetch it")
    try:
        expected = check.read_text().split()[0].strip().lower()
    except (IndexError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{check}: unreadable checksum file ({exc})") from None
    actual = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    if actual != expected:
        raise DataError(
            f"{zip_path}: checksum mismatch (expected {expected[:12]}…, got {actual[:12]}…); "
            "delete it and re-run acquire"
        )
    return actual


def _read_member(zip_path: Path) -> bytes:
    if not zip_path.is_file():
        raise DataError(f"{zip_path}: file not found; run the acquire rule first")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.namelist() if m.endswith(".csv")]
            if len(members) != 1:
                raise DataError(f"{zip_path}: expected one CSV inside the zip, found {len(members)}")
            return archive.read(members[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(
            f"{zip_path}: not a readable zip archive ({exc}); delete it and re-run acquire"
        ) from None


def _has_header(raw: bytes) -> bool:
    first = raw.split(b"\n", 1)[0].strip()
    return bool(first) and not first[:1].isdigit() and not first.startswith(b"-")


def _to_datetime_ms(column: str) -> pl.Expr:
    """Integer epoch (ms or µs, decided per value) -> Datetime(ms, UTC)."""
    value = pl.col(column).cast(pl.Int64)
    millis = pl.when(value >= _MICROSECOND_THRESHOLD).then(value // 1000).otherwise(value)
    return millis.cast(pl.Datetime("ms", "UTC")).alias(column)


def _read_csv(zip_path: Path, columns: list[str], dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    raw = _read_member(zip_path)
    if not raw.strip():
        raise DataError(f"{zip_path}: the CSV inside is empty")
    header = _has_header(raw)
    try:
        frame = pl.read_csv(
            io.BytesIO(raw),
            has_header=header,
            new_columns=None if header else columns,
            schema_overrides=dtypes,
        )
    except (pl.exceptions.PolarsError, ValueError) as exc:
        # polars names the column but not the line; find the cell (or the line) for the user.
        message = _locate_csv_problem(zip_path, raw, header, columns, dtypes) or str(exc).splitlines()[0]
        raise DataError(f"{zip_path}: cannot parse CSV ({message}); delete it and re-run acquire") from None
    if header:
        frame = frame.rename({c: c.strip().lower() for c in frame.columns})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{zip_path}: missing column(s) {', '.join(missing)}")
    return frame.select(columns)


def _locate_csv_problem(
    zip_path: Path, raw: bytes, header: bool, columns: list[str], dtypes: dict[str, pl.DataType]
) -> str | None:
    """The first ragged line or the first cell that is not of its column's type, described."""
    ragged = csv_problem(raw, fields=None if header else len(columns))
    if ragged:
        return ragged
    try:
        text = pl.read_csv(
            io.BytesIO(raw), has_header=header, new_columns=None if header else columns, infer_schema=False
        )
    except (pl.exceptions.PolarsError, ValueError):
        return None
    for name, dtype in dtypes.items():
        if name not in text.columns:
            continue
        cells = text.get_column(name)
        bad = cells.str.strip_chars().cast(dtype, strict=False).is_null() & cells.is_not_null()
        if bad.any():
            index = int(bad.arg_true()[0])
            where = describe_row(zip_path.with_suffix(".csv"), index, header)
            return f"column '{name}', {where} of the CSV inside: '{cells[index]}' is not a valid {dtype}"
    return None


# The columns a kline or funding parquet must have; the other Binance columns are optional there.
PARQUET_KLINE_COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]
PARQUET_FUNDING_COLUMNS = ["calc_time", "last_funding_rate"]
_TIME_COLUMNS = ("open_time", "close_time", "calc_time")


def parquet_problem(path: str | Path, required: list[str]) -> str | None:
    """Why the parquet at ``path`` is not a table with ``required`` columns (None when it is one).

    Reads only the schema: the manifest calls it to name its 'columns' check before reading rows.
    """
    try:
        schema = pl.read_parquet_schema(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"not a readable parquet file ({message})"
    missing = [c for c in required if c not in schema]
    if missing:
        have = ", ".join(schema) or "no columns"
        return f"not a {_table_kind(required)} table: missing column(s) {', '.join(missing)} (has {have})"
    for name in required:
        dtype = schema[name]
        if name in _TIME_COLUMNS:
            if not (isinstance(dtype, pl.Datetime) or dtype.is_integer()):
                return f"column '{name}' is {dtype}, not a datetime or epoch milliseconds"
        elif not dtype.is_numeric():
            return f"column '{name}' is {dtype}, not a number"
    return None


def _table_kind(required: list[str]) -> str:
    return "candle" if required == PARQUET_KLINE_COLUMNS else "funding-rate"


def _read_parquet(path: Path, required: list[str], optional: list[str]) -> pl.DataFrame:
    """The ``required`` columns, then whichever of ``optional`` the file has, normalised."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the acquire rule first")
    problem = parquet_problem(path, required)
    if problem:
        raise DataError(f"{path}: {problem}; delete it and re-run acquire")
    frame = pl.read_parquet(path)
    columns = [*required, *(c for c in optional if c in frame.columns and c not in required)]
    frame = frame.select(columns)
    casts = []
    for name in columns:
        dtype = frame.schema[name]
        if name in _TIME_COLUMNS:
            if isinstance(dtype, pl.Datetime):
                casts.append(datetime_as_utc_ms(name, dtype))
            else:
                casts.append(_to_datetime_ms(name))
        elif name in ("count", "funding_interval_hours"):
            casts.append(pl.col(name).cast(pl.Int64))
        else:
            casts.append(pl.col(name).cast(pl.Float64))
    return frame.with_columns(casts)


def read_klines(zip_path: str | Path) -> pl.DataFrame:
    """Read one kline archive (or kline parquet); timestamps become Datetime(ms, UTC), prices Float64.

    A ``.parquet`` gives open_time, open, high, low, close, volume plus only those of Binance's
    other columns that it holds.
    """
    zip_path = Path(zip_path)
    if zip_path.suffix == ".parquet":
        optional = [c for c in KLINE_COLUMNS if c != "ignore"]
        return _read_parquet(zip_path, PARQUET_KLINE_COLUMNS, optional)
    dtypes = {c: pl.Float64 for c in KLINE_COLUMNS}
    dtypes.update({"open_time": pl.Int64, "close_time": pl.Int64, "count": pl.Int64, "ignore": pl.Float64})
    frame = _read_csv(zip_path, KLINE_COLUMNS, dtypes)
    frame = frame.drop("ignore").with_columns(_to_datetime_ms("open_time"), _to_datetime_ms("close_time"))
    return frame


def read_funding(zip_path: str | Path) -> pl.DataFrame:
    """Read one funding-rate archive: calc_time (Datetime ms UTC), interval hours, rate.

    A ``.parquet`` gives calc_time and last_funding_rate (plus funding_interval_hours if it has it).
    """
    zip_path = Path(zip_path)
    if zip_path.suffix == ".parquet":
        return _read_parquet(zip_path, PARQUET_FUNDING_COLUMNS, FUNDING_COLUMNS)
    dtypes = {"calc_time": pl.Int64, "funding_interval_hours": pl.Int64, "last_funding_rate": pl.Float64}
    frame = _read_csv(zip_path, FUNDING_COLUMNS, dtypes)
    return frame.with_columns(_to_datetime_ms("calc_time"))


def klines_to_csv(frame: pl.DataFrame, header: bool = False) -> str:
    """Serialise klines in Binance's CSV form (integer ms timestamps, 'ignore' column = 0)."""
    out = frame.with_columns(
        pl.col("open_time").dt.epoch("ms"),
        pl.col("close_time").dt.epoch("ms"),
        pl.lit(0).alias("ignore"),
    ).select(KLINE_COLUMNS)
    return out.write_csv(include_header=header, float_precision=None)


def funding_to_csv(frame: pl.DataFrame) -> str:
    out = frame.with_columns(pl.col("calc_time").dt.epoch("ms")).select(FUNDING_COLUMNS)
    return out.write_csv(include_header=True)

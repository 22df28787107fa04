"""Text events (headlines): ``events/events.csv`` with header ``timestamp,symbol,text``.

``timestamp`` is epoch milliseconds (UTC), ``symbol`` a symbol or ``*`` for market-wide news.
Rows are sorted by (timestamp, symbol, text) so the same events always give the same bytes.
Absent events are a file with the header only.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from trainrelay.atomic import write_text
from trainrelay.data.files_source import describe_row, parse_timestamps, read_table
from trainrelay.errors import DataError, first_line

EVENTS_RELPATH = "events/events.csv"
EVENT_COLUMNS = ["timestamp", "symbol", "text"]
MARKET_WIDE = "*"
_SCHEMA = {"timestamp": pl.Datetime("ms", "UTC"), "symbol": pl.String, "text": pl.String}


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=_SCHEMA)


def events_to_csv(frame: pl.DataFrame) -> str:
    """Serialise events (timestamp as Datetime(ms, UTC)) to the canonical CSV text."""
    out = (
        frame.select(EVENT_COLUMNS)
        .sort(EVENT_COLUMNS, maintain_order=True)
        .with_columns(pl.col("timestamp").dt.epoch("ms"))
    )
    return out.write_csv(include_header=True, quote_style="necessary")


def write_events(target: str | Path, frame: pl.DataFrame) -> None:
    write_text(target, events_to_csv(frame))


def read_events(path: str | Path) -> pl.DataFrame:
    """Read an ``events.csv``: its timestamp (epoch ms, as Datetime(ms, UTC)), symbol and text columns.

    The one reader of raw events, for the manifest, embeddings, look-ahead and bench code. Extra
    columns are dropped; empty values are kept (the manifest and the embeddings stage reject them,
    each naming the row).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: events file not found; run the acquire rule first")
    try:
        frame = pl.read_csv(
            path, schema_overrides={"timestamp": pl.Int64, "symbol": pl.String, "text": pl.String}
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        message = first_line(exc, type(exc).__name__)
        raise DataError(
            f"{path}: cannot parse the events CSV ({message}); fix it or re-run acquire"
        ) from None
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: column '{missing[0]}' missing; the header must be 'timestamp,symbol,text'")
    return frame.select(EVENT_COLUMNS).with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))


def normalise_events(path: str | Path, where: str = "events.path") -> pl.DataFrame:
    """Read user events (CSV/parquet with timestamp, text and optionally symbol) into the canonical form.

    A missing ``symbol`` column means market-wide news (``*``).
    """
    frame = read_table(path, where)
    source = f"{where} '{path}'"
    names = [c.strip().lower() for c in frame.columns]
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise DataError(f"{source}: column '{repeated[0]}' appears twice (names ignore case); rename one")
    frame = frame.rename(dict(zip(frame.columns, names, strict=True)))
    missing = [c for c in ("timestamp", "text") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: column(s) {', '.join(missing)} missing; "
            "events need timestamp, text and optionally symbol"
        )
    if "symbol" not in frame.columns:
        frame = frame.with_columns(pl.lit(MARKET_WIDE).alias("symbol"))
    stamps = parse_timestamps(frame["timestamp"], f"{source} column 'timestamp'", path)
    out = frame.select(
        stamps.alias("timestamp"),
        pl.col("symbol").cast(pl.String).fill_null(MARKET_WIDE).str.strip_chars(),
        pl.col("text").cast(pl.String).str.strip_chars(),
    )
    empty = out["text"].is_null() | (out["text"] == "")
    if empty.any():
        row = describe_row(path, empty.arg_true()[0])
        raise DataError(f"{source}: empty text in {row}; remove the row or fill it")
    return out.sort(EVENT_COLUMNS, maintain_order=True)

"""Turning parsed artifact values into JSON-safe data and into text for tables.

Kept separate from the rendering so the JSON, CSV and HTML outputs format numbers the same
way every time (byte-identical rebuilds).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
from markupsafe import Markup, escape


def jsonable(value: Any) -> Any:
    """Plain JSON types: NaN/inf become None, datetimes ISO strings, containers recurse."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return iso_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``frame`` as JSON-safe dicts, columns in frame order."""
    return [jsonable(row) for row in frame.iter_rows(named=True)]


def iso_time(value: datetime) -> str:
    """UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (inputs' own times; never the clock)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = 4) -> str:
    """Table text: numbers with ``digits`` significant digits, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, list):
        return ", ".join(fmt(item, digits) for item in value) if value else "—"
    return str(value)


def fmt_pct(value: Any) -> str:
    """Signed percentage, e.g. ``-28.6 %``; None as an em dash."""
    return "—" if not finite(value) else f"{value:+.1f} %"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``a.b.c`` keys (lists kept as values), insertion order kept."""
    if not isinstance(obj, dict):
        return {prefix or "value": obj}
    flat: dict[str, Any] = {}
    for key, item in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, dict) and item:
            flat.update(flatten(item, name))
        else:
            flat[name] = item
    return flat


def fmt_when(value: Any) -> str:
    """An ISO time (as stored in report.json) as ``YYYY-MM-DD HH:MM UTC``; other values via :func:`fmt`."""
    if isinstance(value, str) and len(value) >= 16 and value[4] == "-" and value[10] == "T":
        return f"{value[:10]} {value[11:16]} UTC"
    return fmt(value)


def table_of(rows: list[Any]) -> dict[str, list[Any]]:
    """Flattened rows plus the union of their columns (first-seen order) for a generic table."""
    flat = [flatten(row) for row in rows]
    cols: list[str] = []
    for row in flat:
        cols += [key for key in row if key not in cols]
    return {"cols": cols, "rows": flat}


# After every "_" and after a "." that a letter follows (never inside a number such as 0.05).
_BREAK_AFTER = re.compile(r"_|\.(?=[A-Za-z])")


def breakable(value: Any) -> str:
    """Text with a zero-width space after each ``_`` and each ``.`` between words, so that long
    identifiers (``latency_p95_ms``, ``onnxruntime.providers.CUDAExecutionProvider``) can wrap in a
    narrow table column instead of pushing the table past the page's edge."""
    return _BREAK_AFTER.sub(lambda match: match.group(0) + "\u200b", fmt(value))


def code_spans(text: Any) -> Markup:
    """``text`` HTML-escaped, with each ```span``` in backticks set as ``<code>span</code>``."""
    escaped = str(escape(fmt(text)))
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))

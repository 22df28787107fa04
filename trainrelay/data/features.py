"""Bar features: fine klines -> decision bars -> the feature columns of ``features.parquet``.

Every feature at a bar's close time ``t`` uses only fine bars that closed at or before ``t``,
funding rates calculated at or before ``t``, and rolling windows that end at ``t``: no value
depends on anything later, so changing raw data after ``t`` leaves the features at ``t`` as
they were (tested).
"""

from __future__ import annotations

import math

import polars as pl

from trainrelay.data import archive
from trainrelay.errors import ConfigError, DataError

# Rolling windows in bars (at 15m bars: 1 hour, 4 hours, 1 day).
VOL_WINDOWS = (4, 16, 96)
MOMENTUM_WINDOWS = (4, 16, 96)
VOLUME_Z_WINDOWS = (16, 96)

BAR_COLUMNS = [
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "taker_buy_volume",
    "count",
    "realized_vol",
    "up_share",
]

MARKET_FEATURES = [
    "log_return",
    "realized_vol",
    "bar_range",
    "up_share",
    "log_volume",
    "taker_imbalance",
    "log_trades",
    *[f"vol_{w}" for w in VOL_WINDOWS],
    *[f"mom_{w}" for w in MOMENTUM_WINDOWS],
    *[f"volume_z_{w}" for w in VOLUME_Z_WINDOWS],
    "funding_rate",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
]


def bar_steps(fine: str, bar: str) -> int:
    """How many fine bars make one decision bar; ConfigError when ``bar`` is not a multiple."""
    fine_ms, bar_ms = archive.INTERVAL_MS[fine], archive.INTERVAL_MS[bar]
    if bar_ms % fine_ms:
        raise ConfigError(
            f"config: intervals.bar={bar} is not a whole multiple of intervals.fine={fine}; choose a "
            "bar interval made of whole fine bars"
        )
    return bar_ms // fine_ms


def aggregate_bars(fine: pl.DataFrame, bar: str, steps: int, prev_close: float | None) -> pl.DataFrame:
    """Aggregate fine klines (one month, sorted by open_time) into complete decision bars.

    Fine log returns are close-to-close; the first fine bar uses ``prev_close`` (the last close of
    the previous month) or, at the very start of the series, its own open. A bar missing any of
    its fine bars (a gap) is dropped rather than summarised from part of its interval. The
    ``timestamp`` is the bar's close time: bucket start + bar interval.
    """
    bar_ms = archive.INTERVAL_MS[bar]
    previous = pl.col("close").shift(1)
    previous = (
        previous.fill_null(prev_close) if prev_close is not None else previous.fill_null(pl.col("open"))
    )
    epoch = pl.col("open_time").dt.epoch("ms")
    fine = fine.with_columns(
        (pl.col("close") / previous).log().alias("r"),
        ((epoch // bar_ms) * bar_ms + bar_ms).cast(pl.Datetime("ms", "UTC")).alias("timestamp"),
    )
    bars = fine.group_by("timestamp", maintain_order=True).agg(
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        pl.col("taker_buy_volume").sum(),
        pl.col("count").sum().cast(pl.Float64),
        (pl.col("r") ** 2).sum().sqrt().alias("realized_vol"),
        (pl.col("r") > 0).mean().cast(pl.Float64).alias("up_share"),
        pl.len().alias("n_fine"),
    )
    return bars.filter(pl.col("n_fine") == steps).select(BAR_COLUMNS)


def _cyclic(value: pl.Expr, period: float, name: str) -> list[pl.Expr]:
    angle = value.cast(pl.Float64) * (2.0 * math.pi / period)
    return [angle.sin().alias(f"{name}_sin"), angle.cos().alias(f"{name}_cos")]


def _safe_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    # A zero denominator (a bar without volume, a flat window) means "no signal": 0, not inf/NaN.
    return pl.when(denominator > 0).then(numerator / denominator).otherwise(0.0)


def market_features(bars: pl.DataFrame, funding: pl.DataFrame | None, symbol: str) -> pl.DataFrame:
    """Feature columns of one symbol's bars (sorted by timestamp), warm-up rows dropped.

    ``funding`` (calc_time, last_funding_rate), when given, is joined backward: each bar gets the
    last rate calculated at or before its close time. Returns ``timestamp, symbol, close`` and
    :data:`MARKET_FEATURES` (without ``funding_rate`` when ``funding`` is None).
    """
    close = pl.col("close")
    log_return = (close / close.shift(1)).log()
    log_volume = pl.col("volume").log1p()
    frame = bars.with_columns(
        log_return.alias("log_return"),
        (pl.col("high") / pl.col("low")).log().alias("bar_range"),
        log_volume.alias("log_volume"),
        _safe_ratio(2.0 * pl.col("taker_buy_volume") - pl.col("volume"), pl.col("volume")).alias(
            "taker_imbalance"
        ),
        pl.col("count").log1p().alias("log_trades"),
    )
    frame = frame.with_columns(
        *[pl.col("log_return").rolling_std(w).alias(f"vol_{w}") for w in VOL_WINDOWS],
        *[(close / close.shift(w)).log().alias(f"mom_{w}") for w in MOMENTUM_WINDOWS],
        *[
            _safe_ratio(
                pl.col("log_volume") - pl.col("log_volume").rolling_mean(w),
                pl.col("log_volume").rolling_std(w),
            ).alias(f"volume_z_{w}")
            for w in VOLUME_Z_WINDOWS
        ],
        *_cyclic(pl.col("timestamp").dt.hour() * 60 + pl.col("timestamp").dt.minute(), 24 * 60, "hour"),
        *_cyclic(pl.col("timestamp").dt.weekday() - 1, 7, "dow"),
    )
    names = list(MARKET_FEATURES)
    if funding is None:
        names.remove("funding_rate")
    else:
        rates = funding.select(pl.col("calc_time"), pl.col("last_funding_rate").alias("funding_rate"))
        frame = frame.join_asof(rates, left_on="timestamp", right_on="calc_time", strategy="backward")
    frame = frame.select("timestamp", pl.lit(symbol).alias("symbol"), "close", *names)
    return drop_warmup(frame, names, symbol)


def drop_warmup(frame: pl.DataFrame, features: list[str], symbol: str) -> pl.DataFrame:
    """Drop the leading rows whose windows are not yet full; any later gap in values is an error."""
    complete = pl.all_horizontal([pl.col(c).is_not_null() for c in features])
    first = frame.select(complete.arg_true().first()).item()
    if first is None:
        raise DataError(
            f"symbol {symbol}: no bar has every feature after the warm-up ({max(VOL_WINDOWS) + 1} bars and "
            "the first funding rate); acquire more months"
        )
    frame = frame.slice(first)
    checked = [c for c in ["close", *features] if c in frame.columns]
    finite = pl.all_horizontal([pl.col(c).is_finite() & pl.col(c).is_not_null() for c in checked])
    bad = frame.select((~finite).arg_true().first()).item()
    if bad is not None:
        row = frame.row(bad, named=True)
        columns = [c for c in checked if row[c] is None or not math.isfinite(row[c])]
        raise DataError(
            f"symbol {symbol}: feature(s) {', '.join(columns)} not finite at "
            f"{row['timestamp']:%Y-%m-%dT%H:%MZ} (segments check 'finite'); "
            "check the raw bars there (zero or negative prices?)"
        )
    return frame


def series_features(frame: pl.DataFrame, values: list[str], symbol: str) -> tuple[pl.DataFrame, list[str]]:
    """Features of a ``files``-source series: its value columns as given.

    A value column named ``close`` is taken as a price: it is kept as ``close`` and
    ``log_return`` is added (first row dropped). Without one (ETT) there is no ``close`` and no
    ``log_return``.
    """
    frame = frame.sort("timestamp").with_columns(pl.lit(symbol).alias("symbol"))
    if "close" in values:
        names = ["log_return", *[c for c in values if c != "close"]]
        frame = frame.with_columns((pl.col("close") / pl.col("close").shift(1)).log().alias("log_return"))
        frame = frame.select("timestamp", "symbol", "close", *names)
    else:
        names = list(values)
        frame = frame.select("timestamp", "symbol", *names)
    return drop_warmup(frame, names, symbol), names

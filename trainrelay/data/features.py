"""Bar features: fine klines -> decision bars -> the feature columns of ``features.parquet``.

Every feature at a bar's close time ``t`` uses only fine bars that closed at or before ``t``,
funding rates calculated at or before ``t``, and rolling windows that end at ``t``: no value
depends on anything later, so changing raw data after ``t`` leaves the features at ``t`` as
they were (tested).

Real data is not the demo's. Three rules keep it honest (docs/data-sources.md):

- **Outage bars are missing bars.** A fine bar with zero volume and open = high = low = close is
  what an exchange writes while nothing could trade (Binance's 2023-03-24 spot halt, the
  2024-10-28 futures outage), not a quiet market: it is dropped like a missing bar, so the decision
  bar it belongs to is incomplete and dropped too.
- **No return spans a gap.** Where a symbol's bars skip one or more bar intervals, the first bar
  after the gap gets ``log_return`` 0: the price move across the gap is neither a feature's input
  nor anyone's reward (segments applies the same rule where another symbol's gap removed a row).
- **Without finer bars, say how.** With ``intervals.fine == intervals.bar`` (a market that only has
  15m bars) ``realized_vol`` is the Garman-Klass range estimator of each bar's own OHLC and
  ``up_share`` (a share of fine returns) does not exist; trade counts and taker volumes exist only
  where the source has them (Binance archives do, freqtrade files do not), and the features built
  from them are left out, never filled with zeros.
"""

from __future__ import annotations

import math
from typing import Any

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
# Kline columns that only some sources have (Binance archives: yes; freqtrade files: no).
OPTIONAL_KLINE_COLUMNS = ("taker_buy_volume", "count")
# Features that need those columns or finer bars: left out when the data cannot give them.
NEEDS = {"taker_imbalance": "taker_buy_volume", "log_trades": "count", "up_share": "up_share"}

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


def is_outage(frame: pl.DataFrame) -> pl.Series:
    """Bars an exchange wrote while nothing traded: zero volume and open = high = low = close."""
    flat = (
        (pl.col("open") == pl.col("high"))
        & (pl.col("high") == pl.col("low"))
        & (pl.col("low") == pl.col("close"))
    )
    return frame.select(((pl.col("volume") == 0) & flat).alias("outage")).to_series()


def garman_klass(open_: pl.Expr, high: pl.Expr, low: pl.Expr, close: pl.Expr) -> pl.Expr:
    """Garman-Klass (1980) volatility of one bar from its OHLC, in log-return units.

    sigma^2 = 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2; the estimate can dip below zero on a bar
    whose body is nearly its range, so it is floored at 0 before the square root.
    """
    variance = 0.5 * (high / low).log() ** 2 - (2.0 * math.log(2.0) - 1.0) * (close / open_).log() ** 2
    return pl.max_horizontal(variance, pl.lit(0.0)).sqrt()


def aggregate_bars(
    fine: pl.DataFrame, bar: str, steps: int, prev_close: float | None, prev_open_time: Any = None
) -> pl.DataFrame:
    """Aggregate fine klines (one file, sorted by open_time) into complete decision bars.

    Fine log returns are close-to-close; the first fine bar, and the first after a missing fine bar,
    uses ``prev_close`` (the last close of the previous file, when its ``prev_open_time`` is one fine
    bar earlier or not given) or its own open, so no fine return
    spans a gap. Outage bars (:func:`is_outage`) count as missing. A bar missing any of its fine
    bars is dropped rather than summarised from part of its interval. The ``timestamp`` is the
    bar's close time: bucket start + bar interval. With ``steps == 1`` (no finer bars) the bar's
    ``realized_vol`` is :func:`garman_klass` and there is no ``up_share``.
    """
    bar_ms = archive.INTERVAL_MS[bar]
    fine_ms = bar_ms // steps
    fine = fine.filter(~is_outage(fine))
    epoch = pl.col("open_time").dt.epoch("ms")
    follows = (epoch - epoch.shift(1)) == fine_ms
    previous = pl.when(follows).then(pl.col("close").shift(1)).otherwise(pl.col("open"))
    first_follows = (
        prev_open_time is None
        or fine.height == 0
        or (fine.get_column("open_time")[0] - prev_open_time).total_seconds() * 1000 == fine_ms
    )
    if prev_close is not None and first_follows:  # the previous file's last close, for its first bar
        previous = pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(prev_close)).otherwise(previous)
    fine = fine.with_columns(
        (pl.col("close") / previous).log().alias("r"),
        ((epoch // bar_ms) * bar_ms + bar_ms).cast(pl.Datetime("ms", "UTC")).alias("timestamp"),
    )
    # Summed only where the source has them (OPTIONAL_KLINE_COLUMNS).
    sums = [pl.col(c).sum().cast(pl.Float64) for c in OPTIONAL_KLINE_COLUMNS if c in fine.columns]
    if steps == 1:
        gk = garman_klass(pl.col("open"), pl.col("high"), pl.col("low"), pl.col("close"))
        vol = [gk.first().alias("realized_vol")]
    else:
        vol = [
            (pl.col("r") ** 2).sum().sqrt().alias("realized_vol"),
            (pl.col("r") > 0).mean().cast(pl.Float64).alias("up_share"),
        ]
    bars = fine.group_by("timestamp", maintain_order=True).agg(
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        *sums,
        *vol,
        pl.len().alias("n_fine"),
    )
    return bars.filter(pl.col("n_fine") == steps).select([c for c in BAR_COLUMNS if c in bars.columns])


def _cyclic(value: pl.Expr, period: float, name: str) -> list[pl.Expr]:
    angle = value.cast(pl.Float64) * (2.0 * math.pi / period)
    return [angle.sin().alias(f"{name}_sin"), angle.cos().alias(f"{name}_cos")]


def _safe_ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    # A zero denominator (a bar without volume, a flat window) means "no signal": 0, not inf/NaN.
    return pl.when(denominator > 0).then(numerator / denominator).otherwise(0.0)


def after_gap(bar_ms: int) -> pl.Expr:
    """True on a row whose ``timestamp`` is more than ``bar_ms`` after the previous row's."""
    epoch = pl.col("timestamp").dt.epoch("ms")
    return (epoch - epoch.shift(1)) > bar_ms


def available_features(bars: pl.DataFrame, funding: bool) -> list[str]:
    """:data:`MARKET_FEATURES` that ``bars`` can give (see :data:`NEEDS`), in their fixed order."""
    names = [n for n in MARKET_FEATURES if NEEDS.get(n, "timestamp") in bars.columns]
    return names if funding else [n for n in names if n != "funding_rate"]


def market_features(
    bars: pl.DataFrame, funding: pl.DataFrame | None, symbol: str, bar_ms: int | None = None
) -> pl.DataFrame:
    """Feature columns of one symbol's bars (sorted by timestamp), warm-up rows dropped.

    ``funding`` (calc_time, last_funding_rate), when given, is joined backward: each bar gets the
    last rate calculated at or before its close time. Returns ``timestamp, symbol, close`` and
    :func:`available_features`. The first bar after a gap (bars more than ``bar_ms`` apart; None:
    the smallest step in the data) gets ``log_return`` 0: no return spans a gap.
    """
    close = pl.col("close")
    if bar_ms is None and bars.height > 1:
        bar_ms = int(bars.select(pl.col("timestamp").dt.epoch("ms").diff().min()).item())
    log_return = pl.when(after_gap(bar_ms or 0)).then(0.0).otherwise((close / close.shift(1)).log())
    log_volume = pl.col("volume").log1p()
    optional = []
    if "taker_buy_volume" in bars.columns:
        optional.append(
            _safe_ratio(2.0 * pl.col("taker_buy_volume") - pl.col("volume"), pl.col("volume")).alias(
                "taker_imbalance"
            )
        )
    if "count" in bars.columns:
        optional.append(pl.col("count").log1p().alias("log_trades"))
    frame = bars.with_columns(
        log_return.alias("log_return"),
        (pl.col("high") / pl.col("low")).log().alias("bar_range"),
        log_volume.alias("log_volume"),
        *optional,
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
    names = available_features(bars, funding is not None)
    if funding is not None:
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

"""The ``synthetic`` source: a deterministic market written in Binance's public-data archive layout.

What makes the data worth learning from (each is checked with numbers in tests/test_synthetic.py):

- **Regimes**: a semi-Markov chain over calm / bull / bear / turbulent, shared by all symbols, with
  persistent drift (bull, bear) and volatility level (calm, turbulent). Durations are gamma
  distributed (hours to days), so a trend lasts long enough for a forecaster and a policy to use.
- **Volatility clustering**: the common factor and every symbol's own shocks have a GARCH(1,1)
  variance updated hourly from the realised hourly shock, so large moves cluster.
- **Intraday seasonality**: volatility and volume are U-shaped over the UTC day.
- **Cross-symbol correlation**: returns load on one common factor (loading 0.55..0.85).
- **Activity**: volume, taker-buy volume and trade counts scale with volatility and shock size.
- **Funding** every 8 hours (00/08/16 UTC) from the last 8 hours' drift plus noise (futures only).
- **Text events**: a few headlines a day; most regime switches are announced a few hours ahead by
  a headline whose words match the coming regime (most of the time), mixed with neutral noise.

Fine bars (``intervals.fine``) are simulated in integer ticks and lots, and the decision bars
(``intervals.bar``) are their exact aggregation, so both CSVs agree to the last digit.
Generation runs month by month with carried state, so memory stays bounded for long spans; each
month and each symbol has its own random stream, so adding a month or a symbol leaves the other
months' and symbols' bars and funding byte-identical (headlines are drawn over the whole span).
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from trainrelay.core.progress import progress_bar
from trainrelay.data import archive
from trainrelay.data.events import EVENTS_RELPATH, MARKET_WIDE, empty_events, write_events
from trainrelay.errors import ConfigError

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
FUNDING_EVERY_MS = 8 * HOUR_MS

REGIMES = ("calm", "bull", "bear", "turbulent")
# Drift per day in units of the symbol's daily volatility, and volatility multiplier.
REGIME_DRIFT = np.array([0.0, 1.2, -1.6, -0.2])
REGIME_VOL = np.array([0.6, 1.0, 1.3, 2.2])
REGIME_MEAN_HOURS = np.array([40.0, 30.0, 24.0, 10.0])
# Next-regime probabilities (rows: current regime); a regime never switches to itself.
REGIME_TRANSITIONS = np.array(
    [
        [0.0, 0.4, 0.3, 0.3],
        [0.5, 0.0, 0.2, 0.3],
        [0.4, 0.25, 0.0, 0.35],
        [0.4, 0.3, 0.3, 0.0],
    ]
)
MIN_REGIME_HOURS = 2.0

# GARCH(1,1) on hourly standardised shocks: unconditional variance 1, persistence 0.98 an hour.
GARCH_ALPHA = 0.08
GARCH_BETA = 0.90
GARCH_OMEGA = 1.0 - GARCH_ALPHA - GARCH_BETA
GARCH_BOUNDS = (0.05, 25.0)
STUDENT_DF = 5.0
SEASONAL_AMPLITUDE = 0.4  # volatility at the UTC day's ends vs midday: (1 + a) / (1 - a)

# Headline signal: share of switches announced, lead time, share whose words match the new regime.
EVENT_ANNOUNCE_PROB = 0.8
EVENT_LEAD_HOURS = (1.0, 6.0)
EVENT_MATCH_PROB = 0.75
EVENT_MARKET_WIDE_PROB = 0.6
NOISE_EVENTS_PER_DAY = 2.0  # neutral headlines
FALSE_ALARMS_PER_DAY = 0.3  # regime-worded headlines not followed by a switch

QUOTE_DECIMALS = 4
FUNDING_DECIMALS = 8

HEADLINES: dict[str, tuple[str, ...]] = {
    "bull": (
        "{asset} surges as institutional inflows accelerate",
        "Analysts turn bullish on {asset} after approval rumours",
        "{asset} rallies past resistance on strong demand",
        "Record inflows into {asset} funds signal renewed optimism",
        "Major exchange reports buying spree in {asset}",
        "{asset} breaks out as short sellers capitulate",
    ),
    "bear": (
        "{asset} slides as regulators weigh a crackdown",
        "Heavy selling hits {asset} amid outflows from funds",
        "{asset} plunges after reports of an exchange hack",
        "Bearish mood grows as {asset} whales move coins to exchanges",
        "Analysts warn of deeper losses for {asset}",
        "{asset} drops as a risk-off mood spreads",
    ),
    "turbulent": (
        "Liquidations mount as {asset} whipsaws in volatile trade",
        "Traders brace for turmoil in {asset} ahead of policy decision",
        "Wild swings in {asset} trigger a cascade of margin calls",
        "Uncertainty spikes as {asset} options imply sharp moves",
        "Exchange outage sparks chaos in {asset} markets",
        "Panic and confusion as {asset} volatility explodes",
    ),
    "calm": (
        "{asset} trades quietly in a narrow range",
        "Volatility in {asset} falls to multi-week lows",
        "{asset} consolidates as traders await direction",
        "Calm returns to {asset} markets after a busy week",
        "Steady session for {asset} on thin volumes",
        "{asset} holds steady as the market cools",
    ),
    "neutral": (
        "{asset} developers publish a quarterly roadmap update",
        "Conference panel discusses {asset} custody standards",
        "New {asset} trading pairs listed on a regional exchange",
        "{asset} community votes on a routine protocol upgrade",
        "Research firm releases a report on {asset} adoption",
        "Interview: fund manager on long-term {asset} allocation",
    ),
}
_ASSET_NAMES = {"BTC": "Bitcoin", "ETH": "Ether", "SOL": "Solana", "BNB": "BNB", "XRP": "XRP"}
_QUOTE_SUFFIXES = ("USDT", "USDC", "BUSD", "USD")
# Known symbols get realistic 2024 levels; others get stable pseudo-random ones from their name.
_KNOWN = {
    "BTCUSDT": (42_000.0, 0.030, 0.85, 20_000_000.0, 4_000.0),
    "ETHUSDT": (2_300.0, 0.036, 0.80, 8_000_000.0, 2_500.0),
}


@dataclass(frozen=True)
class SymbolProfile:
    """Fixed properties of one simulated symbol."""

    symbol: str
    price: float
    tick_decimals: int
    lot_decimals: int
    daily_vol: float
    loading: float  # weight of the common factor in the standardised shock
    notional_per_minute: float  # average traded quote value per minute
    trade_notional: float  # average quote value of one trade


def symbol_profile(symbol: str) -> SymbolProfile:
    if symbol in _KNOWN:
        price, daily_vol, loading, notional, trade = _KNOWN[symbol]
    else:
        u = [float(x) for x in np.random.default_rng(zlib.crc32(symbol.encode())).random(5)]
        price = float(f"{10 ** (u[0] * 4.0 - 1.0):.4g}")  # 0.1 .. 1000
        daily_vol = 0.035 + 0.025 * u[1]
        loading = 0.55 + 0.25 * u[2]
        notional = 500_000.0 + 2_500_000.0 * u[3]
        trade = 300.0 + 1_500.0 * u[4]
    # About six significant digits in a tick; lots of at most 3 decimals as on Binance futures.
    tick_decimals = max(0, int(np.ceil(6 - np.log10(price))) - 1)
    lot_decimals = int(np.clip(np.ceil(np.log10(price)) - 1, 0, 3))
    return SymbolProfile(symbol, price, tick_decimals, lot_decimals, daily_vol, loading, notional, trade)


def asset_name(symbol: str) -> str:
    if symbol == MARKET_WIDE:
        return "Crypto"
    base = symbol
    for suffix in _QUOTE_SUFFIXES:
        if symbol.endswith(suffix) and len(symbol) > len(suffix):
            base = symbol[: -len(suffix)]
            break
    return _ASSET_NAMES.get(base, base)


def classify_headline(text: str) -> str | None:
    """The HEADLINES category (regime name or 'neutral') a synthetic headline came from, else None."""
    for category, templates in _HEADLINE_PATTERNS.items():
        if any(pattern.fullmatch(text) for pattern in templates):
            return category
    return None


_HEADLINE_PATTERNS = {
    category: tuple(re.compile(re.escape(t).replace(re.escape("{asset}"), ".+")) for t in templates)
    for category, templates in HEADLINES.items()
}


def month_list(start_month: str, months: int) -> list[str]:
    year, month = (int(part) for part in start_month.split("-"))
    out = []
    for _ in range(months):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def month_bounds(month: str) -> tuple[int, int]:
    """[start, end) of a calendar month in epoch ms (UTC)."""
    year, mon = (int(part) for part in month.split("-"))
    start = (dt.date(year, mon, 1) - dt.date(1970, 1, 1)).days * DAY_MS
    return start, start + calendar.monthrange(year, mon)[1] * DAY_MS


@dataclass(frozen=True)
class SyntheticSpec:
    symbols: tuple[str, ...]
    months: tuple[str, ...]
    market: str
    text_events: bool
    seed: int
    fine: str
    bar: str

    @classmethod
    def from_config(cls, config: dict) -> SyntheticSpec:
        section = config["synthetic"]
        fine, bar = config["intervals"]["fine"], config["intervals"]["bar"]
        for key, value in (("fine", fine), ("bar", bar)):
            if value not in archive.INTERVAL_MS:
                raise ConfigError(
                    f"intervals.{key}: '{value}' is not one of {', '.join(archive.INTERVAL_MS)}"
                )
        if archive.INTERVAL_MS[bar] % archive.INTERVAL_MS[fine]:
            raise ConfigError(f"intervals: bar '{bar}' must be a whole multiple of fine '{fine}'")
        if len(set(section["symbols"])) != len(section["symbols"]):
            raise ConfigError("synthetic.symbols: a symbol is listed twice")
        return cls(
            symbols=tuple(section["symbols"]),
            months=tuple(month_list(section["start_month"], int(section["months"]))),
            market=section["market"],
            text_events=bool(section["text_events"]),
            seed=int(config["seed"]),
            fine=fine,
            bar=bar,
        )

    @property
    def intervals(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.fine, self.bar]))

    @property
    def has_funding(self) -> bool:
        return self.market.startswith("futures")

    @property
    def span(self) -> tuple[int, int]:
        return month_bounds(self.months[0])[0], month_bounds(self.months[-1])[1]


def synthetic_relpaths(config: dict) -> list[str]:
    """Every file :func:`generate` writes, relative to the raw root."""
    spec = SyntheticSpec.from_config(config)
    paths = []
    for symbol in spec.symbols:
        for month in spec.months:
            zips = [
                archive.kline_relpath(spec.market, symbol, interval, month) for interval in spec.intervals
            ]
            if spec.has_funding:
                zips.append(archive.funding_relpath(spec.market, symbol, month))
            for zip_path in zips:
                paths += [zip_path, f"{zip_path}.CHECKSUM"]
    paths.append(EVENTS_RELPATH)
    return sorted(paths)


def simulate_regimes(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """Regime path over the whole span: (start times in epoch ms, regime indices into REGIMES).

    Switch times lie on the fine-bar grid. Each segment draws the same random numbers whatever the
    span, so a longer span extends the path without changing its beginning.
    """
    rng = np.random.default_rng([spec.seed, 0])
    fine_ms = archive.INTERVAL_MS[spec.fine]
    start, end = spec.span
    starts, regimes = [start], [0]
    t, regime = start, 0
    while True:
        hours = max(MIN_REGIME_HOURS, rng.gamma(2.0, REGIME_MEAN_HOURS[regime] / 2.0))
        nxt = int(rng.choice(len(REGIMES), p=REGIME_TRANSITIONS[regime]))
        t += max(1, round(hours * HOUR_MS / fine_ms)) * fine_ms
        if t >= end:
            break
        regime = nxt
        starts.append(t)
        regimes.append(regime)
    return np.array(starts, dtype=np.int64), np.array(regimes, dtype=np.int64)


def simulate_events(spec: SyntheticSpec, starts: np.ndarray, regimes: np.ndarray) -> pl.DataFrame:
    """Headlines: announcements of regime switches, false alarms and neutral noise."""
    rng = np.random.default_rng([spec.seed, 1])
    start, end = spec.span
    symbols = list(spec.symbols)
    rows: list[tuple[int, str, str]] = []

    def headline(category: str, u_template: float, u_symbol: float, u_scope: float) -> tuple[str, str]:
        templates = HEADLINES[category]
        symbol = MARKET_WIDE if u_scope < EVENT_MARKET_WIDE_PROB else symbols[int(u_symbol * len(symbols))]
        return symbol, templates[int(u_template * len(templates))].format(asset=asset_name(symbol))

    for switch, regime in zip(starts[1:], regimes[1:], strict=True):
        u = rng.random(7)  # fixed draws per switch keep later switches' events stable
        if u[0] >= EVENT_ANNOUNCE_PROB:
            continue
        lead_hours = EVENT_LEAD_HOURS[0] + (EVENT_LEAD_HOURS[1] - EVENT_LEAD_HOURS[0]) * u[1]
        if u[2] < EVENT_MATCH_PROB:
            category = REGIMES[regime]
        else:
            others = [r for r in REGIMES if r != REGIMES[regime]]
            category = others[int(u[3] * len(others))]
        symbol, text = headline(category, u[4], u[5], u[6])
        rows.append((int(switch) - int(lead_hours * HOUR_MS) // 1000 * 1000, symbol, text))

    days = (end - start) / DAY_MS
    for category_pool, rate in ((("neutral",), NOISE_EVENTS_PER_DAY), (REGIMES, FALSE_ALARMS_PER_DAY)):
        count = int(rng.poisson(rate * days))
        times = start + np.floor(rng.random(count) * (end - start) / 1000).astype(np.int64) * 1000
        draws = rng.random((count, 4))
        for t, u in zip(times, draws, strict=True):
            category = category_pool[int(u[0] * len(category_pool))]
            symbol, text = headline(category, u[1], u[2], u[3])
            rows.append((int(t), symbol, text))

    frame = pl.DataFrame(
        rows, schema={"timestamp": pl.Int64, "symbol": pl.String, "text": pl.String}, orient="row"
    )
    frame = frame.filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < end))
    return frame.with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))


def _seasonal_profile(hours: np.ndarray) -> np.ndarray:
    """U-shaped intraday volatility multiplier over the UTC day, normalised to mean square 1."""
    raw = 1.0 + SEASONAL_AMPLITUDE * np.cos(2.0 * np.pi * hours / 24.0)
    return raw / np.sqrt(1.0 + SEASONAL_AMPLITUDE**2 / 2.0)


_VOLUME_SEASON_NORM = float(np.mean(_seasonal_profile(np.arange(1440) / 60.0) ** 1.5))


def _student_t(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.standard_t(STUDENT_DF, size) * np.sqrt((STUDENT_DF - 2.0) / STUDENT_DF)


@dataclass
class _MarketState:
    """What one month hands to the next."""

    latent_log_price: np.ndarray  # (S,)
    close_ticks: np.ndarray  # (S,) int64
    garch: np.ndarray  # (S + 1,) variance multipliers: common factor first
    tail_log_price: np.ndarray  # (funding window + 1, S) latent log closes of the bars before the month

    @classmethod
    def initial(cls, profiles: list[SymbolProfile], window: int) -> _MarketState:
        log_price = np.log([p.price for p in profiles])
        ticks = np.array([round(p.price * 10**p.tick_decimals) for p in profiles], dtype=np.int64)
        return cls(log_price, ticks, np.ones(len(profiles) + 1), np.tile(log_price, (window + 1, 1)))


@dataclass
class MonthBars:
    """One month of one interval for all symbols, in integer units (arrays shaped (bars, S))."""

    open_ms: np.ndarray
    interval_ms: int
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # lots
    quote_volume: np.ndarray  # 10**-QUOTE_DECIMALS quote units
    count: np.ndarray
    taker_buy_volume: np.ndarray
    taker_buy_quote_volume: np.ndarray

    def aggregate(self, factor: int) -> MonthBars:
        """Bars of ``factor`` times the interval: first open, max high, min low, last close, sums."""

        def blocks(a: np.ndarray) -> np.ndarray:
            return a.reshape(a.shape[0] // factor, factor, *a.shape[1:])

        return MonthBars(
            open_ms=self.open_ms[::factor],
            interval_ms=self.interval_ms * factor,
            open=blocks(self.open)[:, 0],
            high=blocks(self.high).max(axis=1),
            low=blocks(self.low).min(axis=1),
            close=blocks(self.close)[:, -1],
            volume=blocks(self.volume).sum(axis=1),
            quote_volume=blocks(self.quote_volume).sum(axis=1),
            count=blocks(self.count).sum(axis=1),
            taker_buy_volume=blocks(self.taker_buy_volume).sum(axis=1),
            taker_buy_quote_volume=blocks(self.taker_buy_quote_volume).sum(axis=1),
        )

    def frame(self, i: int, profile: SymbolProfile) -> pl.DataFrame:
        """Symbol ``i`` as a kline frame (the columns archive.klines_to_csv expects)."""
        price, lot, quote = 10.0**profile.tick_decimals, 10.0**profile.lot_decimals, 10.0**QUOTE_DECIMALS
        open_ms = pl.Series(self.open_ms)
        # Integer / power of ten is correctly rounded, so every value prints as its exact decimal.
        return pl.DataFrame(
            {
                "open_time": open_ms.cast(pl.Datetime("ms", "UTC")),
                "open": self.open[:, i] / price,
                "high": self.high[:, i] / price,
                "low": self.low[:, i] / price,
                "close": self.close[:, i] / price,
                "volume": self.volume[:, i] / lot,
                "close_time": (open_ms + (self.interval_ms - 1)).cast(pl.Datetime("ms", "UTC")),
                "quote_volume": self.quote_volume[:, i] / quote,
                "count": self.count[:, i],
                "taker_buy_volume": self.taker_buy_volume[:, i] / lot,
                "taker_buy_quote_volume": self.taker_buy_quote_volume[:, i] / quote,
            }
        )


class SyntheticMarket:
    """The generator: regimes and events for the whole span, bars and funding month by month."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self.profiles = [symbol_profile(s) for s in spec.symbols]
        self.fine_ms = archive.INTERVAL_MS[spec.fine]
        self.regime_starts, self.regime_ids = simulate_regimes(spec)
        self.funding_window = max(1, FUNDING_EVERY_MS // self.fine_ms)
        self._state = _MarketState.initial(self.profiles, self.funding_window)
        self._next_month = 0

    def regime_at(self, times_ms: np.ndarray) -> np.ndarray:
        return self.regime_ids[np.searchsorted(self.regime_starts, times_ms, side="right") - 1]

    def events(self) -> pl.DataFrame:
        return simulate_events(self.spec, self.regime_starts, self.regime_ids)

    def next_month(self) -> tuple[str, MonthBars, pl.DataFrame | None]:
        """Simulate the next month: (month, fine bars, funding frame or None for spot)."""
        k = self._next_month
        month = self.spec.months[k]
        self._next_month += 1
        bars, latent, symbol_rngs = self._simulate_bars(k, month)
        funding = self._funding(month, latent, symbol_rngs) if self.spec.has_funding else None
        return month, bars, funding

    def _simulate_bars(self, k: int, month: str) -> tuple[MonthBars, np.ndarray, list[np.random.Generator]]:
        spec, state, fine = self.spec, self._state, self.fine_ms
        start, end = month_bounds(month)
        n = (end - start) // fine
        n_sym = len(self.profiles)
        open_ms = start + np.arange(n, dtype=np.int64) * fine
        regime = self.regime_at(open_ms)
        bars_per_day = DAY_MS / fine
        season = _seasonal_profile(((open_ms % DAY_MS) + fine / 2) / HOUR_MS)

        common_rng = np.random.default_rng([spec.seed, 2, k])
        symbol_rngs = [
            np.random.default_rng([spec.seed, 3, k, zlib.crc32(p.symbol.encode())]) for p in self.profiles
        ]
        shocks = np.column_stack([_student_t(common_rng, n)] + [_student_t(r, n) for r in symbol_rngs])

        # GARCH(1,1) variance per hour from the realised standardised hourly shock; the recursion is
        # linear in the variance given the shocks, so only the hour loop remains (720 steps a month).
        step = max(1, HOUR_MS // fine)
        hourly = shocks.reshape(n // step, step, n_sym + 1).sum(axis=1) ** 2 / step
        variance = np.empty_like(hourly)
        current = state.garch
        for j in range(hourly.shape[0]):
            variance[j] = current
            current = np.clip(GARCH_OMEGA + (GARCH_ALPHA * hourly[j] + GARCH_BETA) * current, *GARCH_BOUNDS)
        state.garch = current
        scale = np.repeat(np.sqrt(variance), step, axis=0)  # (n, S + 1)

        loading = np.array([p.loading for p in self.profiles])
        idio = np.sqrt(1.0 - loading**2)
        z = loading * scale[:, :1] * shocks[:, :1] + idio * scale[:, 1:] * shocks[:, 1:]
        garch_level = np.sqrt(loading**2 * scale[:, :1] ** 2 + idio**2 * scale[:, 1:] ** 2)
        daily_vol = np.array([p.daily_vol for p in self.profiles])
        base_sigma = daily_vol / np.sqrt(bars_per_day) * REGIME_VOL[regime][:, None]
        sigma = base_sigma * season[:, None]
        returns = REGIME_DRIFT[regime][:, None] * daily_vol / bars_per_day + sigma * z
        latent = state.latent_log_price + np.cumsum(returns, axis=0)
        state.latent_log_price = latent[-1].copy()

        tick_scale = np.array([10.0**p.tick_decimals for p in self.profiles])
        close = np.maximum(1, np.rint(np.exp(latent) * tick_scale)).astype(np.int64)
        open_ = np.vstack([state.close_ticks[None, :], close[:-1]])
        state.close_ticks = close[-1].copy()

        # High/low: the exact extremes of a Brownian bridge from open to close with the bar's sigma.
        u = np.stack([r.random((n, 2)) for r in symbol_rngs], axis=1)  # (n, S, 2)
        x = np.log(close / open_)
        bar_sigma = sigma * garch_level
        spread_high = np.sqrt(x**2 - 2.0 * bar_sigma**2 * np.log1p(-u[:, :, 0]))
        spread_low = np.sqrt(x**2 - 2.0 * bar_sigma**2 * np.log1p(-u[:, :, 1]))
        high = np.ceil(open_ * np.exp((x + spread_high) / 2.0)).astype(np.int64)
        low = np.floor(open_ * np.exp((x - spread_low) / 2.0)).astype(np.int64)
        high = np.maximum(high, np.maximum(open_, close))
        low = np.maximum(1, np.minimum(low, np.minimum(open_, close)))

        # Activity: volume follows volatility (regime, GARCH level, shock size) and the U-shaped day.
        noise = np.stack([r.standard_normal((n, 2)) for r in symbol_rngs], axis=1)
        volume_season = season**1.5 / _VOLUME_SEASON_NORM
        activity = (
            REGIME_VOL[regime][:, None]
            * garch_level
            * (0.5 + 0.5 * np.abs(z))
            * np.exp(0.35 * noise[:, :, 0])
        )
        fine_minutes = fine / 60_000
        notional = np.array([p.notional_per_minute for p in self.profiles]) * fine_minutes
        notional = notional * volume_season[:, None] * activity
        lot_scale = np.array([10.0**p.lot_decimals for p in self.profiles])
        close_price = close / tick_scale
        volume = np.maximum(1, np.rint(notional / close_price * lot_scale)).astype(np.int64)
        typical = (high + low + close) / 3.0 / tick_scale
        quote_volume = np.rint(volume / lot_scale * typical * 10**QUOTE_DECIMALS).astype(np.int64)
        trades = notional / np.array([p.trade_notional for p in self.profiles])
        count = np.maximum(1, np.column_stack([r.poisson(trades[:, i]) for i, r in enumerate(symbol_rngs)]))
        taker_share = np.clip(0.5 + 0.12 * np.tanh(z) + 0.04 * noise[:, :, 1], 0.05, 0.95)
        taker_volume = np.rint(volume * taker_share).astype(np.int64)
        taker_quote = np.rint(quote_volume * (taker_volume / volume)).astype(np.int64)

        bars = MonthBars(
            open_ms=open_ms,
            interval_ms=fine,
            open=open_,
            high=high,
            low=low,
            close=close,
            volume=volume,
            quote_volume=quote_volume,
            count=count.astype(np.int64),
            taker_buy_volume=taker_volume,
            taker_buy_quote_volume=taker_quote,
        )
        return bars, latent, symbol_rngs  # funding noise continues each symbol's stream

    def _funding(
        self, month: str, latent: np.ndarray, symbol_rngs: list[np.random.Generator]
    ) -> pl.DataFrame:
        """Funding at 00/08/16 UTC: a base rate plus the last 8 hours' drift plus noise."""
        state, window = self._state, self.funding_window
        start, end = month_bounds(month)
        times = np.arange(start, end, FUNDING_EVERY_MS, dtype=np.int64)
        history = np.vstack([state.tail_log_price, latent])
        # Row of the bar that closes at each funding time (the tail's last row closes at ``start``).
        last = window + (times - start) // self.fine_ms
        drift = history[last] - history[last - window]
        noise = np.column_stack([r.standard_normal(len(times)) for r in symbol_rngs])
        rate = np.clip(0.0001 + 0.01 * drift + 0.00003 * noise, -0.003, 0.003)
        state.tail_log_price = history[-(window + 1) :].copy()
        rate_units = np.rint(rate * 10**FUNDING_DECIMALS).astype(np.int64)
        return pl.DataFrame(
            {
                "calc_time": pl.Series(np.tile(times, len(self.profiles))).cast(pl.Datetime("ms", "UTC")),
                "funding_interval_hours": np.full(len(times) * len(self.profiles), 8, dtype=np.int64),
                "last_funding_rate": rate_units.T.reshape(-1) / 10**FUNDING_DECIMALS,
                "symbol": np.repeat([p.symbol for p in self.profiles], len(times)),
            }
        )


def generate(config: dict, raw_root: str | Path) -> None:
    """Write the synthetic market under ``raw_root`` (files listed by :func:`synthetic_relpaths`)."""
    spec = SyntheticSpec.from_config(config)
    raw_root = Path(raw_root)
    market = SyntheticMarket(spec)
    factor = archive.INTERVAL_MS[spec.bar] // archive.INTERVAL_MS[spec.fine]
    with progress_bar(len(spec.months), "acquire: synthetic", "month") as bar:
        for _ in spec.months:
            month, fine_bars, funding = market.next_month()
            by_interval = {spec.fine: fine_bars}
            if spec.bar != spec.fine:
                by_interval[spec.bar] = fine_bars.aggregate(factor)
            for i, profile in enumerate(market.profiles):
                for interval, bars in by_interval.items():
                    csv = archive.klines_to_csv(bars.frame(i, profile), header=False)
                    archive.write_archive(
                        raw_root / archive.kline_relpath(spec.market, profile.symbol, interval, month), csv
                    )
                if funding is not None:
                    rows = funding.filter(pl.col("symbol") == profile.symbol).drop("symbol")
                    archive.write_archive(
                        raw_root / archive.funding_relpath(spec.market, profile.symbol, month),
                        archive.funding_to_csv(rows),
                    )
            log.info("synthetic: %s written for %d symbol(s)", month, len(market.profiles))
            bar.update()
    events = market.events() if spec.text_events else None
    write_events(raw_root / EVENTS_RELPATH, events if events is not None else empty_events())
    log.info("synthetic: %d text events", 0 if events is None else events.height)

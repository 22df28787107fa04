"""Observation building: scaled features, forecast summaries and a text-news context, per symbol.

Everything fitted here (forecast standardisation, the text projection) is fitted on the training
fold's train rows only and stored in an :class:`ObservationSpec`, which travels inside the policy
file so that evaluation and export rebuild exactly the observations the policy was trained on.

The text context of bar t is an exponentially decayed mean of the embeddings of the events at or
before t (the symbol's own and the market-wide ``*`` ones). Because a mean of embeddings projected
by a centred linear map equals the projection of the mean, each event embedding is projected first
(PCA fitted by SVD on the events up to the end of the train split) and the decayed mean is taken in
the small space: no look-ahead and no [rows x 384] matrix.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy.signal import lfilter

from trainrelay.data.scaling import transform
from trainrelay.errors import ConfigError, DataError
from trainrelay.policy.inputs import PolicyInputs

log = logging.getLogger(__name__)

# Observations are clipped here: scaled features beyond 10 standard deviations carry no extra
# information for the policy and would only destabilise PPO's value function.
OBS_CLIP = 10.0
# Unrealised PnL enters the observation in percent so that it lives on the same scale as the rest.
UPNL_SCALE = 100.0
FORECAST_INPUTS = ["fc_return", "fc_vol", "fc_return_1", "fc_sharpe"]
STATE_NAMES = ["position", "unrealised_pnl"]
# Floor of a window's return std in the trend statistic: a window of identical prices has no trend.
_TREND_STD_FLOOR = 1e-8


@dataclass
class ObservationSpec:
    """The fitted, JSON-serialisable recipe of an observation vector."""

    fold: int
    features: list[str]
    forecasts: bool
    text: bool
    forecast_mean: dict[str, float] = field(default_factory=dict)
    forecast_std: dict[str, float] = field(default_factory=dict)
    text_dim: int = 0
    text_half_life_bars: float = 32.0
    text_mean: list[float] = field(default_factory=list)
    text_components: list[list[float]] = field(default_factory=list)
    trend_windows: list[int] = field(default_factory=list)
    trend_mean: dict[str, float] = field(default_factory=dict)
    trend_std: dict[str, float] = field(default_factory=dict)

    def trend_names(self) -> list[str]:
        return [f"trend_{w}" for w in self.trend_windows]

    def market_names(self) -> list[str]:
        names = list(self.features) + self.trend_names()
        if self.forecasts:
            names += [*FORECAST_INPUTS, "fc_valid"]
        if self.text:
            names += [f"text_pc{i}" for i in range(self.text_dim)] + ["text_intensity"]
        return names

    def names(self) -> list[str]:
        return self.market_names() + STATE_NAMES

    @property
    def obs_dim(self) -> int:
        return len(self.names())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObservationSpec:
        return cls(**data)


@dataclass
class SymbolSeries:
    """One symbol's bars as arrays; row i is the bar that closes at ``timestamp[i]``."""

    symbol: str
    timestamp: np.ndarray  # int64 epoch ms
    market_obs: np.ndarray  # float32 [n, len(spec.market_names())]
    log_return: np.ndarray  # float64, log close_i / close_{i-1}
    funding: np.ndarray  # float64, funding rate settled at bar i's close (0 between funding times)
    fc_return: np.ndarray  # float64, unscaled expected log return over the horizon
    fc_valid: np.ndarray  # bool


def split_ranges(segments: pl.DataFrame, fold: int, split: str) -> list[tuple[int, int]]:
    """Inclusive (start, end) epoch-ms ranges of the episodes of one fold/split, in time order."""
    rows = segments.filter((pl.col("fold") == fold) & (pl.col("split") == split)).sort("start")
    if rows.is_empty():
        raise DataError(f"segments metadata has no '{split}' rows for fold {fold}; check segments.folds")
    starts = rows["start"].dt.epoch("ms").to_list()
    ends = rows["end"].dt.epoch("ms").to_list()
    return list(zip(starts, ends, strict=True))


def _mask_in_ranges(ts: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(ts.shape, dtype=bool)
    for start, end in ranges:
        mask |= (ts >= start) & (ts <= end)
    return mask


def _epoch_ms(series: pl.Series) -> np.ndarray:
    return series.dt.epoch("ms").to_numpy().astype(np.int64)


def _text_events(text: pl.DataFrame | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(timestamps ms, symbols, embeddings [m, D] float64) of all text events."""
    if text is None or text.is_empty():
        return np.zeros(0, np.int64), np.zeros(0, dtype=object), np.zeros((0, 0))
    emb = np.asarray(text["embedding"].to_numpy(), dtype=np.float64)
    if emb.ndim != 2 or not np.isfinite(emb).all():
        raise DataError(
            "text_embeddings.parquet: embeddings must be finite fixed-size vectors; rerun embeddings"
        )
    return _epoch_ms(text["timestamp"]), text["symbol"].to_numpy(), emb


def _select_features(available: list[str], wanted: list[str] | None) -> list[str]:
    if wanted is None:
        return available
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise ConfigError(
            f"policy.observation.features: {', '.join(unknown)} not in scaler.json's features "
            f"({', '.join(available)}); pick from those or set null for all"
        )
    return list(wanted)


def trend_frame(frame: pl.DataFrame, windows: list[int]) -> pl.DataFrame:
    """``trend_<w>``: the t-statistic of the mean log return over the last ``w`` bars, per symbol.

    sum(r) / (std(r) * sqrt(n)) over the window ending at the bar (causal). Regime drift in the
    synthetic market is a few bp per bar against ~30 bp of noise, so a trend only shows over tens
    to hundreds of bars; scaling by the window's own volatility keeps the calm and turbulent
    regimes comparable. Rows with fewer than ``w`` bars of history use what there is (>= 2 bars).
    """
    r = pl.col("log_return")
    row = pl.int_range(pl.len()).over("symbol")  # the frame is sorted by (symbol, timestamp)
    exprs = []
    for w in windows:
        total = r.rolling_sum(w, min_samples=1).over("symbol")
        std = r.rolling_std(w, min_samples=2).over("symbol").fill_null(0.0)
        count = (row.clip(0, w - 1) + 1).cast(pl.Float64)
        stat = total / (pl.max_horizontal(std, pl.lit(_TREND_STD_FLOOR)) * count.sqrt())
        # a symbol's first bar has no spread to measure a trend against
        exprs.append(pl.when(row > 0).then(stat).otherwise(0.0).alias(f"trend_{w}"))
    return frame.select(exprs) if exprs else pl.DataFrame()


def fit_spec(inputs: PolicyInputs, fold: int, observation: dict, text_cfg: dict) -> ObservationSpec:
    """Fit the observation recipe on fold ``fold``'s train rows only.

    ``observation``: ``forecasts``/``text`` flags, optional ``features`` (a subset of the scaler's
    features; None or absent: all) and ``trend_windows`` (default none).
    """
    features = list(inputs.scaler.get("features", []))
    if not features:
        raise DataError("scaler.json lists no features; rerun the segments stage")
    if str(fold) not in inputs.scaler.get("folds", {}):
        raise ConfigError(
            f"fold {fold} is not a fold in scaler.json; train the policy on folds below segments.folds"
        )
    spec = ObservationSpec(
        fold=fold,
        features=_select_features(features, observation.get("features")),
        forecasts=bool(observation["forecasts"]),
        text=bool(observation["text"]),
        text_dim=int(text_cfg["dim"]) if observation["text"] else 0,
        text_half_life_bars=float(text_cfg["half_life_bars"]),
        trend_windows=[int(w) for w in observation.get("trend_windows") or []],
    )
    train_ranges = split_ranges(inputs.segments, fold, "train")
    frame = inputs.frame
    in_train = _mask_in_ranges(_epoch_ms(frame["timestamp"]), train_ranges)
    train = frame.filter(in_train)
    if spec.trend_windows:
        trends = trend_frame(frame, spec.trend_windows).filter(in_train)
        for name in spec.trend_names():
            spec.trend_mean[name] = float(trends[name].mean())
            std = float(trends[name].std(ddof=0) or 0.0)
            spec.trend_std[name] = std if std > 0 else 1.0
    if spec.forecasts:
        fc = _forecast_frame(train).filter(pl.col("fc_valid"))
        if fc.is_empty():
            raise DataError(
                "forecast_features.parquet: no valid forecast on the train rows; check precompute"
            )
        for name in FORECAST_INPUTS:
            spec.forecast_mean[name] = float(fc[name].mean())
            std = float(fc[name].std() or 0.0)
            spec.forecast_std[name] = std if std > 0 else 1.0
    if spec.text:
        ev_ts, _, emb = _text_events(inputs.text)
        train_end = max(end for _, end in train_ranges)
        fit_rows = emb[ev_ts <= train_end] if emb.size else emb
        dim_in = emb.shape[1] if emb.ndim == 2 and emb.size else 0
        spec.text_mean = fit_rows.mean(axis=0).tolist() if len(fit_rows) else [0.0] * dim_in
        components = np.zeros((spec.text_dim, dim_in))
        if len(fit_rows) >= 2:
            _, _, vt = np.linalg.svd(fit_rows - fit_rows.mean(axis=0), full_matrices=False)
            take = min(spec.text_dim, vt.shape[0])
            components[:take] = vt[:take]
        else:
            log.warning(
                "fewer than 2 text events before the end of the train split: text context is all zeros"
            )
        spec.text_components = components.tolist()
    return spec


def _forecast_frame(frame: pl.DataFrame) -> pl.DataFrame:
    # fc_sharpe: the forecast's return per unit of forecast volatility, the natural sizing signal.
    return frame.with_columns((pl.col("fc_return") / (pl.col("fc_vol") + 1e-8)).alias("fc_sharpe"))


def _text_context(
    bar_ts: np.ndarray, ev_ts: np.ndarray, ev_proj: np.ndarray, half_life: float
) -> tuple[np.ndarray, np.ndarray]:
    """Decayed mean of projected events known at each bar ([n, k]) and the decayed event count ([n])."""
    n, k = len(bar_ts), ev_proj.shape[1]
    # an event at time e is known from the first bar that closes at or after e
    idx = np.searchsorted(bar_ts, ev_ts, side="left")
    keep = idx < n
    idx, ev_proj = idx[keep], ev_proj[keep]
    sums = np.zeros((n, k))
    np.add.at(sums, idx, ev_proj)
    counts = np.bincount(idx, minlength=n).astype(np.float64)
    decay = 0.5 ** (1.0 / half_life)
    sums = lfilter([1.0], [1.0, -decay], sums, axis=0)
    weight = lfilter([1.0], [1.0, -decay], counts)
    mean = np.divide(sums, weight[:, None], out=np.zeros_like(sums), where=weight[:, None] > 1e-12)
    return mean, weight


def build_series(
    inputs: PolicyInputs, spec: ObservationSpec, funding_every_hours: float | None
) -> list[SymbolSeries]:
    """Per-symbol arrays of the market part of the observation plus what the reward needs."""
    frame = inputs.frame
    scaled = transform(frame, inputs.scaler, spec.fold)
    parts = [scaled.select(spec.features)]
    if spec.trend_windows:
        trends = trend_frame(frame, spec.trend_windows)
        parts.append(
            trends.select([(pl.col(n) - spec.trend_mean[n]) / spec.trend_std[n] for n in spec.trend_names()])
        )
    if spec.forecasts:
        fc = _forecast_frame(frame)
        parts.append(
            fc.select(
                [
                    ((pl.col(n) - spec.forecast_mean[n]) / spec.forecast_std[n])
                    * pl.col("fc_valid").cast(pl.Float64)
                    for n in FORECAST_INPUTS
                ]
                + [pl.col("fc_valid").cast(pl.Float64)]
            )
        )
    market = pl.concat(parts, how="horizontal").to_numpy().astype(np.float64)

    ts_all = _epoch_ms(frame["timestamp"])
    symbols = frame["symbol"].to_numpy()
    has_funding = "funding_rate" in frame.columns and funding_every_hours
    funding_all = frame["funding_rate"].to_numpy() if has_funding else np.zeros(frame.height)
    if has_funding:
        period = round(funding_every_hours * 3_600_000)
        funding_all = np.where(ts_all % period == 0, funding_all, 0.0)

    ev_ts, ev_sym, emb = _text_events(inputs.text) if spec.text else (None, None, None)
    if spec.text and emb.size:
        ev_proj = (emb - np.asarray(spec.text_mean)) @ np.asarray(spec.text_components).T
    out = []
    for symbol in dict.fromkeys(symbols.tolist()):
        rows = np.flatnonzero(symbols == symbol)
        ts = ts_all[rows]
        block = market[rows]
        funding = np.asarray(funding_all[rows], dtype=np.float64)
        # Holding across a gap in the bars earns nothing (segments set that row's return to 0) and
        # pays no funding either: nobody is charged or credited for time nobody could trade.
        steps = np.diff(ts)
        if steps.size:
            funding[1:][steps > steps.min()] = 0.0
        if spec.text:
            if emb.size:
                own = (ev_sym == symbol) | (ev_sym == "*")
                ctx, weight = _text_context(ts, ev_ts[own], ev_proj[own], spec.text_half_life_bars)
            else:
                ctx, weight = np.zeros((len(rows), spec.text_dim)), np.zeros(len(rows))
            block = np.hstack([block, ctx, np.log1p(weight)[:, None]])
        out.append(
            SymbolSeries(
                symbol=str(symbol),
                timestamp=ts,
                market_obs=np.clip(block, -OBS_CLIP, OBS_CLIP).astype(np.float32),
                log_return=frame["log_return"].to_numpy()[rows].astype(np.float64),
                funding=funding,
                fc_return=frame["fc_return"].to_numpy()[rows].astype(np.float64),
                fc_valid=frame["fc_valid"].to_numpy()[rows].astype(bool),
            )
        )
    return out


def episode_index_ranges(
    series: list[SymbolSeries], ranges: list[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """(series index, first row, last row) of every episode range in every symbol with >= 2 bars."""
    out = []
    for s_idx, s in enumerate(series):
        for start, end in ranges:
            lo = int(np.searchsorted(s.timestamp, start, side="left"))
            hi = int(np.searchsorted(s.timestamp, end, side="right")) - 1
            if hi - lo >= 1:
                out.append((s_idx, lo, hi))
    return out

"""Workflow inputs of the forecaster: per-symbol scaled channel series and a fold's split rows.

Reads the segments stage's files (docs/artifacts.md): ``features.parquet`` (long, sorted by
symbol and timestamp, unscaled), ``scaler.json`` (per-fold train-only statistics) and
``segments_metadata.parquet`` (fold / split / episode time ranges). Each symbol is its own set of
series; channel independence then makes every (symbol, channel) one univariate sequence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainrelay.data.scaling import transform
from trainrelay.errors import ConfigError, DataError
from trainrelay.forecast.windows import WindowSet, forecast_windows

MARKET_CHANNELS = ("log_return", "realized_vol")


def read_scaler(path: str | Path) -> dict[str, Any]:
    try:
        scaler = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the scaler ({exc}); rerun the segments rule") from exc
    if not isinstance(scaler, dict) or "features" not in scaler or "folds" not in scaler:
        raise DataError(f"{path}: not a scaler.json (needs 'features' and 'folds'); rerun the segments rule")
    return scaler


def resolve_channels(config: dict[str, Any], scaler: dict[str, Any]) -> list[str]:
    """``forecaster.channels``, or by default every value column of series data and
    log_return + realized_vol of market data. Every channel must be a scaled feature."""
    channels = config["forecaster"].get("channels")
    if channels is None:
        channels = list(scaler["features"]) if config.get("source") == "files" else list(MARKET_CHANNELS)
    missing = [c for c in channels if c not in scaler["features"]]
    if missing:
        raise ConfigError(
            f"forecaster.channels: {', '.join(missing)} not among the features "
            f"({', '.join(scaler['features'])}); choose from those"
        )
    return list(channels)


@dataclass
class ScaledSeries:
    """One symbol's forecaster input channels over time, scaled with one fold's train statistics."""

    symbol: str
    timestamps: np.ndarray  # datetime64[ms]
    values: np.ndarray  # [rows, channels] float32, scaled with the fold's train statistics


def scaled_series(
    features: pl.DataFrame, scaler: dict[str, Any], fold: int, channels: list[str]
) -> list[ScaledSeries]:
    """Per symbol (in sorted order), the channels scaled with fold ``fold``'s scaler."""
    missing = [c for c in ("timestamp", "symbol", *channels) if c not in features.columns]
    if missing:
        raise DataError(f"features.parquet lacks column(s) {', '.join(missing)}; rerun the segments rule")
    scaled = transform(features, scaler, fold)
    out = []
    for (symbol,), part in scaled.sort("symbol", "timestamp").group_by("symbol", maintain_order=True):
        values = part.select(channels).to_numpy().astype(np.float32)
        if not np.isfinite(values).all():
            raise DataError(f"features.parquet: non-finite values in {symbol}; rerun the segments rule")
        stamps = part["timestamp"].dt.replace_time_zone(None).to_numpy().astype("datetime64[ms]")
        out.append(ScaledSeries(symbol=str(symbol), timestamps=stamps, values=values))
    if not out:
        raise DataError("features.parquet has no rows; rerun the segments rule")
    return out


def split_bounds(
    segments: pl.DataFrame, fold: int, test_span: str = "fold"
) -> dict[str, tuple[np.datetime64, np.datetime64]]:
    """Inclusive (start, end) bar close times of train / val / test of ``fold``.

    ``test_span: all_folds`` stretches test from the fold's test start to the end of the last
    fold's test block: a forecaster trained before the first test block has seen none of those
    bars, so every policy test block scores it, not only the first month.
    """
    part = segments.filter(pl.col("fold") == fold)
    if part.is_empty():
        have = sorted(set(segments["fold"].to_list()))
        raise ConfigError(f"forecaster.fold {fold} is not in segments_metadata.parquet (folds {have})")
    bounds = {}
    for split in ("train", "val", "test"):
        rows = part.filter(pl.col("split") == split)
        if rows.is_empty():
            raise DataError(f"segments_metadata.parquet: fold {fold} has no {split} split; rerun segments")
        start = rows["start"].min().replace(tzinfo=None)
        end = rows["end"].max().replace(tzinfo=None)
        bounds[split] = (np.datetime64(start, "ms"), np.datetime64(end, "ms"))
    if test_span == "all_folds":
        later = segments.filter((pl.col("fold") >= fold) & (pl.col("split") == "test"))
        bounds["test"] = (bounds["test"][0], np.datetime64(later["end"].max().replace(tzinfo=None), "ms"))
    elif test_span != "fold":
        raise ConfigError(f"forecaster.test_span '{test_span}' must be fold or all_folds")
    return bounds


def fold_windows(
    series: list[ScaledSeries],
    bounds: dict[str, tuple[np.datetime64, np.datetime64]],
    lookback: int,
    horizon: int,
) -> dict[str, WindowSet]:
    """Windows of each split: targets inside the split's time range, never across symbols."""
    out = {}
    for split, (start, end) in bounds.items():
        ranges = [
            (
                int(np.searchsorted(s.timestamps, start, "left")),
                int(np.searchsorted(s.timestamps, end, "right")),
            )
            for s in series
        ]
        out[split] = forecast_windows([s.values for s in series], ranges, lookback, horizon)
    return out


def load_fold(
    features_path: str | Path,
    scaler_path: str | Path,
    segments_path: str | Path,
    config: dict[str, Any],
) -> tuple[list[ScaledSeries], dict[str, WindowSet], list[str], dict[str, Any]]:
    """Scaled series, train/val/test windows, channel names and the scaler of ``forecaster.fold``."""
    fc = config["forecaster"]
    scaler = read_scaler(scaler_path)
    channels = resolve_channels(config, scaler)
    try:
        features = pl.read_parquet(features_path)
        segments = pl.read_parquet(segments_path)
    except Exception as exc:  # polars raises several types for a missing or damaged file
        raise DataError(
            f"cannot read {features_path} / {segments_path} ({exc}); rerun the segments rule"
        ) from exc
    series = scaled_series(features, scaler, fc["fold"], channels)
    bounds = split_bounds(segments, fc["fold"], fc.get("test_span", "fold"))
    windows = fold_windows(series, bounds, fc["lookback"], fc["horizon"])
    return series, windows, channels, scaler

"""The ``precompute`` stage: forecast features for every bar, from data up to that bar only.

For each row of ``features.parquet`` the trained forecaster sees the ``lookback`` rows of the same
symbol ending at that row (a strided window over the past, nothing later) and predicts
``horizon`` bars. Outputs, unscaled with the checkpoint's train-only statistics:

- ``fc_return``: expected sum of log returns over the horizon;
- ``fc_return_1``: expected log return of the next bar;
- ``fc_vol``: expected volatility over the horizon, sqrt of the summed squared per-bar realised
  volatility forecasts (each clipped at 0), so >= 0;
- ``fc_valid``: false for the first ``lookback - 1`` rows of a symbol (too little history),
  where every ``fc_*`` is 0.0.

Inference runs in batches on the configured device (GPU when present).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trainrelay.atomic import write_parquet
from trainrelay.core.devices import resolve_device
from trainrelay.errors import ConfigError, DataError
from trainrelay.forecast.checkpoint import load_checkpoint
from trainrelay.forecast.windows import trailing_windows

log = logging.getLogger(__name__)

OUTPUT_SCHEMA = {
    "timestamp": pl.Datetime("ms", "UTC"),
    "symbol": pl.String,
    "fc_return": pl.Float64,
    "fc_vol": pl.Float64,
    "fc_return_1": pl.Float64,
    "fc_valid": pl.Boolean,
}


def forecast_columns(
    forecasts: np.ndarray, return_index: int, vol_index: int, scaling: tuple[np.ndarray, np.ndarray]
) -> dict[str, np.ndarray]:
    """fc_return, fc_return_1 and fc_vol from scaled forecasts ``[n, horizon, C]``."""
    mean, std = scaling
    unscaled = forecasts.astype(np.float64) * std + mean
    returns = unscaled[:, :, return_index]
    vol = np.clip(unscaled[:, :, vol_index], 0.0, None)
    return {
        "fc_return": returns.sum(axis=1),
        "fc_return_1": returns[:, 0],
        "fc_vol": np.sqrt((vol**2).sum(axis=1)),
    }


def precompute_forecasts(
    checkpoint_path: str | Path,
    features_path: str | Path,
    out_path: str | Path,
    config: dict[str, Any],
) -> pl.DataFrame:
    """Write ``forecast_features.parquet`` (one row per features row) and return it."""
    fc = config["forecaster"]
    forecaster, meta = load_checkpoint(checkpoint_path)
    channels, lookback = meta["channels"], meta["lookback"]
    for key in ("return_channel", "vol_channel"):
        if fc[key] not in channels:
            raise ConfigError(
                f"forecaster.{key} '{fc[key]}' is not a forecaster channel ({', '.join(channels)}); "
                "add it to forecaster.channels and retrain"
            )
    ri, vi = channels.index(fc["return_channel"]), channels.index(fc["vol_channel"])
    mean = np.array([meta["scaling"]["mean"][c] for c in channels])
    std = np.array([meta["scaling"]["std"][c] for c in channels])
    device = resolve_device(config["device"])
    forecaster.module.to(device)
    try:
        features = pl.read_parquet(features_path, columns=["timestamp", "symbol", *channels])
    except Exception as exc:
        raise DataError(
            f"cannot read {channels} from {features_path} ({exc}); rerun the segments rule"
        ) from exc

    parts = []
    for (symbol,), part in features.group_by("symbol", maintain_order=True):
        part = part.sort("timestamp")
        values = ((part.select(channels).to_numpy() - mean) / std).astype(np.float32)
        rows = len(values)
        cols = {k: np.zeros(rows) for k in ("fc_return", "fc_return_1", "fc_vol")}
        valid = np.zeros(rows, dtype=bool)
        windows = trailing_windows(values, lookback)
        if len(windows):
            # window k ends at row k + lookback - 1: the forecast made at that bar's close
            predicted = forecaster.predict(windows, batch_size=fc["inference_batch_size"]).numpy()
            for key, column in forecast_columns(predicted, ri, vi, (mean, std)).items():
                cols[key][lookback - 1 :] = column
            valid[lookback - 1 :] = True
        parts.append(
            pl.DataFrame(
                {"timestamp": part["timestamp"], "symbol": part["symbol"], **cols, "fc_valid": valid}
            ).cast(OUTPUT_SCHEMA)
        )
        log.info("precompute %s: %d rows, %d forecasts on %s", symbol, rows, int(valid.sum()), device)
    out = pl.concat(parts).select(list(OUTPUT_SCHEMA)).sort("symbol", "timestamp")
    if not np.isfinite(out.select("fc_return", "fc_vol", "fc_return_1").to_numpy()).all():
        raise DataError(f"{checkpoint_path}: forecasts are not finite; retrain the forecaster")
    write_parquet(out_path, out)
    return out

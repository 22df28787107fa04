"""Per-channel forecast metrics: MSE for every channel, QLIKE for volatility, direction for returns.

- **MSE** on scaled values (the fold's train statistics), as the overall ``val_mse`` / ``test_mse``,
  so channels with different units are comparable and a channel's MSE of ~1 is "no better than
  the train mean".
- **QLIKE** (Patton 2011, "Volatility forecast comparison using imperfect volatility proxies"):
  ``mean(y/f - log(y/f) - 1)`` on *variances* in the unscaled space (``y`` = realised vol², ``f`` =
  forecast vol²). It is 0 for a perfect forecast and, unlike MSE, stays consistent for ranking
  forecasts when the proxy is noisy; it punishes under-prediction of variance more than
  over-prediction. A vol forecast (and a zero realised vol, a bar without a price move) is clipped
  at ``QLIKE_FLOOR`` x the channel's train mean before squaring: the loss needs positive values,
  and a scale-relative floor keeps it unit-free.
- **Directional accuracy**: the share of (window, horizon step) pairs where
  ``sign(forecast) == sign(actual)``, over pairs whose actual return is not zero (a flat bar has no
  direction to get right). Computed on unscaled returns; an actual within float32 rounding of the
  unscaling (``ZERO_RETURN_TOL`` x the channel's train std) counts as zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QLIKE_FLOOR = 1e-3  # x the vol channel's train mean, in vol units (so 1e-6 x mean² in variance)
ZERO_RETURN_TOL = 1e-6  # x the return channel's train std


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    err = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return float(np.mean(err * err))


def qlike(vol_forecast: np.ndarray, vol_actual: np.ndarray, floor: float) -> float:
    """Patton's QLIKE on variances from unscaled vol forecasts and realised vols (both floored)."""
    if floor <= 0:
        raise ValueError(f"the QLIKE floor must be positive, got {floor}")
    f = np.maximum(np.asarray(vol_forecast, dtype=np.float64), floor) ** 2
    y = np.maximum(np.asarray(vol_actual, dtype=np.float64), floor) ** 2
    ratio = y / f
    return float(np.mean(ratio - np.log(ratio) - 1.0))


def directional_accuracy(forecast: np.ndarray, actual: np.ndarray, zero_tol: float = 0.0) -> float | None:
    """Share of non-zero actuals whose sign the forecast matches; None when every actual is zero."""
    forecast = np.asarray(forecast, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    moved = np.abs(actual) > zero_tol
    if not moved.any():
        return None
    return float(np.mean(np.sign(forecast[moved]) == np.sign(actual[moved])))


def unscale(values: np.ndarray, channel: str, scaling: dict[str, dict[str, float]]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) * scaling["std"][channel] + scaling["mean"][channel]


def channel_scores(
    pred: np.ndarray,
    target: np.ndarray,
    channel: str,
    scaling: dict[str, dict[str, float]],
    *,
    vol_channel: str | None,
    return_channel: str | None,
) -> dict[str, float | None]:
    """Metrics of one channel's scaled forecasts ``pred`` vs ``target`` (any matching shape)."""
    out: dict[str, float | None] = {"mse": mse(pred, target)}
    if channel == vol_channel:
        floor = QLIKE_FLOOR * abs(scaling["mean"][channel])
        out["qlike"] = qlike(unscale(pred, channel, scaling), unscale(target, channel, scaling), floor)
    if channel == return_channel:
        tol = ZERO_RETURN_TOL * scaling["std"][channel]
        out["direction_accuracy"] = directional_accuracy(
            unscale(pred, channel, scaling), unscale(target, channel, scaling), tol
        )
    return out


def per_channel(
    pred: np.ndarray,
    target: np.ndarray,
    channels: list[str],
    scaling: dict[str, dict[str, float]],
    *,
    vol_channel: str | None,
    return_channel: str | None,
) -> dict[str, dict[str, float | None]]:
    """``{channel: metrics}`` for forecasts ``[n, horizon, C]`` of every channel."""
    return {
        c: channel_scores(
            pred[..., i], target[..., i], c, scaling, vol_channel=vol_channel, return_channel=return_channel
        )
        for i, c in enumerate(channels)
    }


def notes() -> dict[str, Any]:
    """How the metrics are defined, recorded next to them in metrics/forecaster.json."""
    return {
        "mse": "mean squared error on values scaled with the fold's train mean/std",
        "qlike": (
            "Patton (2011) QLIKE = mean(y/f - log(y/f) - 1) on unscaled variances (vol squared); "
            f"forecast and realised vol clipped at {QLIKE_FLOOR:g} x the channel's train mean"
        ),
        "direction_accuracy": (
            "share of horizon steps with sign(forecast) == sign(actual) on unscaled returns, "
            f"actual == 0 (within {ZERO_RETURN_TOL:g} x train std) excluded"
        ),
    }

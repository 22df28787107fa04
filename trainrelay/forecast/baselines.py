"""The standard baselines that are not torch forecasters: HAR-RV for volatility, zero for returns.

**HAR-RV** (Corsi 2009, "A simple approximate long-memory model of realized volatility"): future
realised volatility regressed on the averages of past RV over a day, a week and a month,
``RV[t+h] = b0 + bd RV_d + bw RV_w + bm RV_m``, fitted by OLS on the train windows.

- *Bars, not days.* Our RV is per bar, so each average is over the last ``days x bars_per_day``
  bars, ``bars_per_day`` from ``intervals.bar``. The default windows are 1, 7 and 30 days
  (``forecaster.har.days``): crypto trades around the clock every day, so a week of bars is 7
  calendar days and a month 30 — Corsi's 5 and 22 count *trading* days of an exchange that closes
  at weekends, which would make the "weekly" average cover less than a week here.
- *Its own history, not the lookback.* HAR-RV is published with its month of history, and a
  baseline cut to the neural models' lookback would be a weaker HAR than the one a reader knows. So
  each average is over the bars of the same series that end at the window's last input bar —
  data known at forecast time, never a bar after it and never another symbol's. A window with less
  history than a window length (the first month of a series) averages the bars it has;
  ``fit_info`` says so. The neural models' lookback is their own design choice, which the HAR
  comparison therefore judges instead of hiding.
- *Direct, one regression per horizon step.* ``RV[t+h]`` for each ``h = 1..H`` has its own
  coefficients (one ``lstsq`` with ``H`` right-hand sides), the usual way HAR forecasts several
  steps ahead without forecasting the weekly and monthly averages themselves.
- *Scaled space.* OLS with an intercept is equivariant to the affine scaling applied to the channel
  (regressors and target share it), so fitting on scaled values gives the same forecasts as on
  raw RV, and its MSE is directly comparable with the torch models'.

**Zero forecast** for returns: the martingale benchmark, ``r[t+h] = 0`` in unscaled units (its
scaled value is ``-mean / std``). It has no sign, so its directional accuracy is unavailable
(reported as null with the reason), not 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainrelay.data.archive import INTERVAL_MS
from trainrelay.errors import ConfigError, DataError
from trainrelay.forecast.windows import WindowSet

DEFAULT_DAYS = (1, 7, 30)
ZERO_NO_DIRECTION = "the zero forecast has no sign, so it has no direction to be right or wrong about"


def bars_per_day(interval: str) -> float:
    """Bars in 24 hours at bar interval ``interval`` (``15m`` -> 96)."""
    if interval not in INTERVAL_MS:
        raise ConfigError(f"intervals.bar '{interval}' is not one of {', '.join(INTERVAL_MS)}")
    return INTERVAL_MS["1d"] / INTERVAL_MS[interval]


def channel_windows(windows: WindowSet, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``[n, lookback]`` and targets ``[n, horizon]`` of one channel of every window."""
    series = windows.data[:, channel].cpu().numpy().astype(np.float64)
    rows = windows.starts.cpu().numpy()[:, None] + np.arange(windows.lookback + windows.horizon)
    values = series[rows] if len(rows) else np.zeros((0, windows.lookback + windows.horizon))
    return values[:, : windows.lookback], values[:, windows.lookback :]


def har_windows(days: tuple[float, ...], per_day: float) -> list[int]:
    """The averaging windows in bars, ascending; days that round to the same bars count once
    (a duplicate column would make the regression singular)."""
    return sorted({max(1, round(d * per_day)) for d in days})


def history_means(windows: WindowSet, channel: int, widths: list[int]) -> np.ndarray:
    """``[n, len(widths)]``: per window, the mean of ``channel`` over the last ``w`` bars of its
    series that end at the window's last input bar (fewer at the series' start)."""
    values = windows.data[:, channel].cpu().numpy().astype(np.float64)
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    last = windows.starts.cpu().numpy() + windows.lookback - 1  # the last input row of each window
    if windows.series_starts is None:
        raise ValueError("history_means needs WindowSet.series_starts (build windows with forecast_windows)")
    firsts = windows.series_starts.cpu().numpy()
    first = firsts[np.searchsorted(firsts, last, side="right") - 1]  # first row of the window's series
    out = np.empty((len(last), len(widths)))
    for j, w in enumerate(widths):
        lo = np.maximum(first, last - w + 1)
        out[:, j] = (cumsum[last + 1] - cumsum[lo]) / (last + 1 - lo)
    return out


def har_design(means: np.ndarray) -> np.ndarray:
    """``[n, 1 + k]``: an intercept beside the ``k`` history means."""
    return np.concatenate([np.ones((len(means), 1)), means], axis=1)


@dataclass
class HARRV:
    """HAR-RV fitted by OLS on one channel's train windows (see the module docstring)."""

    windows: list[int]  # averaging windows in bars, ascending
    coef: np.ndarray | None = None  # [1 + len(windows), horizon]
    short_history: dict[str, float] = field(default_factory=dict)  # split -> share of windows

    @classmethod
    def from_config(cls, days: tuple[float, ...], interval: str) -> HARRV:
        return cls(windows=har_windows(tuple(days), bars_per_day(interval)))

    def design(self, windows: WindowSet, channel: int, split: str = "") -> np.ndarray:
        """The regressors of every window; records the share with less history than the longest
        average (their means are over the bars there are)."""
        if split and len(windows):
            last = windows.starts.cpu().numpy() + windows.lookback - 1
            firsts = windows.series_starts.cpu().numpy() if windows.series_starts is not None else [0]
            first = np.asarray(firsts)[np.searchsorted(firsts, last, side="right") - 1]
            self.short_history[split] = float(np.mean(last - first + 1 < self.windows[-1]))
        return har_design(history_means(windows, channel, self.windows))

    def fit(self, design: np.ndarray, y: np.ndarray) -> HARRV:
        """OLS of every horizon step of ``y [n, H]`` on the regressors ``design [n, 1 + k]``."""
        if len(design) <= design.shape[1]:
            raise DataError(f"HAR-RV: {len(design)} train windows cannot fit {design.shape[1]} coefficients")
        self.coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        return self

    def predict(self, design: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("HARRV.predict before fit")
        return design @ self.coef

    def fit_info(self, interval: str, days: tuple[float, ...]) -> dict[str, Any]:
        assert self.coef is not None
        names = ["intercept", *[f"mean_{w}_bars" for w in self.windows]]
        return {
            "bar_interval": interval,
            "bars_per_day": bars_per_day(interval),
            "days": list(days),
            "windows_bars": list(self.windows),
            "history": "each average ends at the window's last input bar, over its own series",
            # windows whose series began less than the longest average before them
            "short_history_share": dict(self.short_history),
            "fit": "OLS on the train windows (scaled values), one regression per horizon step",
            # step 1's coefficients: the one-step-ahead HAR most papers report
            "coefficients_step1": dict(zip(names, (float(v) for v in self.coef[:, 0]), strict=True)),
        }


def zero_forecast(n: int, horizon: int, channel: str, scaling: dict[str, dict[str, float]]) -> np.ndarray:
    """Scaled values of a zero (unscaled) forecast, ``[n, horizon]``."""
    value = -scaling["mean"][channel] / scaling["std"][channel]
    return np.full((n, horizon), value, dtype=np.float64)

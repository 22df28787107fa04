"""The standard baselines that are not torch forecasters: HAR-RV for volatility, zero for returns.

**HAR-RV** (Corsi 2009, "A simple approximate long-memory model of realized volatility"): future
realised volatility regressed on the averages of past RV over a day, a week and a month,
``RV[t+h] = b0 + bd RV_d + bw RV_w + bm RV_m``, fitted by OLS on the train windows.

- *Bars, not days.* Our RV is per bar, so each average is over the last ``days x bars_per_day``
  bars, ``bars_per_day`` from ``intervals.bar``. The default windows are 1, 7 and 30 days
  (``forecaster.har.days``): crypto trades around the clock every day, so a week of bars is 7
  calendar days and a month 30 — Corsi's 5 and 22 count *trading* days of an exchange that closes
  at weekends, which would make the "weekly" average cover less than a week here.
- *Only the lookback.* A window gives every model the same ``lookback`` bars, and HAR gets no
  more: an average longer than the lookback is cut to the lookback, and averages that end up the
  same length are merged (a duplicate column would make the regression singular). ``fit_info``
  lists the requested and used windows and says which were cut — with the demo's one-day
  lookback HAR is the regression on the daily mean alone.
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


def har_windows(days: tuple[float, ...], per_day: float, lookback: int) -> tuple[list[int], list[str]]:
    """The averaging windows in bars actually used, and a note per window cut to the lookback."""
    used: list[int] = []
    notes = []
    for d in days:
        want = max(1, round(d * per_day))
        have = min(want, lookback)
        note = f"{d:g}-day window ({want} bars)"
        if have < want:
            note += f" cut to the lookback ({lookback} bars)"
        if have in used:
            notes.append(f"{note}: the same bars as a shorter window, merged with it")
        else:
            used.append(have)
            if have < want:
                notes.append(note)
    return sorted(used), notes


def har_design(x: np.ndarray, windows: list[int]) -> np.ndarray:
    """``[n, 1 + len(windows)]``: an intercept and the mean of each window's last bars."""
    cols = [np.ones(len(x))] + [x[:, -w:].mean(axis=1) for w in windows]
    return np.stack(cols, axis=1)


@dataclass
class HARRV:
    """HAR-RV fitted by OLS on one channel's train windows (see the module docstring)."""

    windows: list[int]  # averaging windows in bars, ascending
    notes: list[str] = field(default_factory=list)
    coef: np.ndarray | None = None  # [1 + len(windows), horizon]

    @classmethod
    def from_config(cls, days: tuple[float, ...], interval: str, lookback: int) -> HARRV:
        used, notes = har_windows(tuple(days), bars_per_day(interval), lookback)
        return cls(windows=used, notes=notes)

    def fit(self, x: np.ndarray, y: np.ndarray) -> HARRV:
        """OLS of every horizon step of ``y [n, H]`` on the averages of ``x [n, L]``."""
        design = har_design(x, self.windows)
        if len(design) <= design.shape[1]:
            raise DataError(f"HAR-RV: {len(design)} train windows cannot fit {design.shape[1]} coefficients")
        self.coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("HARRV.predict before fit")
        return har_design(x, self.windows) @ self.coef

    def fit_info(self, interval: str, days: tuple[float, ...]) -> dict[str, Any]:
        assert self.coef is not None
        names = ["intercept", *[f"mean_{w}_bars" for w in self.windows]]
        return {
            "bar_interval": interval,
            "bars_per_day": bars_per_day(interval),
            "days": list(days),
            "windows_bars": list(self.windows),
            "notes": list(self.notes),
            "fit": "OLS on the train windows (scaled values), one regression per horizon step",
            # step 1's coefficients: the one-step-ahead HAR most papers report
            "coefficients_step1": dict(zip(names, (float(v) for v in self.coef[:, 0]), strict=True)),
        }


def zero_forecast(n: int, horizon: int, channel: str, scaling: dict[str, dict[str, float]]) -> np.ndarray:
    """Scaled values of a zero (unscaled) forecast, ``[n, horizon]``."""
    value = -scaling["mean"][channel] / scaling["std"][channel]
    return np.full((n, horizon), value, dtype=np.float64)

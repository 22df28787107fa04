"""HAR-RV, the zero forecast and the per-channel metrics (QLIKE, directional accuracy) against
hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainrelay.errors import ConfigError
from trainrelay.forecast import metrics as fm
from trainrelay.forecast.baselines import (
    HARRV,
    bars_per_day,
    channel_windows,
    har_design,
    har_windows,
    history_means,
    zero_forecast,
)
from trainrelay.forecast.windows import forecast_windows


def test_qlike_of_a_perfect_forecast_is_zero_and_matches_the_formula() -> None:
    y = np.array([0.01, 0.02, 0.03])
    assert fm.qlike(y, y, floor=1e-9) == pytest.approx(0.0, abs=1e-15)
    f = np.array([0.02, 0.02, 0.01])
    ratio = y**2 / f**2  # on variances: vol squared
    assert fm.qlike(f, y, floor=1e-9) == pytest.approx(np.mean(ratio - np.log(ratio) - 1))
    # by hand, first pair: (1/4) - log(1/4) - 1 = 0.6363; under-prediction costs more than over
    assert fm.qlike(f[:1], y[:1], floor=1e-9) == pytest.approx(0.25 + math.log(4) - 1)
    assert fm.qlike(y[:1] / 2, y[:1], 1e-9) > fm.qlike(y[:1] * 2, y[:1], 1e-9)


def test_qlike_clips_non_positive_vols_at_the_floor() -> None:
    # a negative vol forecast is floored at 0.001, a zero realised vol too: finite, not nan/inf
    value = fm.qlike(np.array([-0.5, 0.01]), np.array([0.0, 0.01]), floor=0.001)
    assert math.isfinite(value) and value == pytest.approx(0.0)
    with pytest.raises(ValueError, match="floor"):
        fm.qlike(np.ones(2), np.ones(2), floor=0.0)


def test_directional_accuracy_excludes_flat_actuals() -> None:
    forecast = np.array([0.1, -0.2, 0.3, 0.4, -0.1])
    actual = np.array([0.2, 0.1, 0.0, 0.5, -0.3])  # signs right: 1st, 4th, 5th; 3rd is flat
    assert fm.directional_accuracy(forecast, actual) == pytest.approx(3 / 4)
    assert fm.directional_accuracy(forecast, np.zeros(5)) is None


def test_channel_scores_unscale_before_qlike_and_direction() -> None:
    scaling = {"mean": {"rv": 0.02, "r": 0.001}, "std": {"rv": 0.01, "r": 0.01}}
    target = np.array([[1.0, -1.0]])  # rv 0.03, 0.01
    scores = fm.channel_scores(target, target, "rv", scaling, vol_channel="rv", return_channel="r")
    assert scores == {"mse": 0.0, "qlike": pytest.approx(0.0, abs=1e-12)}
    # scaled 0 is the train mean 0.001 > 0 (up), scaled -1 is -0.009 (down)
    pred, actual = np.array([[0.0, 0.0]]), np.array([[1.0, -1.0]])
    scores = fm.channel_scores(pred, actual, "r", scaling, vol_channel="rv", return_channel="r")
    assert scores["direction_accuracy"] == 0.5 and scores["mse"] == 1.0 and "qlike" not in scores


def test_bars_per_day_and_window_cuts() -> None:
    assert bars_per_day("15m") == 96 and bars_per_day("1h") == 24
    with pytest.raises(ConfigError, match=r"intervals\.bar"):
        bars_per_day("7m")
    assert har_windows((1, 7, 30), 24) == [24, 168, 720]
    assert har_windows((1, 7, 30), 96) == [96, 672, 2880]  # 15m bars: the month is not cut
    assert har_windows((1, 1.01, 7), 24) == [24, 168]  # the same bars count once


def test_history_means_end_at_the_last_input_bar_and_stay_in_their_series() -> None:
    a = np.arange(10, dtype=np.float32)[:, None]  # values 0..9
    b = 100 + np.arange(6, dtype=np.float32)[:, None]  # 100..105
    windows = forecast_windows([a, b], [(0, 10), (0, 6)], lookback=2, horizon=1)
    means = history_means(windows, 0, [1, 3])
    # series a: windows start at rows 0..7, last input bars 1..8; b: starts 0..3, last bars 1..4
    last_a, last_b = np.arange(1, 9), np.arange(1, 5)
    want_a = [[t, np.mean(np.arange(max(0, t - 2), t + 1))] for t in last_a]
    want_b = [[100 + t, 100 + np.mean(np.arange(max(0, t - 2), t + 1))] for t in last_b]
    # b's first means never reach into a
    np.testing.assert_allclose(means, np.array(want_a + want_b, dtype=float))


def test_har_design_is_an_intercept_and_the_means() -> None:
    design = har_design(np.array([[5.0, 4.0], [11.0, 10.0]]))
    assert design.tolist() == [[1.0, 5.0, 4.0], [1.0, 11.0, 10.0]]


def _har_process(n: int, coef: tuple[float, float, float, float], seed: int = 0) -> np.ndarray:
    """RV[t] = b0 + bd RV[t-1] + bw mean(RV[t-5..t-1]) + bm mean(RV[t-22..t-1]) + noise (daily bars)."""
    rng = np.random.default_rng(seed)
    b0, bd, bw, bm = coef
    rv = np.full(n, b0 / (1 - bd - bw - bm))
    for t in range(22, n):
        rv[t] = b0 + bd * rv[t - 1] + bw * rv[t - 5 : t].mean() + bm * rv[t - 22 : t].mean()
        rv[t] += 0.05 * rv[t] * rng.standard_normal()
    return rv


def test_har_recovers_the_coefficients_of_a_har_process() -> None:
    coef = (0.1, 0.4, 0.3, 0.2)  # Corsi's daily / weekly / monthly pattern, persistent
    rv = _har_process(6000, coef)
    series = rv[:, None].astype(np.float32)
    # a lookback of 2 bars: HAR still gets its 22 days, from the series' own history
    windows = forecast_windows([series], [(0, len(rv))], lookback=2, horizon=2)
    # daily bars: 1 bar per day, Corsi's 1 / 5 / 22 trading days
    har = HARRV.from_config((1, 5, 22), "1d")
    assert har.windows == [1, 5, 22]
    design = har.design(windows, 0, "train")
    _, y = channel_windows(windows, 0)
    har.fit(design, y)
    assert har.coef is not None and har.coef.shape == (4, 2)  # one regression per horizon step
    assert har.coef[:, 0] == pytest.approx(coef, abs=0.06)
    # the fitted one-step forecast beats the last value on the same windows
    assert np.mean((har.predict(design)[:, 0] - y[:, 0]) ** 2) < np.mean((design[:, 1] - y[:, 0]) ** 2)
    info = har.fit_info("1d", (1, 5, 22))
    assert info["windows_bars"] == [1, 5, 22] and set(info["coefficients_step1"]) == {
        "intercept", "mean_1_bars", "mean_5_bars", "mean_22_bars"
    }  # fmt: skip
    # the first 21 windows (last input bars 1..21) have less than 22 bars of history
    assert info["short_history_share"]["train"] == pytest.approx(20 / len(windows))


def test_har_forecasts_do_not_depend_on_the_scaling() -> None:
    """OLS with an intercept is equivariant to the affine scaling shared by regressors and target."""
    rv = _har_process(800, (0.1, 0.4, 0.3, 0.2), seed=1)
    raw = forecast_windows([rv[:, None]], [(0, len(rv))], 22, 3)
    scaled = forecast_windows([((rv - 1.3) / 0.4)[:, None]], [(0, len(rv))], 22, 3)
    a = HARRV.from_config((1, 5, 22), "1d")
    b = HARRV.from_config((1, 5, 22), "1d")
    da, db = a.design(raw, 0), b.design(scaled, 0)
    pa = a.fit(da, channel_windows(raw, 0)[1]).predict(da)
    pb = b.fit(db, channel_windows(scaled, 0)[1]).predict(db)
    assert pb * 0.4 + 1.3 == pytest.approx(pa, rel=1e-4, abs=1e-5)


def test_channel_windows_match_the_window_batches() -> None:
    data = np.random.default_rng(2).standard_normal((50, 3)).astype(np.float32)
    windows = forecast_windows([data[:30], data[30:]], [(0, 30), (0, 20)], 8, 4)
    x, y = channel_windows(windows, 1)
    bx, by = windows.batch(torch.arange(len(windows)))
    assert np.array_equal(x, bx[..., 1].numpy()) and np.array_equal(y, by[..., 1].numpy())


def test_zero_forecast_is_zero_in_unscaled_units() -> None:
    scaling = {"mean": {"r": 0.002}, "std": {"r": 0.01}}
    pred = zero_forecast(3, 4, "r", scaling)
    assert pred.shape == (3, 4) and fm.unscale(pred, "r", scaling) == pytest.approx(np.zeros((3, 4)))

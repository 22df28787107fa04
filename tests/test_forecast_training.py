"""Windows, schedules, evaluation and the training loop on small synthetic series."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainrelay.errors import ConfigError, DataError
from trainrelay.forecast.base import Forecaster
from trainrelay.forecast.protocol import ett_windows
from trainrelay.forecast.training import TrainSettings, _make_optimizer, _make_scheduler, evaluate
from trainrelay.forecast.windows import forecast_windows, trailing_windows

torch.set_num_threads(1)


def test_split_windows_follow_the_ett_protocol_counts() -> None:
    values = np.random.default_rng(0).standard_normal((14400, 7))
    sets, mean, std = ett_windows(values, per_hour=1, lookback=336, horizon=96)
    # rows - L - T + 1 per split, where val/test start L rows before their border
    assert len(sets["train"]) == 8640 - 336 - 96 + 1
    assert len(sets["val"]) == (11520 - 8640 + 336) - 336 - 96 + 1
    assert len(sets["test"]) == 2880 + 336 - 96 - 336 + 1
    np.testing.assert_allclose(mean, values[:8640].mean(axis=0))  # train rows only
    np.testing.assert_allclose(std, values[:8640].std(axis=0))
    _x, y = sets["test"].batch(torch.tensor([len(sets["test"]) - 1]))
    scaled_last = (values[14400 - 96 :] - mean) / std
    np.testing.assert_allclose(
        y[0].numpy(), scaled_last, rtol=1e-5, atol=1e-5
    )  # the last test window ends at 14400
    _first_val_x, first_val_y = sets["val"].batch(torch.tensor([0]))
    np.testing.assert_allclose(first_val_y[0, 0].numpy(), (values[8640] - mean) / std, rtol=1e-5, atol=1e-5)


def test_windows_never_cross_series() -> None:
    a = np.zeros((20, 1))
    b = np.ones((20, 1))
    ws = forecast_windows([a, b], [(0, 20), (0, 20)], lookback=5, horizon=3)
    assert len(ws) == 2 * (20 - 5 - 3 + 1)
    x, y = ws.batch(torch.arange(len(ws)))
    window_sums = torch.cat([x, y], dim=1).sum(dim=(1, 2))
    assert set(window_sums.tolist()) == {0.0, 8.0}  # all zeros or all ones, never mixed


def test_trailing_windows_end_at_each_row() -> None:
    values = np.arange(10, dtype=np.float32).reshape(10, 1)
    w = trailing_windows(values, 4)
    assert w.shape == (7, 4, 1)
    assert w[0, :, 0].tolist() == [0, 1, 2, 3] and w[-1, :, 0].tolist() == [6, 7, 8, 9]
    assert trailing_windows(values[:3], 4).shape == (0, 4, 1)


def _lrs(settings: TrainSettings, epochs: int, steps: int = 1) -> list[float]:
    opt = _make_optimizer(torch.nn.Linear(1, 1), settings)
    sched = _make_scheduler(opt, settings, steps)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        for _ in range(steps):
            opt.step()
            if settings.schedule == "onecycle":
                sched.step()
        if settings.schedule != "onecycle":
            sched.step()
    return out


def test_schedules() -> None:
    assert _lrs(TrainSettings(lr=1.0, schedule="constant"), 3) == [1.0, 1.0, 1.0]
    assert _lrs(TrainSettings(lr=1.0, schedule="type1"), 4) == [1.0, 1.0, 0.5, 0.25]
    assert _lrs(TrainSettings(lr=1.0, schedule="type3", hold_epochs=2), 5) == pytest.approx(
        [1, 1, 0.9, 0.81, 0.729]
    )
    cycle = _lrs(TrainSettings(lr=1.0, schedule="onecycle", epochs=10, pct_start=0.4), 10, steps=5)
    assert max(cycle) == pytest.approx(cycle[4], rel=0.05) and cycle[0] < 0.1 and cycle[-1] < 0.1


def test_settings_from_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"forecaster\.train\.schedule"):
        TrainSettings.from_config({"schedule": "cosine"}, "forecaster.train")
    with pytest.raises(ConfigError, match="unknown key"):
        TrainSettings.from_config({"epochz": 3}, "forecaster.train")


def test_evaluate_scores_the_naive_model_by_hand() -> None:
    values = np.random.default_rng(1).standard_normal((60, 2))
    ws = forecast_windows([values], [(0, 60)], lookback=10, horizon=4)
    naive = Forecaster("naive", 10, 4, 2, {})
    got = evaluate(naive.module, ws, torch.device("cpu"), batch_size=7)
    errs = []
    for s in range(60 - 14 + 1):
        errs.append(values[s + 10 : s + 14] - values[s + 9])
    errs = np.stack(errs)
    assert got["mse"] == pytest.approx(float((errs**2).mean()), rel=1e-5)
    assert got["mae"] == pytest.approx(float(np.abs(errs).mean()), rel=1e-5)
    with pytest.raises(DataError, match="no evaluation windows"):
        evaluate(naive.module, forecast_windows([values[:5]], [(0, 5)], 10, 4), torch.device("cpu"))


@pytest.mark.parametrize("name", ["patchtst", "dlinear"])
def test_training_learns_a_seasonal_series_and_keeps_the_best_epoch(name: str) -> None:
    t = np.arange(1500)
    rng = np.random.default_rng(0)
    values = np.stack(
        [np.sin(2 * np.pi * t / 24), np.cos(2 * np.pi * t / 12)], 1
    ) + 0.1 * rng.standard_normal((1500, 2))
    train = forecast_windows([values], [(0, 1000)], 48, 12)
    val = forecast_windows([values], [(1000, 1500)], 48, 12)
    hp = {"patch_len": 8, "stride": 4, "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "dropout": 0.0}
    model = Forecaster(name, 48, 12, 2, hp if name == "patchtst" else {"kernel_size": 5}, seed=0)
    settings = TrainSettings(epochs=4, batch_size=32, lr=3e-3, schedule="constant", patience=4)
    fit = model.fit(train, val, settings, device=torch.device("cpu"), seed=0, progress=False)
    naive = evaluate(Forecaster("naive", 48, 12, 2, {}).module, val, torch.device("cpu"))["mse"]
    got = model.score(val, torch.device("cpu"))["mse"]
    assert got < 0.25 * naive  # a periodic signal is easy; the last value is not
    assert got == pytest.approx(min(h["val_loss"] for h in fit.history), rel=1e-6)  # best weights reloaded
    assert fit.history[fit.best_epoch - 1]["val_loss"] == pytest.approx(fit.best_val_mse)
    assert [h["epoch"] for h in fit.history] == [1, 2, 3, 4]


def test_early_stopping_stops_after_patience() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((400, 1))  # pure noise: val stops improving quickly
    train = forecast_windows([values], [(0, 300)], 16, 4)
    val = forecast_windows([values], [(300, 400)], 16, 4)
    model = Forecaster("dlinear", 16, 4, 1, {"kernel_size": 3}, seed=0)
    settings = TrainSettings(epochs=50, batch_size=16, lr=0.05, schedule="constant", patience=2)
    fit = model.fit(train, val, settings, device=torch.device("cpu"), seed=0, progress=False)
    assert fit.epochs_run < 50 and fit.epochs_run == fit.best_epoch + 2

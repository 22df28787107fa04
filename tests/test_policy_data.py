"""Observation building for the policy, plus the tiny synthetic inputs every policy test uses.

``write_inputs`` writes features/scaler/segments/forecasts/text files in the formats of
docs/artifacts.md. Its forecast is deliberately informative (a noisy copy of the next bar's
return): a TEST fixture that gives PPO something learnable in seconds, not a forecaster result.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from trainrelay.atomic import write_json, write_parquet
from trainrelay.errors import ConfigError, DataError
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.observations import (
    STATE_NAMES,
    build_series,
    episode_index_ranges,
    fit_spec,
    split_ranges,
    trend_frame,
)

START = datetime(2024, 1, 1, 0, 15, tzinfo=UTC)
BAR = timedelta(minutes=15)
SYMBOLS = ["AAAUSDT", "BBBUSDT"]
FEATURES = ["log_return", "realized_vol", "funding_rate", "momentum"]
N_BARS = 640
EMB_DIM = 16
# (fold, split, first row, last row); fold k's test follows fold k-1's, train expands.
SPLITS = [
    (0, "train", 0, 383),
    (0, "val", 392, 447),
    (0, "test", 456, 543),
    (1, "train", 0, 471),
    (1, "val", 480, 535),
    (1, "test", 544, 639),
]
EPISODE_BARS = 64


def _timestamps(n: int) -> list[datetime]:
    return [START + i * BAR for i in range(n)]


def write_inputs(root: Path, seed: int = 0, n_events: int = 40) -> dict[str, Path]:
    """Write the five policy inputs under ``root``; returns the paths dict train/evaluate take."""
    rng = np.random.default_rng(seed)
    ts = _timestamps(N_BARS)
    frames, forecasts = [], []
    for s_idx, symbol in enumerate(SYMBOLS):
        # a trending, regime-switching return with a predictable component
        drift = np.repeat(rng.choice([-1.0, 1.0], size=N_BARS // 32), 32) * 0.0015
        ret = drift + rng.normal(0, 0.002, N_BARS)
        ret[0] = 0.0
        close = 100.0 * (1 + s_idx) * np.exp(np.cumsum(ret))
        funding = np.repeat(rng.normal(1e-4, 5e-5, N_BARS // 32 + 1), 32)[:N_BARS]
        frames.append(
            pl.DataFrame(
                {
                    "timestamp": ts,
                    "symbol": [symbol] * N_BARS,
                    "close": close,
                    "log_return": ret,
                    "realized_vol": np.abs(ret) + 0.001,
                    "funding_rate": funding,
                    "momentum": np.convolve(ret, np.ones(8), "full")[:N_BARS],
                }
            )
        )
        next_ret = np.append(ret[1:], 0.0)
        fc = 0.5 * next_ret + 0.5 * drift + rng.normal(0, 0.0005, N_BARS)
        valid = np.arange(N_BARS) >= 8
        forecasts.append(
            pl.DataFrame(
                {
                    "timestamp": ts,
                    "symbol": [symbol] * N_BARS,
                    "fc_return": np.where(valid, fc * 4, 0.0),
                    "fc_vol": np.where(valid, 0.004, 0.0),
                    "fc_return_1": np.where(valid, fc, 0.0),
                    "fc_valid": valid,
                }
            )
        )
    features = (
        pl.concat(frames)
        .with_columns(pl.col("timestamp").dt.cast_time_unit("ms"))
        .sort(["symbol", "timestamp"])
    )
    forecast = pl.concat(forecasts).with_columns(pl.col("timestamp").dt.cast_time_unit("ms"))

    folds = {}
    for fold, split, lo, hi in SPLITS:
        if split != "train":
            continue
        rows = features.filter(pl.col("timestamp").is_between(ts[lo], ts[hi]))
        folds[str(fold)] = {
            "mean": {c: float(rows[c].mean()) for c in FEATURES},
            "std": {c: float(rows[c].std(ddof=0)) for c in FEATURES},
        }
    scaler = {"features": FEATURES, "folds": folds, "fitted_on": "train"}

    meta = []
    for fold, split, lo, hi in SPLITS:
        for episode, first in enumerate(range(lo, hi + 1, EPISODE_BARS)):
            last = min(first + EPISODE_BARS - 1, hi)
            meta.append((fold, split, episode, ts[first], ts[last], last - first + 1))
    metadata = pl.DataFrame(
        meta, schema=["fold", "split", "episode", "start", "end", "rows"], orient="row"
    ).with_columns(
        pl.col("fold").cast(pl.Int32),
        pl.col("episode").cast(pl.Int32),
        pl.col("start").dt.cast_time_unit("ms"),
        pl.col("end").dt.cast_time_unit("ms"),
    )

    ev_rows = sorted(int(i) for i in rng.choice(N_BARS, size=n_events, replace=False))
    text = pl.DataFrame(
        {
            "timestamp": [ts[i] - timedelta(minutes=7) for i in ev_rows],
            "symbol": [rng.choice([*SYMBOLS, "*"]) for _ in ev_rows],
            "text": [f"headline {i}" for i in ev_rows],
            "embedding": rng.normal(size=(len(ev_rows), EMB_DIM)).astype(np.float32),
        },
        schema_overrides={"embedding": pl.Array(pl.Float32, EMB_DIM)},
    ).with_columns(pl.col("timestamp").dt.cast_time_unit("ms"))

    paths = {k: root / f"{k}.parquet" for k in ("features", "segments", "forecasts", "text")}
    paths["scaler"] = root / "scaler.json"
    write_parquet(paths["features"], features)
    write_parquet(paths["segments"], metadata)
    write_parquet(paths["forecasts"], forecast)
    write_parquet(paths["text"], text)
    write_json(paths["scaler"], scaler)
    return paths


def policy_config(**ppo: object) -> dict:
    """A small valid config (the shape of config/config.yaml's policy/checkpoint/tracking sections)."""
    ppo_cfg = {
        "total_timesteps": 2048,
        "n_envs": 2,
        "vec_env": "array",
        "n_steps": 128,
        "batch_size": 64,
        "n_epochs": 2,
        "learning_rate": 3e-4,
        "gamma": 0.9,
        "gae_lambda": 0.9,
        "clip_range": 0.2,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "log_std_init": -0.5,
        "net_arch": [32, 32],
    }
    ppo_cfg.update(ppo)
    return {
        "run": "policytest",
        "seed": 3,
        "device": "cpu",
        "policy": {
            "device": "cpu",
            "observation": {"forecasts": True, "text": True, "features": None, "trend_windows": []},
            "ablations": [],
            "ablation_folds": "all",
            "text": {"dim": 4, "half_life_bars": 8},
            "trading_cost": 0.0004,
            "funding_every_hours": 8,
            "reward_scale": 100.0,
            "turnover_penalty": 0.0,
            "ppo": ppo_cfg,
        },
        "checkpoint": {"every_minutes": 30, "time_budget_minutes": None, "keep": 3, "state_dir": None},
        "tracking": {"backend": "none", "project": "trainrelay"},
    }


@pytest.fixture
def inputs(tmp_path):
    paths = write_inputs(tmp_path)
    return load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"]
    )


def test_observation_layout_and_scaling(inputs):
    cfg = policy_config()["policy"]
    spec = fit_spec(inputs, 0, {"forecasts": True, "text": True}, cfg["text"])
    names = spec.names()
    assert names[:4] == FEATURES
    assert names[-2:] == STATE_NAMES
    assert [n for n in names if n.startswith("text_pc")] == [f"text_pc{i}" for i in range(4)]
    series = build_series(inputs, spec, 8)
    assert [s.symbol for s in series] == SYMBOLS
    assert series[0].market_obs.shape == (N_BARS, spec.obs_dim - 2)
    # features scaled with fold 0's train stats: the train rows have mean 0 / std 1 (pooled)
    train = np.concatenate([s.market_obs[:384, :4] for s in series])
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-4)
    # forecast summaries are standardised on valid train rows and zero where fc_valid is false
    fc_valid_col = names.index("fc_valid")
    assert series[0].market_obs[:8, fc_valid_col].tolist() == [0.0] * 8
    assert (series[0].market_obs[:8, 4:8] == 0).all()


def test_funding_charged_only_at_funding_times(inputs):
    spec = fit_spec(inputs, 0, {"forecasts": False, "text": False}, {"dim": 2, "half_life_bars": 8})
    s = build_series(inputs, spec, 8)[0]
    at_funding = (s.timestamp % (8 * 3_600_000)) == 0
    raw = inputs.frame.filter(pl.col("symbol") == SYMBOLS[0])["funding_rate"].to_numpy()
    np.testing.assert_array_equal(s.funding[at_funding], raw[at_funding])
    assert (s.funding[~at_funding] == 0).all()
    assert at_funding.sum() == N_BARS // 32  # every 8 h of 15-minute bars
    assert build_series(inputs, spec, None)[0].funding.max() == 0.0


def test_no_funding_is_charged_across_a_gap(inputs):
    """A funding time that closes the first bar after missing bars is not charged: the position was
    held across time nobody could trade."""
    spec = fit_spec(inputs, 0, {"forecasts": False, "text": False}, {"dim": 2, "half_life_bars": 8})
    whole = build_series(inputs, spec, 8)[0]
    funding_rows = np.flatnonzero((whole.timestamp % (8 * 3_600_000)) == 0)
    hole = int(funding_rows[len(funding_rows) // 2])  # drop the two bars before a funding time
    dropped = whole.timestamp[[hole - 2, hole - 1]]
    frame = inputs.frame.filter(~pl.col("timestamp").dt.epoch("ms").is_in(dropped.tolist()))
    gapped = build_series(dataclasses.replace(inputs, frame=frame), spec, 8)[0]
    at = int(np.searchsorted(gapped.timestamp, whole.timestamp[hole]))
    assert whole.funding[hole] != 0.0 and gapped.funding[at] == 0.0
    others = np.flatnonzero((gapped.timestamp % (8 * 3_600_000)) == 0)
    assert (gapped.funding[others[others != at]] != 0).all()


def test_text_context_has_no_look_ahead(tmp_path):
    """Changing or adding events after bar t leaves every observation at or before t unchanged."""
    paths = write_inputs(tmp_path / "a")
    a = load_inputs(paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"])
    spec = fit_spec(a, 0, {"forecasts": True, "text": True}, {"dim": 4, "half_life_bars": 8})
    cut = START + 500 * BAR
    text_b = a.text.with_columns(
        pl.when(pl.col("timestamp") > cut)
        .then(pl.col("embedding") * 3.0)
        .otherwise(pl.col("embedding"))
        .alias("embedding")
    )
    b = load_inputs(paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"])
    b.text = text_b
    obs_a, obs_b = build_series(a, spec, 8)[0], build_series(b, spec, 8)[0]
    upto = obs_a.timestamp <= int(cut.timestamp() * 1000)
    np.testing.assert_array_equal(obs_a.market_obs[upto], obs_b.market_obs[upto])
    assert not np.array_equal(obs_a.market_obs[~upto], obs_b.market_obs[~upto])


def test_text_projection_is_fitted_on_train_period_events_only(tmp_path):
    paths = write_inputs(tmp_path)
    a = load_inputs(paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"])
    spec_a = fit_spec(a, 0, {"forecasts": False, "text": True}, {"dim": 3, "half_life_bars": 8})
    train_end = max(end for _, end in split_ranges(a.segments, 0, "train"))
    later = pl.col("timestamp").dt.epoch("ms") > train_end
    a.text = a.text.with_columns(
        pl.when(later).then(pl.col("embedding") * 10.0).otherwise(pl.col("embedding")).alias("embedding")
    )
    spec_b = fit_spec(a, 0, {"forecasts": False, "text": True}, {"dim": 3, "half_life_bars": 8})
    assert spec_a.text_components == spec_b.text_components
    assert spec_a.text_mean == spec_b.text_mean
    comps = np.asarray(spec_a.text_components)
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-6)  # orthonormal PCA axes


def test_text_context_is_decayed_mean_of_known_events(inputs):
    spec = fit_spec(inputs, 0, {"forecasts": False, "text": True}, {"dim": 4, "half_life_bars": 8})
    s = build_series(inputs, spec, 8)[0]
    ev = inputs.text.filter(pl.col("symbol").is_in([SYMBOLS[0], "*"]))
    ev_ts = ev["timestamp"].dt.epoch("ms").to_numpy()
    proj = (np.asarray(ev["embedding"].to_numpy(), np.float64) - spec.text_mean) @ np.asarray(
        spec.text_components
    ).T
    t = 300
    known = ev_ts <= s.timestamp[t]
    bars_ago = np.array([t - np.searchsorted(s.timestamp, e) for e in ev_ts[known]])
    w = 0.5 ** (bars_ago / 8.0)
    expected = (w[:, None] * proj[known]).sum(axis=0) / w.sum()
    np.testing.assert_allclose(s.market_obs[t, 4:8], np.clip(expected, -10, 10), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.market_obs[t, 8], np.log1p(w.sum()), rtol=1e-5)


def test_episodes_come_from_the_train_split(inputs):
    spec = fit_spec(inputs, 0, {"forecasts": True, "text": False}, {"dim": 2, "half_life_bars": 8})
    series = build_series(inputs, spec, 8)
    episodes = episode_index_ranges(series, split_ranges(inputs.segments, 0, "train"))
    assert len(episodes) == len(SYMBOLS) * 6
    assert all(hi <= 383 and hi - lo == EPISODE_BARS - 1 for _, lo, hi in episodes)


def test_missing_forecast_rows_is_a_data_error(tmp_path):
    paths = write_inputs(tmp_path)
    fc = pl.read_parquet(paths["forecasts"]).head(100)
    write_parquet(paths["forecasts"], fc)
    with pytest.raises(DataError, match="no forecast row"):
        load_inputs(paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"])
    with pytest.raises(DataError, match="not found"):
        load_inputs(tmp_path / "nope.parquet", paths["scaler"], paths["segments"], paths["forecasts"], None)
    assert json.loads(paths["scaler"].read_text())["fitted_on"] == "train"


def test_trend_statistic_values_and_no_look_ahead(inputs):
    w = 16
    trends = trend_frame(inputs.frame, [w])
    frame = inputs.frame.with_columns(trends)
    a = frame.filter(pl.col("symbol") == SYMBOLS[0])
    r = a["log_return"].to_numpy()
    t = 200
    window = r[t - w + 1 : t + 1]
    expected = window.sum() / (window.std(ddof=1) * np.sqrt(w))
    assert a["trend_16"][t] == pytest.approx(expected, rel=1e-9)
    # the first bars use the history there is; the very first has no spread: 0
    assert a["trend_16"][0] == 0.0
    head = r[:5]
    assert a["trend_16"][4] == pytest.approx(head.sum() / (head.std(ddof=1) * np.sqrt(5)), rel=1e-9)
    # each symbol's windows stay inside that symbol
    b = frame.filter(pl.col("symbol") == SYMBOLS[1])
    assert b["trend_16"][0] == 0.0
    # changing the returns after bar t leaves the statistic at or before t unchanged
    later = inputs.frame.with_columns(
        pl.when(pl.int_range(pl.len()).over("symbol") > t)
        .then(pl.col("log_return") * 5.0)
        .otherwise(pl.col("log_return"))
        .alias("log_return")
    )
    again = later.with_columns(trend_frame(later, [w])).filter(pl.col("symbol") == SYMBOLS[0])
    np.testing.assert_array_equal(again["trend_16"][: t + 1].to_numpy(), a["trend_16"][: t + 1].to_numpy())
    assert again["trend_16"][t + 1] != a["trend_16"][t + 1]


def test_feature_subset_and_trend_columns_are_standardised_on_train(inputs):
    observation = {"forecasts": False, "text": False, "features": ["momentum"], "trend_windows": [8, 32]}
    spec = fit_spec(inputs, 0, observation, {"dim": 2, "half_life_bars": 8})
    assert spec.names() == ["momentum", "trend_8", "trend_32", *STATE_NAMES]
    series = build_series(inputs, spec, 8)
    train = np.concatenate([s.market_obs[:384, 1:3] for s in series])
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-4)
    with pytest.raises(ConfigError, match=r"policy\.observation\.features: nope not in"):
        fit_spec(inputs, 0, {**observation, "features": ["nope"]}, {"dim": 2, "half_life_bars": 8})
    with pytest.raises(ConfigError, match=r"fold 5 is not a fold in scaler\.json"):
        fit_spec(inputs, 5, observation, {"dim": 2, "half_life_bars": 8})

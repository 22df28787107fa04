"""Walk-forward evaluation: metric values, strategy arithmetic, file shapes, verdict and ablation merge."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from tests.test_policy_data import N_BARS, SPLITS, SYMBOLS, policy_config, write_inputs
from trainrelay.atomic import write_json
from trainrelay.errors import DataError
from trainrelay.policy import strategies
from trainrelay.policy.env import TradingEnv
from trainrelay.policy.evaluate import backtest, evaluate_policy, merge_ablations, verdict
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.metrics import bars_per_year, max_drawdown, sharpe, summarise
from trainrelay.policy.model import load_policy
from trainrelay.policy.observations import ObservationSpec, build_series
from trainrelay.policy.train import train_policy

STRATS = ["buy_and_hold", "flat", "forecast_sign", "policy"]
KEYS = ["cumulative_return", "hit_rate", "max_drawdown", "sharpe", "turnover"]


def test_metric_values():
    ts = np.arange(0, 10 * 900_000, 900_000)
    assert bars_per_year(ts) == pytest.approx(365.25 * 96)
    r = np.array([0.01, -0.02, 0.03, 0.0])
    assert sharpe(r, 100.0) == pytest.approx(r.mean() / r.std(ddof=1) * 10.0)
    assert sharpe(np.zeros(5), 100.0) == 0.0
    # equity 1 -> 1.1 -> 0.88 -> 0.968: the drawdown from 1.1 to 0.88 is 20 %
    assert max_drawdown(np.array([0.1, -0.2, 0.1])) == pytest.approx(0.2)
    m = summarise(
        np.array([0.01, -0.01, 0.02]),
        [np.array([1.0, 1.0, -1.0])],
        [np.array([0.01, -0.01, 0.02])],
        periods_per_year=4.0,
    )
    assert m["turnover"] == pytest.approx((1 + 0 + 2) / 3)
    assert m["hit_rate"] == pytest.approx(2 / 3)
    assert m["cumulative_return"] == pytest.approx(1.01 * 0.99 * 1.02 - 1)
    assert summarise(np.zeros(3), [np.zeros(3)], [np.zeros(3)], 4.0)["hit_rate"] is None


def test_forecast_sign_positions():
    w = strategies.Window(
        symbol="X",
        timestamp=np.arange(5),
        market_obs=np.zeros((5, 2), np.float32),
        next_log_return=np.zeros(4),
        next_funding=np.zeros(4),
        fc_return=np.array([0.2, -0.1, 0.0, 0.3, -0.5]),
        fc_valid=np.array([False, True, True, True, True]),
    )
    assert strategies.forecast_sign(w).tolist() == [0.0, -1.0, 0.0, 1.0]
    assert strategies.buy_and_hold(w).tolist() == [1.0] * 4 and strategies.flat(w).tolist() == [0.0] * 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One policy per fold, each trained on its own fold's train split."""
    root = tmp_path_factory.mktemp("eval")
    paths = write_inputs(root / "in")
    config = policy_config(total_timesteps=2048, n_steps=128, n_envs=2)
    for fold in (0, 1):
        out = root / f"fold{fold}"
        train_policy(
            paths, out / "ppo_policy.zip", out / "ppo.csv", config, state_dir=out / "state", fold=fold
        )
    return root, paths


def _policies(root) -> dict[int, str]:
    return {fold: root / f"fold{fold}" / "ppo_policy.zip" for fold in (0, 1)}


def test_evaluate_writes_metrics_and_equity_curves(trained):
    root, paths = trained
    write_json(
        root / "no_text.json",
        {
            "observation": {"forecasts": True, "text": False},
            "folds": [{"fold": 1}],
            "strategies": {"policy": {"sharpe": 1.5, "turnover": 0.1}},
        },
    )
    result = evaluate_policy(
        _policies(root),
        paths,
        root / "policy.json",
        root / "equity.parquet",
        ablations={"no_text": root / "no_text.json"},
    )
    on_disk = json.loads((root / "policy.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert sorted(on_disk["strategies"]) == STRATS
    assert all(sorted(m) == KEYS for m in on_disk["strategies"].values())
    assert [f["fold"] for f in on_disk["folds"]] == [0, 1]
    assert on_disk["folds"][0]["start"] == "2024-01-05T18:15:00.000Z"  # bar 456 of the fixture
    # each fold was traded by the policy trained up to its own train end (bars 383 and 471)
    assert [f["policy_train_end"] for f in on_disk["folds"]] == [
        "2024-01-05T00:00:00.000Z",
        "2024-01-05T22:00:00.000Z",
    ]
    assert on_disk["ablations"] == {
        "no_text": {
            "observation": {"forecasts": True, "text": False},
            "folds": [1],
            "sharpe": 1.5,
            "turnover": 0.1,
        }
    }
    assert on_disk["verdict"].startswith("The policy ") and on_disk["verdict"].endswith(".")
    flat = on_disk["strategies"]["flat"]
    assert (flat["cumulative_return"], flat["sharpe"], flat["turnover"], flat["hit_rate"]) == (
        0.0,
        0.0,
        0.0,
        None,
    )

    eq = pl.read_parquet(root / "equity.parquet")
    assert eq.columns == ["fold", "timestamp", "strategy", "equity"]
    assert eq.schema["timestamp"] == pl.Datetime("ms", "UTC") and eq.schema["fold"] == pl.Int32
    firsts = eq.group_by("fold", "strategy").agg(pl.col("equity").first(), pl.len())
    assert firsts["equity"].to_list() == [1.0] * 8
    test_bars = {f: hi - lo + 1 for f, s, lo, hi in SPLITS if s == "test"}
    assert sorted(set(zip(firsts["fold"].to_list(), firsts["len"].to_list(), strict=True))) == sorted(
        test_bars.items()
    )
    assert eq.filter(pl.col("strategy") == "flat")["equity"].unique().to_list() == [1.0]


def test_buy_and_hold_matches_prices_costs_and_funding(trained):
    """Buy-and-hold of fold 0 by hand from close prices: entry cost once, funding at 8-hour closes."""
    root, paths = trained
    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"]
    )
    _, equity = backtest({f: load_policy(p) for f, p in _policies(root).items()}, inputs)
    lo, hi = next((lo, hi) for f, s, lo, hi in SPLITS if f == 0 and s == "test")
    per_symbol = []
    for symbol in SYMBOLS:
        rows = inputs.frame.filter(pl.col("symbol") == symbol)[lo : hi + 1]
        simple = rows["close"].to_numpy()[1:] / rows["close"].to_numpy()[:-1] - 1
        ms = rows["timestamp"].dt.epoch("ms").to_numpy()[1:]
        funding = np.where(ms % (8 * 3_600_000) == 0, rows["funding_rate"].to_numpy()[1:], 0.0)
        net = simple - funding
        net[0] -= 0.0004  # entering the position from flat
        per_symbol.append(net)
    expected = np.concatenate([[1.0], np.cumprod(1 + np.mean(per_symbol, axis=0))])
    got = equity.filter((pl.col("fold") == 0) & (pl.col("strategy") == "buy_and_hold"))["equity"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_backtest_positions_equal_the_env_rollout(trained):
    """The batched backtest and the training env are the same dynamics: same positions step by step."""
    root, paths = trained
    actor, meta = load_policy(_policies(root)[0])
    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"]
    )
    series = build_series(inputs, ObservationSpec.from_dict(meta["spec"]), 8)
    lo, hi = 456, 543
    windows = [strategies.Window.from_series(s, lo, hi) for s in series]
    batched = strategies.policy_positions(actor, windows, cost=0.0004)
    env = TradingEnv(series, [(1, lo, hi)], trading_cost=0.0004)
    obs, _ = env.reset(seed=0)
    rolled, done = [], False
    while not done:
        with torch.no_grad():
            action = actor(torch.from_numpy(obs[None]))[0].numpy()
        obs, _, _, done, _ = env.step(action)
        rolled.append(env.get_state()["position"])
    np.testing.assert_allclose(batched[1], rolled, atol=1e-6)
    assert len(rolled) == hi - lo and hi < N_BARS


def test_verdict_sentences():
    def strats(p, b, f):
        return {"policy": {"sharpe": p}, "buy_and_hold": {"sharpe": b}, "forecast_sign": {"sharpe": f}}

    assert verdict(strats(2.0, 1.0, 0.5)).startswith(
        "The policy beat both buy-and-hold and the forecast-sign rule"
    )
    assert verdict(strats(0.1, 1.0, 0.5)).startswith(
        "The policy did not beat buy-and-hold or the forecast-sign"
    )
    assert verdict(strats(0.7, 1.0, 0.5)).startswith(
        "The policy beat the forecast-sign rule but not buy-and-hold"
    )
    assert "(test Sharpe 0.70 vs buy-and-hold 1.00 and forecast-sign 0.50)" in verdict(strats(0.7, 1.0, 0.5))


def test_bad_ablation_file_is_a_data_error(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="not a policy metrics file"):
        merge_ablations({"x": tmp_path / "x.json"})


def test_each_fold_needs_its_own_policy(trained):
    root, paths = trained
    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"]
    )
    fold0 = load_policy(_policies(root)[0])
    with pytest.raises(DataError, match=r"no policy for fold\(s\) 1; run train_policy_fold"):
        backtest({0: fold0}, inputs)
    with pytest.raises(DataError, match="policy given for fold 1 was trained on fold 0"):
        backtest({0: fold0, 1: fold0}, inputs)


def test_evaluating_only_the_last_fold(trained, tmp_path):
    """The ablations may run on the last fold only: its metrics equal that fold's part of the full run."""
    root, paths = trained
    full = evaluate_policy(_policies(root), paths, tmp_path / "all.json")
    last = evaluate_policy({1: _policies(root)[1]}, paths, tmp_path / "last.json", folds=[1])
    assert [f["fold"] for f in last["folds"]] == [1]
    assert last["strategies"]["policy"] == pytest.approx(full["folds"][1]["strategies"]["policy"])

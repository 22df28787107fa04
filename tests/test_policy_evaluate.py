"""Walk-forward evaluation: metric values, strategy arithmetic, file shapes, intervals, verdict and
ablation merge."""

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
from trainrelay.policy.evaluate import (
    backtest,
    evaluate_policy,
    merge_ablations,
    trial_count,
    trivial_policy,
    verdict,
)
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.metrics import bars_per_year, max_drawdown, sharpe, strategy_metrics
from trainrelay.policy.model import load_policy
from trainrelay.policy.observations import ObservationSpec, build_series
from trainrelay.policy.train import train_policy

STRATS = ["buy_and_hold", "flat", "forecast_sign", "policy"]
KEYS = sorted(
    [
        "cumulative_return", "hit_rate", "max_drawdown", "sharpe", "turnover", "sharpe_ci_low",
        "sharpe_ci_high", "sharpe_diff_vs_buy_and_hold", "sharpe_diff_ci_low", "sharpe_diff_ci_high",
        "sharpe_diff_p_value", "probabilistic_sharpe", "deflated_sharpe", "cost_sensitivity",
    ]
)  # fmt: skip


def test_metric_values():
    ts = np.arange(0, 10 * 900_000, 900_000)
    assert bars_per_year(ts) == pytest.approx(365.25 * 96)
    r = np.array([0.01, -0.02, 0.03, 0.0])
    assert sharpe(r, 100.0) == pytest.approx(r.mean() / r.std(ddof=1) * 10.0)
    assert sharpe(np.zeros(5), 100.0) == 0.0
    # equity 1 -> 1.1 -> 0.88 -> 0.968: the drawdown from 1.1 to 0.88 is 20 %
    assert max_drawdown(np.array([0.1, -0.2, 0.1])) == pytest.approx(0.2)
    m = strategy_metrics(
        np.array([0.01, -0.01, 0.02]),
        [np.array([1.0, 1.0, -1.0])],
        [np.array([0.01, -0.01, 0.02])],
        periods_per_year=4.0,
    )
    assert m["turnover"] == pytest.approx((1 + 0 + 2) / 3)
    assert m["hit_rate"] == pytest.approx(2 / 3)
    assert m["cumulative_return"] == pytest.approx(1.01 * 0.99 * 1.02 - 1)
    assert strategy_metrics(np.zeros(3), [np.zeros(3)], [np.zeros(3)], 4.0)["hit_rate"] is None


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
    # 184 test bars of 15 minutes: far below the 30 days a verdict needs
    assert on_disk["verdict"].startswith("Too short to tell: the walk-forward test covers 1.9 days")
    assert "Deflated Sharpe ratio" in on_disk["verdict"] and "2 configurations tried" in on_disk["verdict"]
    significance = on_disk["significance"]
    assert significance["too_short"] and significance["test_bars"] == 87 + 95
    assert significance["trials"] == {
        "count": 2,
        "parts": {"configuration": 1, "ablations": 1},
        "source": "given ablations",
    }
    assert significance["bootstrap"]["replications"] == 2000 and significance["bootstrap"]["seed"] == 0
    # a day of 15-minute bars is 96, capped at a tenth of the 182 pooled bars
    assert significance["bootstrap"]["mean_block_bars"] == pytest.approx(18.2)
    assert significance["deflated_sharpe"]["n_trials"] == 2
    flat = on_disk["strategies"]["flat"]
    assert (flat["cumulative_return"], flat["sharpe"], flat["turnover"], flat["hit_rate"]) == (
        0.0,
        0.0,
        0.0,
        None,
    )
    assert (flat["sharpe_ci_low"], flat["sharpe_ci_high"], flat["probabilistic_sharpe"]) == (0.0, 0.0, None)
    for fold in on_disk["folds"]:
        assert all(sorted(m) == KEYS for m in fold["strategies"].values())
        assert fold["trivial_policy"]["threshold"] == 0.95
    for scope in [on_disk["strategies"], *(f["strategies"] for f in on_disk["folds"])]:
        hold = scope["buy_and_hold"]
        assert hold["sharpe_diff_vs_buy_and_hold"] == 0.0 and hold["sharpe_diff_p_value"] == 1.0
        # paired: buy-and-hold minus itself is 0 in every replication, so its interval is a point
        assert hold["sharpe_diff_ci_low"] == hold["sharpe_diff_ci_high"] == 0.0
        assert scope["policy"]["deflated_sharpe"] is not None and hold["deflated_sharpe"] is None
        for metrics in scope.values():
            assert metrics["sharpe_ci_low"] <= metrics["sharpe_ci_high"]
            assert metrics["sharpe_diff_ci_low"] <= metrics["sharpe_diff_ci_high"]
            assert 0.0 < metrics["sharpe_diff_p_value"] <= 1.0
            costs = metrics["cost_sensitivity"]
            assert costs["1x"] == {
                "sharpe": metrics["sharpe"],
                "cumulative_return": metrics["cumulative_return"],
            }
            # trading costs only take away: 0x >= 1x >= 2x for every strategy, pooled and per fold
            assert costs["0x"]["cumulative_return"] >= costs["1x"]["cumulative_return"]
            assert costs["1x"]["cumulative_return"] >= costs["2x"]["cumulative_return"]
    # buy-and-hold pays its entry once per fold and symbol, so 2x cost is strictly worse
    bh_costs = on_disk["strategies"]["buy_and_hold"]["cost_sensitivity"]
    assert bh_costs["0x"]["cumulative_return"] > bh_costs["2x"]["cumulative_return"]

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


def _result(diff, low, high, p=0.5, days=60.0, dsr=0.4, trials=3, trivial=None):
    """A policy.json-shaped dict with the numbers the verdict reads."""
    costs = {"0x": {"sharpe": 1.5}, "1x": {"sharpe": 1.0}, "2x": {"sharpe": 0.5}}
    policy = {
        "sharpe": 1.0, "sharpe_ci_low": -0.5, "sharpe_ci_high": 2.5, "sharpe_diff_vs_buy_and_hold": diff,
        "sharpe_diff_ci_low": low, "sharpe_diff_ci_high": high, "sharpe_diff_p_value": p,
        "cost_sensitivity": costs,
    }  # fmt: skip
    hold = {"sharpe": 1.0 - diff, "sharpe_ci_low": -1.0, "sharpe_ci_high": 2.0}
    flag = trivial or {"flag": False, "kind": None}
    return {
        "strategies": {"policy": policy, "buy_and_hold": hold},
        "significance": {
            "too_short": days < 30, "test_days": days, "min_test_days": 30.0, "trivial_policy": flag,
            "deflated_sharpe": {"dsr": dsr, "n_trials": trials},
        },
    }  # fmt: skip


def test_verdict_sentences_come_from_the_intervals():
    same = verdict(_result(-0.4, -1.9, 1.1, p=0.62))
    assert same.startswith(
        "The policy is not distinguishable from buy-and-hold on Sharpe "
        "(difference -0.40, 95 % CI -1.90 to 1.10, p = 0.62)."
    )
    assert "Sharpe: policy 1.00 (95 % CI -0.50 to 2.50), buy-and-hold 1.40 (95 % CI -1.00 to 2.00)." in same
    assert (
        "Deflated Sharpe ratio 0.40 for 3 configurations tried: not significant at 95 % after selection."
        in same
    )
    assert same.endswith("At 0x / 2x the trading cost the policy's Sharpe would be 1.50 / 0.50.")
    assert verdict(_result(0.8, 0.2, 1.4, p=0.01, dsr=0.97)).startswith(
        "The policy beat buy-and-hold on Sharpe (difference +0.80, 95 % CI 0.20 to 1.40, p = 0.01)."
    )
    assert "0.97 for 3 configurations tried: significant" in verdict(_result(0.8, 0.2, 1.4, dsr=0.97))
    assert verdict(_result(-2.0, -3.0, -1.0, p=0.002)).startswith(
        "The policy trailed buy-and-hold on Sharpe (difference -2.00, 95 % CI -3.00 to -1.00, p = 0.002)."
    )
    # the demo's ~12 days: whatever the interval says, the sentence says it is too short to tell
    short = verdict(_result(0.8, 0.2, 1.4, p=0.01, days=11.8, trials=1))
    assert short.startswith(
        "Too short to tell: the walk-forward test covers 11.8 days, fewer than the 30 a verdict needs "
        "(Sharpe difference to buy-and-hold +0.80, 95 % CI 0.20 to 1.40, p = 0.01)."
    )
    assert "for 1 configuration tried" in short and "beat" not in short
    disguised = {"flag": True, "kind": "always_long", "share_long": 0.98}
    assert "The policy is buy-and-hold in disguise: long on 98% of symbol-bars." in verdict(
        _result(0.0, -1.0, 1.0, trivial=disguised)
    )
    assert "undefined" in verdict(_result(0.0, -1.0, 1.0, dsr=None))


def test_trivial_policy_flag():
    rng = np.random.default_rng(0)
    hold = rng.normal(0, 0.01, 200)
    mixed = trivial_policy([np.tile([1.0, -1.0, 0.0, 0.5], 50)], rng.normal(0, 0.01, 200), hold)
    assert not mixed["flag"] and mixed["kind"] is None
    assert mixed["share_long"] == 0.5 and mixed["share_short"] == 0.25 and mixed["share_flat"] == 0.25
    # long on 96 % of bars (even at a small size): buy-and-hold in disguise
    mostly_long = np.where(np.arange(200) < 192, 0.3, 0.0)
    assert trivial_policy([mostly_long], hold * 0.3, hold)["kind"] == "always_long"
    flat = trivial_policy([np.zeros(200)], np.zeros(200), hold)
    assert (flat["flag"], flat["kind"], flat["share_flat"]) == (True, "always_flat", 1.0)
    # correlation with a constant is undefined: recorded as None, never as a number
    assert flat["return_correlation_with_buy_and_hold"] is None
    # positions that look mixed, returns that are buy-and-hold's: flagged by the return correlation
    switching = np.tile([1.0, 0.0], 100)
    flag = trivial_policy([switching], hold + 1e-4 * rng.normal(size=200), hold)
    assert flag["kind"] == "tracks_buy_and_hold" and flag["return_correlation_with_buy_and_hold"] > 0.95
    # long on every other bar only: correlation ~0.7, not flagged
    assert not trivial_policy([switching], hold * switching, hold)["flag"]


def test_trial_count_from_the_config():
    demo = {"policy": {"ablations": ["no_forecast", "no_text"]}, "tune": {"enabled": False}}
    assert trial_count(demo)["count"] == 3
    tuned = {
        "policy": {"ablations": ["no_text"]},
        "tune": {"enabled": True, "population_size": 6, "generations": 3},
    }
    counted = trial_count(tuned, presets_compared=2)
    assert counted["count"] == 1 + 1 + 18 + 2
    assert counted["parts"] == {
        "configuration": 1,
        "ablations": 1,
        "tuning_trials": 18,
        "presets_compared": 2,
    }
    assert "population_size x generations: 18" in counted["source"]


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
    # the point metrics are the fold's; the intervals are resampled with another seed stream
    mine, theirs = last["strategies"]["policy"], full["folds"][1]["strategies"]["policy"]
    for key in ("sharpe", "cumulative_return", "max_drawdown", "turnover", "hit_rate"):
        assert mine[key] == pytest.approx(theirs[key])
    for multiple in ("0x", "1x", "2x"):
        assert mine["cost_sensitivity"][multiple] == pytest.approx(theirs["cost_sensitivity"][multiple])


def test_policy_json_is_deterministic(trained, tmp_path):
    """A fixed seed: the bootstrap intervals, and so the whole file, repeat byte for byte."""
    root, paths = trained
    evaluate_policy(_policies(root), paths, tmp_path / "a.json", seed=7)
    evaluate_policy(_policies(root), paths, tmp_path / "b.json", seed=7)
    evaluate_policy(_policies(root), paths, tmp_path / "c.json", seed=8)
    a, b, c = ((tmp_path / f"{n}.json").read_bytes() for n in "abc")
    assert a == b and a != c

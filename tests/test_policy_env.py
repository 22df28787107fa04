"""The trading env: API conformance (both env checkers), reward arithmetic, episodes, exact state restore."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tests.test_policy_data import write_inputs
from trainrelay.policy.env import TradingEnv, next_unrealised, trade_step
from trainrelay.policy.inputs import load_inputs
from trainrelay.policy.observations import (
    SymbolSeries,
    build_series,
    episode_index_ranges,
    fit_spec,
    split_ranges,
)


def _toy_series() -> SymbolSeries:
    n = 6
    return SymbolSeries(
        symbol="TOY",
        timestamp=np.arange(1, n + 1, dtype=np.int64) * 900_000,
        market_obs=np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 10,
        log_return=np.array([0.0, 0.01, -0.02, 0.03, 0.0, -0.01]),
        funding=np.array([0.0, 0.0, 0.001, 0.0, 0.0, -0.002]),
        fc_return=np.zeros(n),
        fc_valid=np.ones(n, dtype=bool),
    )


@pytest.fixture
def real_env(tmp_path):
    paths = write_inputs(tmp_path)
    inputs = load_inputs(
        paths["features"], paths["scaler"], paths["segments"], paths["forecasts"], paths["text"]
    )
    spec = fit_spec(inputs, 0, {"forecasts": True, "text": True}, {"dim": 4, "half_life_bars": 8})
    series = build_series(inputs, spec, 8)
    episodes = episode_index_ranges(series, split_ranges(inputs.segments, 0, "train"))
    return TradingEnv(series, episodes, trading_cost=0.0004, reward_scale=100.0), spec


def test_env_passes_gymnasium_and_sb3_checkers(real_env):
    env, spec = real_env
    assert env.observation_space.shape == (spec.obs_dim,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


def test_reward_is_position_times_next_return_minus_cost_and_funding():
    env = TradingEnv([_toy_series()], [(0, 0, 5)], trading_cost=0.001, reward_scale=10.0)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, [0.0, 0.1, 0.2, 0.0, 0.0], atol=1e-7)
    # bar 0 -> 1: go long 1 from flat: 1 * 0.01 - 0.001 * 1
    obs, reward, term, trunc, info = env.step(np.array([1.0], np.float32))
    assert reward == pytest.approx(10 * (0.01 - 0.001))
    assert not term and not trunc
    assert obs[3] == 1.0 and obs[4] == pytest.approx(100 * 0.01)  # position, unrealised PnL in percent
    # bar 1 -> 2: flip to short 0.5: -0.5 * -0.02 - 0.001 * 1.5 - (-0.5 * 0.001 funding received)
    _, reward, _, _, info = env.step(np.array([-0.5], np.float32))
    assert reward == pytest.approx(10 * (0.01 - 0.0015 + 0.0005))
    assert info["funding"] == pytest.approx(-0.0005)
    assert env.get_state()["upnl"] == pytest.approx(0.01)  # side changed: the new trade's PnL only
    # an action outside [-1, 1] is clipped to the action space
    _, reward, _, _, _ = env.step(np.array([7.0], np.float32))
    assert reward == pytest.approx(10 * (0.03 - 0.001 * 1.5))
    env.step(np.array([1.0], np.float32))
    _, reward, term, trunc, info = env.step(np.array([0.0], np.float32))
    assert reward == pytest.approx(10 * (-0.001))
    assert trunc and not term  # 5 steps for 6 bars: the episode's bars are used up
    expected = (0.01 - 0.001) + (0.01 - 0.0015 + 0.0005) + (0.03 - 0.0015) + 0.0 + (-0.001)
    assert info["episode"]["r"] == pytest.approx(expected) and info["episode"]["l"] == 5


def test_trade_step_and_unrealised_pnl_vectorised():
    net, gross, cost, funding = trade_step(
        np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 0.0]), np.array([0.02, -0.01, 0.05]), 0.001, 0.0005
    )
    np.testing.assert_allclose(gross, [0.02, -0.01, 0.0])
    np.testing.assert_allclose(cost, [0.0005, 0.0, 0.0005])
    np.testing.assert_allclose(funding, [0.001, 0.001, 0.0])
    np.testing.assert_allclose(net, gross - cost - funding)
    upnl = next_unrealised(
        np.array([0.3, 0.3, 0.3]), np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 0.0]), gross
    )
    np.testing.assert_allclose(upnl, [0.02, 0.29, 0.0])


def test_episodes_are_sampled_from_the_given_train_ranges(real_env):
    env, _ = real_env
    starts = set()
    for seed in range(30):
        env.reset(seed=seed)
        state = env.get_state()
        assert (state["symbol"], state["t"], state["end"]) in env.episodes
        starts.add((state["symbol"], state["t"]))
    assert len(starts) > 5
    first_row = env.get_state()["t"]
    steps, trunc = 0, False
    while not trunc:
        _, _, _, trunc, _ = env.step(env.action_space.sample())
        steps += 1
    assert steps == env.get_state()["end"] - first_row == 63  # 64-bar episodes: 63 decisions


def test_state_restore_reproduces_the_trajectory(real_env):
    env, _ = real_env
    env.reset(seed=5)
    for _ in range(10):
        env.step(np.array([0.3], np.float32))
    saved = env.get_state()
    actions = [np.array([a], np.float32) for a in np.linspace(-1, 1, 80)]

    def roll() -> list:
        out = []
        for a in actions:
            obs, reward, _, trunc, _ = env.step(a)
            out.append((obs.copy(), reward))
            if trunc:
                out.append(env.reset()[0].copy())  # the next episode is drawn from the restored RNG
        return out

    first = roll()
    env.set_state(saved)
    second = roll()
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(
            a[0] if isinstance(a, tuple) else a, b[0] if isinstance(b, tuple) else b
        )


def test_turnover_penalty_is_charged_on_position_changes_in_training_only():
    plain = TradingEnv([_toy_series()], [(0, 0, 5)], trading_cost=0.001, reward_scale=10.0)
    shaped = TradingEnv([_toy_series()], [(0, 0, 5)], 0.001, reward_scale=10.0, turnover_penalty=0.002)
    for env in (plain, shaped):
        env.reset(seed=0)
    rewards = []
    for action in (0.5, 0.5, -1.0):
        _, r_plain, _, _, info_plain = plain.step(np.array([action], np.float32))
        _, r_shaped, _, _, info_shaped = shaped.step(np.array([action], np.float32))
        rewards.append((r_plain, r_shaped))
        assert info_plain == info_shaped  # the trade itself (gross, cost, funding) is unchanged
    changes = [0.5, 0.0, 1.5]
    for (r_plain, r_shaped), change in zip(rewards, changes, strict=True):
        assert r_shaped == pytest.approx(r_plain - 10.0 * 0.002 * change)
    # the episode return that SB3 logs stays the unshaped net return
    assert shaped.get_state()["ep_return"] == pytest.approx(plain.get_state()["ep_return"])

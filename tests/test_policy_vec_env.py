"""The array VecEnv is the gymnasium env in DummyVecEnv, bit for bit: steps, resets, states, PPO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from tests.test_policy_data import policy_config, write_inputs
from trainrelay.core.checkpointing import TimeBudget
from trainrelay.errors import BudgetExhausted
from trainrelay.policy.env import TradingEnv
from trainrelay.policy.train import make_vec_env, prepare, train_policy
from trainrelay.policy.vec_env import ArrayTradingVecEnv

COST, SCALE, PENALTY = 0.0004, 100.0, 0.0007


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """Fold 1's train series and episodes (seven 64-bar and one 24-bar per symbol) plus short ones."""
    paths = write_inputs(tmp_path_factory.mktemp("in"))
    cfg = policy_config()["policy"]
    _, series, episodes = prepare(paths, cfg, cfg["observation"], 1)
    # episodes of 2, 3 and 5 bars end after 1, 2 and 4 steps: resets fall on many different steps
    episodes = [*episodes, (0, 100, 101), (1, 200, 202), (1, 7, 11)]
    assert len({hi - lo for _, lo, hi in episodes}) >= 5
    assert any(np.any(s.funding != 0) for s in series)  # the reward's funding term is exercised
    return series, episodes


def _pair(market, n_envs: int, penalty: float = PENALTY) -> tuple[DummyVecEnv, ArrayTradingVecEnv]:
    series, episodes = market
    dummy = DummyVecEnv([lambda: TradingEnv(series, episodes, COST, SCALE, penalty) for _ in range(n_envs)])
    array = ArrayTradingVecEnv(series, episodes, COST, SCALE, penalty, n_envs)
    return dummy, array


def _assert_same_value(a: Any, b: Any, where: str) -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        # bit for bit: the same bytes (np.array_equal would call -0.0 and 0.0 equal)
        assert np.array_equal(a, b) and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for key in a:
            _assert_same_value(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _assert_same_step(expected: tuple, got: tuple, step: int) -> None:
    for name, a, b in zip(("obs", "rewards", "dones"), expected[:3], got[:3], strict=True):
        _assert_same_value(a, b, f"step {step} {name}")
    assert len(expected[3]) == len(got[3])
    for index, (a, b) in enumerate(zip(expected[3], got[3], strict=True)):
        _assert_same_value(a, b, f"step {step} infos[{index}]")


def _actions(rng: np.random.Generator, n_envs: int) -> np.ndarray:
    """Float32 actions as PPO passes them, some outside [-1, 1], some exactly 0 or at a bound."""
    actions = rng.uniform(-1.5, 1.5, size=(n_envs, 1)).astype(np.float32)
    special = rng.random(n_envs) < 0.15
    actions[special, 0] = rng.choice(np.array([0.0, -0.0, 1.0, -1.0], np.float32), size=int(special.sum()))
    return actions


@pytest.mark.parametrize(("n_envs", "seed"), [(1, 0), (3, 11), (8, 5), (16, 123)])
def test_array_env_steps_bit_for_bit_like_dummy_vec_env(market, n_envs, seed):
    dummy, array = _pair(market, n_envs)
    assert dummy.seed(seed) == array.seed(seed)
    _assert_same_value(dummy.reset(), array.reset(), "reset obs")
    assert dummy.reset_infos == array.reset_infos
    rng = np.random.default_rng(seed)
    finished = 0
    for step in range(600):
        actions = _actions(rng, n_envs)
        expected, got = dummy.step(actions), array.step(actions)
        _assert_same_step(expected, got, step)
        finished += int(expected[2].sum())
    assert finished >= 8 * n_envs  # several episodes per env, truncations and auto-resets included
    assert dummy.reset_infos == array.reset_infos
    # and each env's full state, generator included, is the same afterwards
    for index in range(n_envs):
        _assert_same_value(
            dummy.env_method("get_state", indices=[index])[0],
            array.env_method("get_state", indices=[index])[0],
            f"state of env {index}",
        )


def test_a_reset_without_new_seeds_continues_each_generator(market):
    """A second reset() draws from the generators the first seeded, as gymnasium envs do."""
    dummy, array = _pair(market, 4, penalty=0.0)
    dummy.seed(9)
    array.seed(9)
    for _ in range(3):
        _assert_same_value(dummy.reset(), array.reset(), "reset obs")
        actions = np.full((4, 1), 0.5, np.float32)
        _assert_same_step(dummy.step(actions), array.step(actions), 0)


def test_state_capture_and_restore_continue_identically_even_from_a_dummy_state(market):
    dummy, array = _pair(market, 4)
    dummy.seed(2)
    array.seed(2)
    dummy.reset()
    array.reset()
    rng = np.random.default_rng(2)
    for _ in range(150):
        actions = _actions(rng, 4)
        dummy.step(actions)
        array.step(actions)
    saved = array.env_method("get_state")
    assert saved == dummy.env_method("get_state")  # the same layout as TradingEnv.get_state
    rollout = [_actions(rng, 4) for _ in range(200)]
    first = [array.step(a) for a in rollout]

    restored = _pair(market, 4)[1]  # a fresh env, as a resumed run builds it
    for index, state in enumerate(dummy.env_method("get_state")):
        restored.env_method("set_state", state, indices=[index])
    for step, (a, expected) in enumerate(zip(rollout, first, strict=True)):
        _assert_same_step(expected, restored.step(a), step)
    # the restored array env also matches the gymnasium envs going on from the same state
    for step, (a, expected) in enumerate(zip(rollout, first, strict=True)):
        _assert_same_step(expected, dummy.step(a), step)


def test_vec_env_api_and_make_vec_env(market):
    series, episodes = market
    fns = [lambda: TradingEnv(series, episodes, COST, SCALE) for _ in range(3)]
    venv = make_vec_env(fns, "array")
    assert isinstance(venv, ArrayTradingVecEnv) and venv.num_envs == 3
    assert isinstance(make_vec_env(fns, "dummy"), DummyVecEnv)
    template = TradingEnv(series, episodes, COST, SCALE)
    assert venv.observation_space == template.observation_space
    assert venv.action_space == template.action_space
    assert venv.get_attr("render_mode") == [None, None, None]
    assert venv.get_attr("trading_cost", indices=1) == [COST]
    assert venv.has_attr("episodes") and not venv.has_attr("_t")
    assert venv.env_is_wrapped(object) == [False, False, False]
    with pytest.raises(AttributeError, match="set_state"):
        venv.set_attr("trading_cost", 0.1, indices=[0])
    venv.set_attr("turnover_penalty", 0.001)
    assert venv.turnover_penalty == 0.001
    with pytest.raises(AttributeError, match="no per-env method 'render'"):
        venv.env_method("render")
    venv.close()


def _train(paths, out: Path, vec_env: str, total: int = 2048, **overrides) -> dict[str, torch.Tensor]:
    config = policy_config(
        total_timesteps=total, n_steps=128, n_envs=4, vec_env=vec_env, use_sde=True, sde_sample_freq=-1
    )
    config["policy"]["turnover_penalty"] = PENALTY
    config["checkpoint"].update(overrides)
    train_policy(paths, out / "ppo_policy.zip", out / "ppo.csv", config, state_dir=out / "state", fold=1)
    return PPO.load(out / "ppo_policy.zip", device="cpu").policy.state_dict()


def _assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _same_losses(a: Path, b: Path) -> None:
    drop = ["seconds"]
    assert pl.read_csv(a).drop(drop).equals(pl.read_csv(b).drop(drop))


class _BudgetOfTwoSaves(TimeBudget):
    """Runs out once two states are saved, whatever the machine's speed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.saves = 0

    def mark_saved(self) -> None:
        super().mark_saved()
        self.saves += 1

    def exhausted(self) -> bool:
        return self.saves >= 2 or super().exhausted()


def test_ppo_trains_to_the_same_parameters_with_array_and_dummy_and_resumes_exactly(tmp_path, monkeypatch):
    paths = write_inputs(tmp_path / "in")
    dummy = _train(paths, tmp_path / "dummy", "dummy")
    array = _train(paths, tmp_path / "array", "array")
    _assert_same_params(dummy, array)
    _same_losses(tmp_path / "dummy" / "ppo.csv", tmp_path / "array" / "ppo.csv")
    assert pl.read_csv(tmp_path / "array" / "ppo.csv")["episode_reward"].null_count() == 0

    # stopped by the budget after two rollouts, then resumed: the same model as the whole run
    monkeypatch.delenv("TRAINRELAY_DEADLINE", raising=False)
    monkeypatch.setattr("trainrelay.policy.train.TimeBudget", _BudgetOfTwoSaves)
    with pytest.raises(BudgetExhausted, match="reached after 1024 of 2048"):
        _train(paths, tmp_path / "resumed", "array", time_budget_minutes=60.0)
    monkeypatch.undo()
    resumed = _train(paths, tmp_path / "resumed", "array")
    _assert_same_params(array, resumed)
    _same_losses(tmp_path / "array" / "ppo.csv", tmp_path / "resumed" / "ppo.csv")

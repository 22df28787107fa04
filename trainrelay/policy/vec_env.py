"""The trading env as one array VecEnv: every env steps at once in numpy, no gymnasium call per step.

:class:`ArrayTradingVecEnv` is the training env of ``policy.ppo.vec_env: array``. It holds the
state of all ``n_envs`` episodes (row, last row, position, unrealised PnL, episode return and
length) as arrays and steps them with the same arithmetic as :class:`~trainrelay.policy.env.TradingEnv`
(:func:`~trainrelay.policy.env.trade_step`, :func:`~trainrelay.policy.env.next_unrealised`, the
same float64 operations in the same order), so on the same seeds and actions it returns, bit for
bit, what SB3's ``DummyVecEnv`` over ``n_envs`` gymnasium ``TradingEnv`` instances returns:

- observations (float32), rewards (float32, cast from the float64 shaped reward), dones;
- infos: ``gross`` / ``cost`` / ``funding`` per step, ``TimeLimit.truncated``, and at an
  episode's end ``episode`` (unscaled return, length) and ``terminal_observation``;
- auto-reset: a finished env draws its next episode right away, from its own generator.

Every env keeps its own ``numpy.random.Generator``, created exactly as gymnasium's ``Env.reset``
creates it (``seeding.np_random(seed)`` on a seeded reset, a random one if never seeded); seeds set
by :meth:`VecEnv.seed` are used once, at the next :meth:`reset`, as ``DummyVecEnv`` does. Episode
draws are the only per-env Python (one ``integers`` call per finished episode).

The market arrays of all symbols are concatenated once, so that bar ``t`` of symbol ``s`` is row
``offset[s] + t`` of one float32 observation matrix (with two zero columns where the position and
the unrealised PnL go) and one float64 [return, funding] matrix: a step is a few gathers and a
few element-wise operations on arrays of length ``n_envs``.

``env_method("get_state")`` / ``env_method("set_state", state, indices=[i])`` read and write one
env's state in the same dict layout as ``TradingEnv.get_state`` (RNG included), so resumable
training (``train._capture`` / ``train._restore``) works unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from trainrelay.policy.env import TradingEnv, next_unrealised, trade_step
from trainrelay.policy.observations import OBS_CLIP, UPNL_SCALE, SymbolSeries

# Attributes shared by all envs that get_attr / set_attr serve (the per-env state is in arrays).
_SHARED_ATTRS = ("trading_cost", "reward_scale", "turnover_penalty")


class ArrayTradingVecEnv(VecEnv):
    """``n_envs`` trading envs over the same series and episodes, stepped together with numpy."""

    def __init__(
        self,
        series: list[SymbolSeries],
        episodes: list[tuple[int, int, int]],
        trading_cost: float,
        reward_scale: float = 1.0,
        turnover_penalty: float = 0.0,
        n_envs: int = 1,
    ) -> None:
        if not episodes:
            raise ValueError("ArrayTradingVecEnv needs at least one episode of two or more bars")
        if n_envs < 1:
            raise ValueError(f"n_envs must be at least 1, got {n_envs}")
        self.series = series
        self.episodes = episodes
        self.trading_cost = float(trading_cost)
        self.reward_scale = float(reward_scale)
        self.turnover_penalty = float(turnover_penalty)
        self.render_mode = None

        market_dim = series[0].market_obs.shape[1]
        self._market_dim = market_dim
        lengths = np.array([len(s.log_return) for s in series], dtype=np.int64)
        self._offset = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # observation rows with the two state columns zero: a gather gives a fresh [n, D] obs array
        self._obs_rows = np.zeros((int(lengths.sum()), market_dim + 2), dtype=np.float32)
        self._obs_rows[:, :market_dim] = np.concatenate([s.market_obs for s in series])
        self._next_bar = np.stack(
            [
                np.concatenate([np.asarray(s.log_return, dtype=np.float64) for s in series]),
                np.concatenate([np.asarray(s.funding, dtype=np.float64) for s in series]),
            ],
            axis=1,
        )
        # episode e as flat (symbol, first row, last row) arrays for the draws
        self._ep_symbol = np.array([e[0] for e in episodes], dtype=np.int64)
        self._ep_first = np.array([self._offset[e[0]] + e[1] for e in episodes], dtype=np.int64)
        self._ep_last = np.array([self._offset[e[0]] + e[2] for e in episodes], dtype=np.int64)

        observation_space = gym.spaces.Box(-OBS_CLIP, OBS_CLIP, shape=(market_dim + 2,), dtype=np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.metadata = {"render_modes": []}
        self._rngs: list[np.random.Generator | None] = [None] * n_envs
        self._symbol = np.zeros(n_envs, dtype=np.int64)
        self._row = np.zeros(n_envs, dtype=np.int64)  # flat row of the current bar
        self._last = np.zeros(n_envs, dtype=np.int64)  # flat row of the episode's last bar
        self._position = np.zeros(n_envs, dtype=np.float64)
        self._upnl = np.zeros(n_envs, dtype=np.float64)
        self._ep_return = np.zeros(n_envs, dtype=np.float64)
        self._ep_len = np.zeros(n_envs, dtype=np.int64)
        self._actions: np.ndarray | None = None
        super().__init__(n_envs, observation_space, action_space)

    @classmethod
    def like(cls, env: TradingEnv, n_envs: int) -> ArrayTradingVecEnv:
        """The array version of ``n_envs`` copies of ``env`` (same series, episodes, costs)."""
        return cls(env.series, env.episodes, env.trading_cost, env.reward_scale, env.turnover_penalty, n_envs)

    # ---------------------------------------------------------------------------------------------
    # Episodes, observations
    # ---------------------------------------------------------------------------------------------

    def _rng(self, index: int) -> np.random.Generator:
        rng = self._rngs[index]
        if rng is None:  # never seeded: a random generator, as gymnasium's Env.np_random
            rng, _ = seeding.np_random()
            self._rngs[index] = rng
        return rng

    def _start_episodes(self, indices: Sequence[int] | np.ndarray) -> None:
        """Draw a new episode for each env in ``indices`` from its own generator (TradingEnv.reset)."""
        n_episodes = len(self.episodes)
        draws = np.array([int(self._rng(i).integers(n_episodes)) for i in indices], dtype=np.int64)
        self._symbol[indices] = self._ep_symbol[draws]
        self._row[indices] = self._ep_first[draws]
        self._last[indices] = self._ep_last[draws]
        self._position[indices] = 0.0
        self._upnl[indices] = 0.0
        self._ep_return[indices] = 0.0
        self._ep_len[indices] = 0

    def _observe(self, position: np.ndarray, upnl: np.ndarray, rows: np.ndarray) -> np.ndarray:
        obs = self._obs_rows.take(rows, axis=0)  # take: a fresh array, faster than fancy indexing
        obs[:, self._market_dim] = position
        # np.minimum(np.maximum()) is np.clip (NaN too) at half the call overhead on short arrays
        obs[:, self._market_dim + 1] = np.minimum(np.maximum(upnl * UPNL_SCALE, -OBS_CLIP), OBS_CLIP)
        return obs

    # ---------------------------------------------------------------------------------------------
    # VecEnv API
    # ---------------------------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        for index in range(self.num_envs):
            seed = self._seeds[index]
            if seed is not None:  # a seeded reset makes a new generator (gymnasium's Env.reset)
                self._rngs[index], _ = seeding.np_random(seed)
        self._start_episodes(np.arange(self.num_envs))
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return self._observe(self._position, self._upnl, self._row)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        n = self.num_envs
        action = np.asarray(self._actions, dtype=np.float64).reshape(n, -1)[:, 0]
        target = np.minimum(np.maximum(action, -1.0), 1.0)
        position = self._position
        row = self._row + 1
        bar = self._next_bar.take(row, axis=0)
        net, gross, trading, funding = trade_step(position, target, bar[:, 0], bar[:, 1], self.trading_cost)
        shaped = net - self.turnover_penalty * np.abs(target - position)
        rewards = (shaped * self.reward_scale).astype(np.float32)
        self._upnl = next_unrealised(self._upnl, position, target, gross)
        self._position = target
        self._row = row
        self._ep_return += net
        self._ep_len += 1
        dones = row >= self._last  # the episode's bars are used up: truncation, never termination
        obs = self._observe(target, self._upnl, row)

        done_list = dones.tolist()
        infos: list[dict[str, Any]] = [
            {"gross": g, "cost": c, "funding": f, "TimeLimit.truncated": d}
            for g, c, f, d in zip(gross.tolist(), trading.tolist(), funding.tolist(), done_list, strict=True)
        ]
        if True in done_list:
            finished = np.flatnonzero(dones)
            terminal = obs[finished]  # a copy: the rows are overwritten by the next episodes' first obs
            for k, index in enumerate(finished.tolist()):
                info = infos[index]
                # the gymnasium env's key order: its own info, then what DummyVecEnv adds
                infos[index] = {
                    "gross": info["gross"],
                    "cost": info["cost"],
                    "funding": info["funding"],
                    # read by SB3's episode-info buffer, in unscaled log-return units
                    "episode": {"r": float(self._ep_return[index]), "l": int(self._ep_len[index]), "t": 0.0},
                    "TimeLimit.truncated": True,
                    "terminal_observation": terminal[k].copy(),
                }
                self.reset_infos[index] = {}
            self._start_episodes(finished)
            obs[finished] = self._observe(self._position[finished], self._upnl[finished], self._row[finished])
        return obs, rewards, dones, infos

    def close(self) -> None:
        return None

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int | np.integer):
            return [int(indices)]
        assert isinstance(indices, Iterable)
        return [int(i) for i in indices]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Shared attributes (spaces, series, episodes, costs, render_mode) and ``np_random`` per env."""
        targets = self._indices(indices)
        if attr_name == "np_random":
            return [self._rng(i) for i in targets]
        shared = {
            "render_mode",
            "metadata",
            "observation_space",
            "action_space",
            "series",
            "episodes",
            *_SHARED_ATTRS,
        }
        if attr_name not in shared:
            raise AttributeError(f"ArrayTradingVecEnv has no per-env attribute '{attr_name}'")
        value = getattr(self, attr_name)
        return [value for _ in targets]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Only the shared cost parameters, and only for all envs at once."""
        if attr_name not in _SHARED_ATTRS or self._indices(indices) != list(range(self.num_envs)):
            raise AttributeError(
                f"ArrayTradingVecEnv can set only {', '.join(_SHARED_ATTRS)}, for all envs at once "
                f"(not '{attr_name}' for {indices}); per-env state goes through env_method('set_state')"
            )
        setattr(self, attr_name, float(value))

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """``get_state`` and ``set_state`` of single envs, as ``TradingEnv`` has them."""
        methods = {"get_state": self.get_env_state, "set_state": self.set_env_state}
        if method_name not in methods:
            raise AttributeError(f"ArrayTradingVecEnv has no per-env method '{method_name}'")
        return [methods[method_name](i, *method_args, **method_kwargs) for i in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]  # no gymnasium env, so no wrapper either

    # Exact resume: one env's state in TradingEnv.get_state's layout (plain Python values + RNG state).
    def get_env_state(self, index: int) -> dict[str, Any]:
        symbol = int(self._symbol[index])
        offset = int(self._offset[symbol])
        return {
            "symbol": symbol,
            "t": int(self._row[index]) - offset,
            "end": int(self._last[index]) - offset,
            "position": float(self._position[index]),
            "upnl": float(self._upnl[index]),
            "ep_return": float(self._ep_return[index]),
            "ep_len": int(self._ep_len[index]),
            "rng": self._rng(index).bit_generator.state,
        }

    def set_env_state(self, index: int, state: dict[str, Any]) -> None:
        symbol = int(state["symbol"])
        offset = int(self._offset[symbol])
        self._symbol[index] = symbol
        self._row[index] = offset + int(state["t"])
        self._last[index] = offset + int(state["end"])
        self._position[index] = state["position"]
        self._upnl[index] = state["upnl"]
        self._ep_return[index] = state["ep_return"]
        self._ep_len[index] = state["ep_len"]
        self._rng(index).bit_generator.state = state["rng"]

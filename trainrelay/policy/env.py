"""The trading environment: one symbol, one episode of consecutive bars, a target position per bar.

At bar t the agent sees the market observation of bar t (known at its close), its current position
and the unrealised PnL of the open trade, and chooses the target position p in [-1, 1] held until
bar t+1. The reward is ``p * r_{t+1} - cost * |p - p_prev| - p * funding_{t+1}`` (log returns;
a long pays a positive funding rate at funding times, a short receives it), multiplied by
``reward_scale`` so that PPO sees rewards of order one. ``turnover_penalty`` (training only) is an
extra charge per unit of position change on top of the trading cost: it makes the learned policy
hold its position through noise that would otherwise flip it bar to bar. Evaluation uses
:func:`trade_step` too, so the backtest and the training reward are the same arithmetic.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from trainrelay.policy.observations import OBS_CLIP, UPNL_SCALE, SymbolSeries


def trade_step(
    position: np.ndarray | float,
    target: np.ndarray | float,
    next_return: np.ndarray | float,
    next_funding: np.ndarray | float,
    cost: float,
) -> tuple[Any, Any, Any, Any]:
    """(net, gross, trading cost, funding paid) in log-return units for holding ``target`` one bar."""
    gross = target * next_return
    trading = cost * np.abs(target - position)
    funding = target * next_funding
    return gross - trading - funding, gross, trading, funding


def next_unrealised(
    upnl: np.ndarray | float, position: np.ndarray | float, target: np.ndarray | float, gross: Any
) -> Any:
    """Unrealised PnL of the open trade: reset when the position's side changes or goes flat."""
    same_side = np.sign(target) == np.sign(position)
    return np.where(same_side & (np.sign(target) != 0), upnl, 0.0) + gross


class TradingEnv(gym.Env):
    """Episodes are (symbol, first row, last row) triples sampled uniformly from ``episodes``."""

    metadata = {"render_modes": []}  # noqa: RUF012 — gymnasium's own convention

    def __init__(
        self,
        series: list[SymbolSeries],
        episodes: list[tuple[int, int, int]],
        trading_cost: float,
        reward_scale: float = 1.0,
        turnover_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        if not episodes:
            raise ValueError("TradingEnv needs at least one episode of two or more bars")
        self.series = series
        self.episodes = episodes
        self.trading_cost = float(trading_cost)
        self.reward_scale = float(reward_scale)
        self.turnover_penalty = float(turnover_penalty)
        market_dim = series[0].market_obs.shape[1]
        self.observation_space = gym.spaces.Box(
            -OBS_CLIP, OBS_CLIP, shape=(market_dim + 2,), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._symbol = 0
        self._t = 0
        self._end = 0
        self._position = 0.0
        self._upnl = 0.0
        self._ep_return = 0.0
        self._ep_len = 0

    def _obs(self) -> np.ndarray:
        market = self.series[self._symbol].market_obs[self._t]
        state = np.array([self._position, np.clip(self._upnl * UPNL_SCALE, -OBS_CLIP, OBS_CLIP)], np.float32)
        return np.concatenate([market, state]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._symbol, self._t, self._end = self.episodes[int(self.np_random.integers(len(self.episodes)))]
        self._position = 0.0
        self._upnl = 0.0
        self._ep_return = 0.0
        self._ep_len = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        target = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        s = self.series[self._symbol]
        nxt = self._t + 1
        net, gross, trading, funding = trade_step(
            self._position, target, s.log_return[nxt], s.funding[nxt], self.trading_cost
        )
        shaped = float(net) - self.turnover_penalty * abs(target - self._position)
        self._upnl = float(next_unrealised(self._upnl, self._position, target, gross))
        self._position = target
        self._t = nxt
        self._ep_return += float(net)
        self._ep_len += 1
        truncated = self._t >= self._end  # the episode's bars are used up: a time limit, not a terminal state
        info: dict[str, Any] = {"gross": float(gross), "cost": float(trading), "funding": float(funding)}
        if truncated:
            # read by SB3's episode-info buffer (what Monitor would provide), in unscaled log-return units
            info["episode"] = {"r": self._ep_return, "l": self._ep_len, "t": 0.0}
        return self._obs(), shaped * self.reward_scale, False, truncated, info

    # Exact resume: the mid-episode state and the RNG of the env travel with the training state.
    def get_state(self) -> dict[str, Any]:
        return {
            "symbol": self._symbol,
            "t": self._t,
            "end": self._end,
            "position": self._position,
            "upnl": self._upnl,
            "ep_return": self._ep_return,
            "ep_len": self._ep_len,
            "rng": self.np_random.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._symbol, self._t, self._end = state["symbol"], state["t"], state["end"]
        self._position, self._upnl = state["position"], state["upnl"]
        self._ep_return, self._ep_len = state["ep_return"], state["ep_len"]
        self.np_random.bit_generator.state = state["rng"]

"""The strategies compared in the backtest: positions held over each bar of a test window.

A :class:`Window` is one symbol's test block: decisions at bars 0..T-2 (at their close), each held
until the next bar. Every strategy returns a position array of length T-1 in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainrelay.policy.env import next_unrealised, trade_step
from trainrelay.policy.observations import OBS_CLIP, UPNL_SCALE, SymbolSeries


@dataclass
class Window:
    symbol: str
    timestamp: np.ndarray  # [T] bar close times (ms)
    market_obs: np.ndarray  # [T, d]
    next_log_return: np.ndarray  # [T-1] return of the bar after each decision
    next_funding: np.ndarray  # [T-1] funding rate settled at the close of that bar (0 if none)
    fc_return: np.ndarray  # [T]
    fc_valid: np.ndarray  # [T]

    @classmethod
    def from_series(cls, s: SymbolSeries, lo: int, hi: int) -> Window:
        return cls(
            symbol=s.symbol,
            timestamp=s.timestamp[lo : hi + 1],
            market_obs=s.market_obs[lo : hi + 1],
            next_log_return=s.log_return[lo + 1 : hi + 1],
            next_funding=s.funding[lo + 1 : hi + 1],
            fc_return=s.fc_return[lo : hi + 1],
            fc_valid=s.fc_valid[lo : hi + 1],
        )

    @property
    def steps(self) -> int:
        return len(self.timestamp) - 1


def buy_and_hold(w: Window) -> np.ndarray:
    return np.ones(w.steps)


def flat(w: Window) -> np.ndarray:
    return np.zeros(w.steps)


def forecast_sign(w: Window) -> np.ndarray:
    """Long when the forecast return is positive, short when negative, flat where it is not valid."""
    return np.where(w.fc_valid[:-1], np.sign(w.fc_return[:-1]), 0.0)


@torch.no_grad()
def policy_positions(actor: torch.nn.Module, windows: list[Window], cost: float) -> list[np.ndarray]:
    """Run the deterministic policy over all windows at once (batch = symbols), feeding back its
    own position and unrealised PnL exactly as the training env does."""
    n, steps = len(windows), max(w.steps for w in windows)
    dim = windows[0].market_obs.shape[1]
    market = np.zeros((n, steps, dim), np.float32)
    returns = np.zeros((n, steps))
    funding = np.zeros((n, steps))
    for i, w in enumerate(windows):  # shorter windows are zero-padded at the end and cut off below
        market[i, : w.steps] = w.market_obs[:-1]
        returns[i, : w.steps] = w.next_log_return
        funding[i, : w.steps] = w.next_funding
    position, upnl = np.zeros(n), np.zeros(n)
    out = np.zeros((n, steps))
    for t in range(steps):
        state = np.stack([position, np.clip(upnl * UPNL_SCALE, -OBS_CLIP, OBS_CLIP)], axis=1)
        obs = torch.from_numpy(np.concatenate([market[:, t], state.astype(np.float32)], axis=1))
        target = actor(obs)[:, 0].double().numpy()
        _, gross, _, _ = trade_step(position, target, returns[:, t], funding[:, t], cost)
        upnl = next_unrealised(upnl, position, target, gross)
        position = target
        out[:, t] = target
    return [out[i, : w.steps] for i, w in enumerate(windows)]

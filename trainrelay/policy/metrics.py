"""Backtest metrics of a portfolio return series (simple returns per bar)."""

from __future__ import annotations

from typing import Any

import numpy as np

YEAR_MS = 365.25 * 86_400_000  # crypto trades around the clock: a year is every bar of 365.25 days


def bars_per_year(timestamps_ms: np.ndarray) -> float:
    """Bars in a year, from the median spacing of the bar timestamps."""
    steps = np.diff(np.unique(timestamps_ms))
    if steps.size == 0:
        raise ValueError("need at least two bar timestamps to know the bar interval")
    return YEAR_MS / float(np.median(steps))


def sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    """Annualised Sharpe ratio (zero risk-free rate); 0.0 for a series without variance (e.g. flat)."""
    if returns.size < 2:
        return 0.0
    std = float(np.std(returns, ddof=1))
    if std < 1e-15:
        return 0.0
    return float(np.mean(returns) / std * np.sqrt(periods_per_year))


def max_drawdown(returns: np.ndarray) -> float:
    """Largest peak-to-trough loss of the equity curve, as a positive fraction (0.25 = -25 %)."""
    equity = np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    return float(np.max(1.0 - equity / np.maximum.accumulate(equity)))


def strategy_metrics(
    portfolio_returns: np.ndarray,
    positions: list[np.ndarray],
    gross: list[np.ndarray],
    periods_per_year: float,
) -> dict[str, Any]:
    """Metrics of one strategy.

    ``portfolio_returns``: equal-weight net returns per bar; ``positions``/``gross``: per symbol,
    the position held over each bar and its gross return (position x price return).
    turnover: mean |position change| per symbol-bar (entry from flat included);
    hit_rate: share of symbol-bars with a position whose gross return was positive (None if never
    in the market).
    """
    changes = np.concatenate([np.abs(np.diff(np.concatenate([[0.0], p]))) for p in positions])
    held = np.concatenate([p != 0 for p in positions])
    wins = np.concatenate([g > 0 for g in gross])
    return {
        "cumulative_return": float(np.prod(1.0 + portfolio_returns) - 1.0),
        "sharpe": sharpe(portfolio_returns, periods_per_year),
        "max_drawdown": max_drawdown(portfolio_returns),
        "turnover": float(changes.mean()) if changes.size else 0.0,
        "hit_rate": float(wins[held].mean()) if held.any() else None,
    }

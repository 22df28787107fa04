"""Statistics behind the policy verdict: bootstrap intervals, the deflated Sharpe ratio.

One job: numbers with their uncertainty, from return series. Nothing here knows about folds,
strategies or files (that is :mod:`trainrelay.policy.evaluate`).

* Stationary bootstrap (Politis & Romano 1994, "The Stationary Bootstrap", JASA 89(428)): blocks
  of geometrically distributed length with mean ``block`` bars, wrapped around the end of the
  series, so resamples keep the short-range dependence of bar returns. The block indices come from
  ``arch.bootstrap.StationaryBootstrap`` (the maintained implementation); the Sharpe ratios of all
  resamples are then computed at once with numpy. Every series of one call is resampled with the
  *same* indices, so differences between strategies are paired.
* Probabilistic Sharpe ratio (Bailey & López de Prado 2012, "The Sharpe Ratio Efficient
  Frontier", J. of Risk 15(2)) and the deflated Sharpe ratio (Bailey & López de Prado 2014, "The
  Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest Overfitting and Non-Normality",
  J. of Portfolio Management 40(5)). Both work with per-bar (not annualised) Sharpe ratios and the
  number of return observations T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Euler-Mascheroni constant γ of the expected maximum of N standard normals (DSR paper, eq. for
# E[max SR_n]).
EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()
# Keep one resampled block of returns under ~20 M floats: a year of 1-minute bars x 2000
# replications would otherwise need gigabytes.
_MAX_CELLS = 20_000_000


def sharpe_rows(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """Annualised Sharpe ratio of every row of ``returns`` (shape [..., T]); 0.0 without variance.

    The same convention as :func:`trainrelay.policy.metrics.sharpe` (ddof=1, zero risk-free rate),
    vectorised over the leading axes so all bootstrap replications are scored at once.
    """
    mean = returns.mean(axis=-1)
    std = returns.std(axis=-1, ddof=1)
    # a flat strategy (or a resample of constant bars) has no Sharpe ratio; 0.0 as in metrics.sharpe
    safe = np.where(std < 1e-15, 1.0, std)
    return np.where(std < 1e-15, 0.0, mean / safe * math.sqrt(periods_per_year))


def mean_block_length(n_bars: int, bars_per_day: float, min_blocks: int = 10) -> float:
    """Mean block length of the stationary bootstrap: about a day of bars.

    Capped at ``n_bars / min_blocks`` so that a short series still consists of ~``min_blocks``
    blocks; with blocks as long as the series every resample is a rotation of the original and the
    interval would collapse to a point. Such series are flagged as too short by the caller anyway.
    """
    return float(max(1.0, min(bars_per_day, n_bars / min_blocks)))


def bootstrap_indices(n_bars: int, block: float, reps: int, seed: int | np.random.SeedSequence) -> np.ndarray:
    """[reps, n_bars] stationary-bootstrap resampling indices (Politis & Romano 1994), from ``arch``.

    ``seed`` fixes the draw, so a rerun writes the same intervals (policy.json is deterministic).
    """
    # arch imports statsmodels (seconds); only evaluate_policy needs it, so import it here
    from arch.bootstrap import StationaryBootstrap

    rng = np.random.default_rng(seed)
    sampler = StationaryBootstrap(block, np.zeros(n_bars), seed=rng)
    return np.stack([sampler.update_indices() for _ in range(reps)])


def bootstrap_sharpes(returns: np.ndarray, indices: np.ndarray, periods_per_year: float) -> np.ndarray:
    """[k, reps] annualised Sharpe ratios of the k series in ``returns`` [k, T] under ``indices``.

    The same index rows for every series: the k Sharpe ratios of one replication come from the same
    resampled bars, which is what makes their differences paired.
    """
    k, n_bars = returns.shape
    chunk = max(1, _MAX_CELLS // max(1, k * n_bars))
    out = np.empty((k, indices.shape[0]))
    for lo in range(0, indices.shape[0], chunk):
        rows = indices[lo : lo + chunk]
        out[:, lo : lo + chunk] = sharpe_rows(returns[:, rows], periods_per_year)
    return out


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron): the (1-c)/2 and (1+c)/2 quantiles of ``samples``."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def two_sided_p_value(samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the statistic is 0" from its bootstrap distribution.

    Twice the share of replications on the far side of zero, ties counted on both sides, with the
    usual +1 correction (Davison & Hinkley 1997, ch. 4) so the p-value is never exactly 0:
    ``p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1))``. It inverts the percentile
    interval: p < 1 - confidence exactly when the interval excludes 0 (up to the discreteness of B).
    Identical series give d* = 0 everywhere, hence p = 1.
    """
    reps = samples.size
    below = int(np.count_nonzero(samples <= 0.0))
    above = int(np.count_nonzero(samples >= 0.0))
    return float(min(1.0, 2.0 * (1 + min(below, above)) / (reps + 1)))


def moments(returns: np.ndarray) -> tuple[float, float, float, int]:
    """(per-bar Sharpe, skewness γ3, kurtosis γ4 (not excess; 3 for a normal), T) of a return series.

    γ3, γ4 are the plug-in (population) moment ratios used in the PSR of Bailey & López de Prado
    (2012); the Sharpe ratio uses ddof=1 like the rest of the backtest.
    """
    r = np.asarray(returns, dtype=float)
    n = int(r.size)
    if n < 2:
        return 0.0, 0.0, 3.0, n
    centred = r - r.mean()
    m2 = float(np.mean(centred**2))
    if m2 < 1e-30:
        return 0.0, 0.0, 3.0, n
    skew = float(np.mean(centred**3) / m2**1.5)
    kurt = float(np.mean(centred**4) / m2**2)
    return float(r.mean() / r.std(ddof=1)), skew, kurt, n


def probabilistic_sharpe(
    sr: float, benchmark: float, n_obs: int, skew: float, kurtosis: float
) -> float | None:
    """PSR(SR*): probability that the true per-bar Sharpe ratio exceeds ``benchmark``.

    Bailey & López de Prado (2012), PSR equation (restated in the 2014 DSR paper):
    ``PSR(SR*) = Z[ (SR^ - SR*) * sqrt(T - 1) / sqrt(1 - γ3 SR^ + (γ4 - 1)/4 * SR^2) ]``
    with per-bar SR^, T observations, skewness γ3 and (non-excess) kurtosis γ4. None when T < 2
    or the denominator vanishes (no variance: nothing to test).
    """
    if n_obs < 2:
        return None
    # >= 0 in exact arithmetic (γ4 >= γ3^2 + 1); guard rounding and degenerate inputs
    denominator = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    if denominator <= 0.0:
        return None
    z = (sr - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denominator)
    return float(_NORMAL.cdf(z))


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """E[max_n SR_n] of ``n_trials`` independent trials with true Sharpe 0, in per-bar units.

    Bailey & López de Prado (2014), expected maximum Sharpe ratio under the null (from the
    False Strategy theorem, their appendix):
    ``SR0 = sqrt(V[SR_n]) * ((1 - γ) Z^-1[1 - 1/N] + γ Z^-1[1 - 1/(N e)])``, γ the
    Euler-Mascheroni constant, Z^-1 the standard normal quantile. 0 for a single trial (no
    selection, and the formula's Z^-1[0] is undefined).
    """
    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    if n_trials == 1:
        return 0.0
    quantile = _NORMAL.inv_cdf
    spread = (1.0 - EULER_GAMMA) * quantile(1.0 - 1.0 / n_trials) + EULER_GAMMA * quantile(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return float(math.sqrt(max(variance, 0.0)) * spread)


def null_sharpe_variance(n_obs: int) -> float:
    """Variance of a per-bar Sharpe estimate whose true value is 0, for normal returns: 1 / (T - 1).

    The PSR denominator at SR = 0 (Bailey & López de Prado 2012; Lo 2002's asymptotic variance
    (1 + SR²/2) / T at SR = 0): what the spread of the trials' Sharpe ratios would be if none of
    them had skill and they were independent.
    """
    return 1.0 / max(1, n_obs - 1)


@dataclass(frozen=True)
class Deflated:
    """A deflated Sharpe ratio with what went into it (per-bar units unless said otherwise)."""

    dsr: float | None
    sharpe: float
    expected_max_sharpe: float
    n_trials: int
    sharpe_variance: float
    skewness: float
    kurtosis: float
    n_obs: int


def deflated_sharpe(
    sr: float, n_obs: int, skew: float, kurtosis: float, n_trials: int, sharpe_variance: float
) -> Deflated:
    """DSR = PSR(SR0) with SR0 the expected maximum Sharpe of ``n_trials`` null trials.

    Bailey & López de Prado (2014), DSR definition:
    ``DSR = Z[ (SR^ - SR0) sqrt(T - 1) / sqrt(1 - γ3 SR^ + (γ4 - 1)/4 SR^2) ]``; the probability
    that the selected strategy's true Sharpe ratio exceeds what the best of ``n_trials`` skill-less
    configurations would show. ``sharpe_variance`` is V[SR_n] across the trials, per-bar units.
    """
    sr0 = expected_max_sharpe(n_trials, sharpe_variance)
    return Deflated(
        dsr=probabilistic_sharpe(sr, sr0, n_obs, skew, kurtosis),
        sharpe=sr,
        expected_max_sharpe=sr0,
        n_trials=n_trials,
        sharpe_variance=sharpe_variance,
        skewness=skew,
        kurtosis=kurtosis,
        n_obs=n_obs,
    )

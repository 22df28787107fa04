"""The verdict's statistics against published values and simulations with a known answer."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from trainrelay.policy import significance as sig

# Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", section "A numerical example": 100
# trials whose annualised Sharpe ratios have variance 1/2, the best annualised Sharpe 2.5 over
# T = 1250 daily returns (5 years of 250 days) with skewness -3 and kurtosis 10. Per-day units.
DAYS = 250
SR_DAILY = 2.5 / math.sqrt(DAYS)
V_DAILY = 0.5 / DAYS


def test_deflated_sharpe_reproduces_the_published_example() -> None:
    # the paper prints E[max SR] = 0.1132 (per day) and DSR = 0.9004
    assert sig.expected_max_sharpe(100, V_DAILY) == pytest.approx(0.1132, abs=5e-5)
    result = sig.deflated_sharpe(SR_DAILY, 1250, -3.0, 10.0, n_trials=100, sharpe_variance=V_DAILY)
    assert result.dsr == pytest.approx(0.9004, abs=5e-5)
    assert result.expected_max_sharpe * math.sqrt(DAYS) == pytest.approx(1.7894, abs=5e-4)
    # the paper's follow-ups: after only N = 46 trials the DSR would have been 0.9505, and with
    # normal returns (skewness 0, kurtosis 3) the strategy survives up to N = 88 (DSR 0.9505)
    at_46 = sig.deflated_sharpe(SR_DAILY, 1250, -3.0, 10.0, n_trials=46, sharpe_variance=V_DAILY)
    assert at_46.dsr == pytest.approx(0.9505, abs=5e-5)
    normal = sig.deflated_sharpe(SR_DAILY, 1250, 0.0, 3.0, n_trials=88, sharpe_variance=V_DAILY)
    assert normal.dsr == pytest.approx(0.9505, abs=5e-5)


def test_probabilistic_sharpe_reproduces_the_2012_example() -> None:
    # Bailey & López de Prado (2012), "The Sharpe Ratio Efficient Frontier": a hedge fund with 24
    # monthly returns, annualised Sharpe 1.585, skewness -2.448, kurtosis 10.164; PSR(0) = 0.9132
    # (the value pypbo's test asserts for the same example)
    monthly = 1.585 / math.sqrt(12)
    assert sig.probabilistic_sharpe(monthly, 0.0, 24, -2.448, 10.164) == pytest.approx(0.91323, abs=5e-5)
    # normal returns: the denominator is Lo's (2002) asymptotic variance 1 + SR^2 / 2
    expected = NormalDist().cdf(0.1 * math.sqrt(499) / math.sqrt(1 + 0.1**2 / 2))
    assert sig.probabilistic_sharpe(0.1, 0.0, 500, 0.0, 3.0) == pytest.approx(expected, rel=1e-12)
    # at the benchmark itself the probability is a coin flip; no track record, no probability
    assert sig.probabilistic_sharpe(0.2, 0.2, 100, -1.0, 6.0) == pytest.approx(0.5)
    assert sig.probabilistic_sharpe(0.2, 0.0, 1, 0.0, 3.0) is None


def test_expected_maximum_grows_with_trials_and_is_zero_for_one() -> None:
    assert sig.expected_max_sharpe(1, 0.01) == 0.0
    values = [sig.expected_max_sharpe(n, 0.01) for n in (2, 10, 100, 1000)]
    assert values == sorted(values) and values[0] > 0
    assert sig.null_sharpe_variance(1001) == pytest.approx(1e-3)


def test_moments_of_a_known_series() -> None:
    returns = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    sr, skew, kurt, n = sig.moments(returns)
    c = returns - returns.mean()
    assert n == 5 and sr == pytest.approx(returns.mean() / returns.std(ddof=1))
    assert skew == pytest.approx(np.mean(c**3) / np.mean(c**2) ** 1.5)
    assert kurt == pytest.approx(np.mean(c**4) / np.mean(c**2) ** 2)
    assert sig.moments(np.zeros(10)) == (0.0, 0.0, 3.0, 10)


def test_stationary_bootstrap_interval_covers_the_true_sharpe() -> None:
    """200 iid normal series with per-bar Sharpe 0.1: the 95 % interval holds it ~95 % of the time."""
    rng = np.random.default_rng(2024)
    n_series, n_bars, true_sharpe = 200, 250, 0.1
    series = rng.normal(true_sharpe * 0.01, 0.01, size=(n_series, n_bars))
    block = sig.mean_block_length(n_bars, bars_per_day=5)
    # one set of resampling indices serves every series (they are independent of the data)
    indices = sig.bootstrap_indices(n_bars, block, 1000, seed=11)
    boot = sig.bootstrap_sharpes(series, indices, periods_per_year=1.0)
    bounds = np.quantile(boot, [0.025, 0.975], axis=1)
    coverage = float(np.mean((bounds[0] <= true_sharpe) & (true_sharpe <= bounds[1])))
    # binomial sd at 95 % over 200 series is 1.5 points
    assert 0.91 <= coverage <= 0.99, coverage


def test_paired_difference_of_identical_series_has_p_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.001, 0.01, 400)
    indices = sig.bootstrap_indices(400, 20.0, 500, seed=3)
    boot = sig.bootstrap_sharpes(np.stack([x, x]), indices, 365.0)
    diff = boot[0] - boot[1]
    assert sig.two_sided_p_value(diff) == 1.0
    assert sig.percentile_interval(diff) == (0.0, 0.0)


def test_paired_difference_detects_a_real_edge() -> None:
    rng = np.random.default_rng(1)
    market = rng.normal(0.0, 0.01, 2000)
    better = market + 0.004  # the same bars plus a large constant edge
    indices = sig.bootstrap_indices(2000, 24.0, 1000, seed=5)
    boot = sig.bootstrap_sharpes(np.stack([better, market]), indices, 365.0)
    diff = boot[0] - boot[1]
    low, _ = sig.percentile_interval(diff)
    assert low > 0 and sig.two_sided_p_value(diff) < 0.01
    # the +1 correction keeps the p-value above 0 even when every replication agrees
    assert sig.two_sided_p_value(np.ones(999)) == pytest.approx(2 / 1000)


def test_bootstrap_is_seeded_and_blocks_are_a_day() -> None:
    a = sig.bootstrap_indices(300, 10.0, 50, seed=7)
    b = sig.bootstrap_indices(300, 10.0, 50, seed=7)
    c = sig.bootstrap_indices(300, 10.0, 50, seed=8)
    assert a.shape == (50, 300) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 300
    assert sig.mean_block_length(10_000, bars_per_day=96) == 96.0  # 15-minute bars: one day
    assert sig.mean_block_length(500, bars_per_day=96) == 50.0  # short series: still 10 blocks
    assert sig.mean_block_length(5, bars_per_day=96) == 1.0


def test_flat_series_have_zero_sharpe_in_every_replication() -> None:
    boot = sig.bootstrap_sharpes(np.zeros((1, 100)), sig.bootstrap_indices(100, 5.0, 20, seed=0), 365.0)
    assert np.all(boot == 0.0)

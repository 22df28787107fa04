"""bench/planted_signal.py's analysis (pooling, paired intervals, verdict) on arrays of known outcome.

No snakemake here: the workflow part is exercised by running the benchmark itself (docs/policy.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "planted_signal.py"
DAYS = 15  # per seed; 5 seeds give 75 pooled days, above the benchmark's 60-day minimum
BARS = DAYS * 96


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("planted_signal", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["planted_signal"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _seeds(edge: float, seeds: int = 5) -> dict[int, dict[str, np.ndarray]]:
    """Per seed: buy-and-hold and no_text as noise, the policy = no_text + ``edge`` per bar."""
    out = {}
    for s in range(seeds):
        rng = np.random.default_rng(s)
        hold = rng.normal(0.0, 0.003, BARS)
        no_text = rng.normal(0.0, 0.003, BARS)
        out[s] = {
            "policy": no_text + edge + rng.normal(0.0, 0.0005, BARS),
            "buy_and_hold": hold,
            "no_text": no_text,
        }
    return out


def test_clear_edge_is_found(bench: ModuleType) -> None:
    result = bench.analyse(_seeds(edge=0.001), reps=400)
    pooled = result["pooled"]
    assert result["verdict"] == "found"
    assert pooled["no_text"]["days"] == pytest.approx(5 * DAYS)
    assert pooled["no_text"]["ci_low"] > 0 and pooled["buy_and_hold"]["ci_low"] > 0
    assert pooled["no_text"]["p_value"] < 0.01
    # the pooled point difference is the Sharpe of the concatenated series, not a mean of the seeds'
    joined = bench.pool(_seeds(edge=0.001))
    per_year = 96 * 365.25
    expected = bench.sig.sharpe_rows(joined["policy"], per_year) - bench.sig.sharpe_rows(
        joined["no_text"], per_year
    )
    assert pooled["no_text"]["diff"] == pytest.approx(float(expected))
    assert set(result["seeds"]) == {0, 1, 2, 3, 4}


def test_no_edge_is_not_found(bench: ModuleType) -> None:
    result = bench.analyse(_seeds(edge=0.0), reps=400)
    assert result["verdict"] == "not found"
    assert result["pooled"]["no_text"]["ci_low"] < 0 < result["pooled"]["no_text"]["ci_high"]


def test_beating_only_one_baseline_is_not_found(bench: ModuleType) -> None:
    # the policy beats buy-and-hold (which loses) but is no_text exactly: text added nothing
    seeds = _seeds(edge=0.0)
    for series in seeds.values():
        series["policy"] = series["no_text"] + 0.0005
        series["buy_and_hold"] = series["buy_and_hold"] - 0.001
        series["no_text"] = series["policy"].copy()
    result = bench.analyse(seeds, reps=400)
    assert result["pooled"]["buy_and_hold"]["ci_low"] > 0
    assert result["pooled"]["no_text"]["diff"] == 0.0 and result["pooled"]["no_text"]["p_value"] == 1.0
    assert result["verdict"] == "not found"


def test_short_pool_is_too_short(bench: ModuleType) -> None:
    assert bench.analyse(_seeds(edge=0.001, seeds=2), reps=200)["verdict"] == "too short"


def test_signal_strength_counts_switches_within_the_window(bench: ModuleType) -> None:
    hour = 3_600_000
    switches = np.array([10 * hour, 30 * hour], dtype=np.int64)
    headlines = np.array([5 * hour, 3 * hour, 29 * hour, 31 * hour], dtype=np.int64)  # 2 of 4 lead a switch
    out = bench.signal_strength(headlines, switches, (0, 40 * hour), hour, 6 * hour)
    assert out["followed"] == 0.5
    # grid hours 4..9 and 24..29 (6 + 6 of 40) have the next switch within 6 h (at a switch the
    # next one is the following switch, as in tests/test_synthetic.py)
    assert out["chance"] == pytest.approx(12 / 40)

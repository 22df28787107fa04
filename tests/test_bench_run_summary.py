"""bench/run_summary.py: time per rule from Snakemake benchmark files and the policy tables."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run_summary.py"
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_summary", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_summary"] = module
    spec.loader.exec_module(module)
    return module


def _tsv(path: Path, seconds: float, rss: float, cpu: float) -> None:
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_rule_times_sum_the_jobs_of_a_rule(bench: ModuleType, tmp_path: Path) -> None:
    _tsv(tmp_path / "train_forecaster.tsv", 100.0, 400.0, 180.0)
    _tsv(tmp_path / "train_policy_fold_0.tsv", 20.0, 300.0, 30.0)
    _tsv(tmp_path / "train_policy_fold_1.tsv", 30.0, 350.0, 40.0)
    _tsv(tmp_path / "train_policy_ablation_no_forecast_1.tsv", 5.0, 200.0, 6.0)
    times = {r["rule"]: r for r in bench.rule_times(tmp_path)}
    assert set(times) == {"train_forecaster", "train_policy_fold", "train_policy_ablation"}
    fold = times["train_policy_fold"]
    assert (fold["jobs"], fold["wall_s"], fold["cpu_s"], fold["max_rss_mib"]) == (2, 50.0, 70.0, 350.0)
    assert next(r["rule"] for r in bench.rule_times(tmp_path)) == "train_forecaster"  # slowest first


def test_policy_rows_carry_the_intervals_and_the_missing_run_is_one_line(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = {
        "sharpe": 1.5, "sharpe_ci_low": -0.5, "sharpe_ci_high": 3.0, "sharpe_diff_vs_buy_and_hold": 0.4,
        "sharpe_diff_ci_low": -1.0, "sharpe_diff_ci_high": 1.8, "sharpe_diff_p_value": 0.6,
        "cumulative_return": 0.12, "max_drawdown": 0.2, "turnover": 0.01,
    }  # fmt: skip
    policy = {
        "folds": [
            {"fold": 0, "start": "2024-07-01T00:15:00Z", "test_days": 31.0, "strategies": {"policy": s}}
        ],
        "strategies": {"policy": s},
        "ablations": {"no_forecast": s},
    }
    folds, pooled = bench.policy_rows(policy)
    assert folds[0]["where"] == "0: 2024-07-01 (31 d)" and folds[0]["diff_ci"] == [-1.0, 1.8]
    assert [r["strategy"] for r in pooled] == ["policy", "ablation no_forecast"]
    table = bench.markdown([], [], folds, pooled)
    assert "| +1.50 [-0.50, +3.00] | +0.40 [-1.00, +1.80] | 0.60 |" in table
    assert bench.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finish the run first" in err[0]
    json.dumps(folds)  # JSON-ready

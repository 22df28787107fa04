"""The whole DAG on a tiny config: real snakemake, values checked, rebuilds deterministic."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import copy_workflow, run_snakemake, write_config
from trainrelay.deep_merge import deep_merge

pytestmark = pytest.mark.slow

FAST = {
    "until": "dashboard",
    "forecaster": {"train": {"epochs": 2}, "dlinear_train": {"epochs": 1}},
    "policy": {"ablations": ["no_text"], "ppo": {"total_timesteps": 4096, "n_envs": 2, "n_steps": 512}},
    "benchmark": {"iterations": 10, "trials": 3, "warmup_iterations": 5, "warmup_ms": 20},
}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    workdir = copy_workflow(tmp_path_factory.mktemp("full") / "wf")
    config = write_config(workdir, FAST)
    started = time.monotonic()
    run_snakemake(workdir, "--configfile", str(config))
    return workdir, time.monotonic() - started


def test_every_stage_produced_valid_artifacts(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    validation = json.loads((workdir / "results/tiny/validation.json").read_text())
    failed = [check for check in validation["checks"] if not check["passed"]]
    assert validation["passed"] and not failed, failed
    assert len(validation["checks"]) >= 15


def test_forecaster_beats_naive_and_policy_has_all_strategies(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    forecaster = json.loads((workdir / "results/tiny/metrics/forecaster.json").read_text())
    assert forecaster["models"]["patchtst"]["val_mse"] < forecaster["models"]["naive"]["val_mse"]
    policy = json.loads((workdir / "results/tiny/metrics/policy.json").read_text())
    assert set(policy["strategies"]) == {"policy", "buy_and_hold", "flat", "forecast_sign"}
    assert policy["strategies"]["flat"]["cumulative_return"] == 0.0
    assert len(policy["folds"]) == 2
    assert "no_text" in policy["ablations"]
    assert policy["verdict"]


def test_unavailable_engines_are_rows_with_reasons(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    rows = pl.read_parquet(workdir / "results/tiny/benchmark/metrics.parquet")
    ok = rows.filter(pl.col("status") == "ok")
    assert set(ok["engine"]) >= {"torch_eager_cpu", "ort_cpu"}
    assert (ok["latency_p50_ms"] > 0).all() and (ok["throughput_sps"] > 0).all()
    missing = rows.filter(pl.col("status") == "unavailable")
    if missing.height:  # on a machine without CUDA every GPU engine is here, never a number
        assert missing["reason"].str.len_chars().min() > 10
        assert missing["latency_p50_ms"].null_count() == missing.height
    selection = json.loads((workdir / "results/tiny/benchmark/selection.json").read_text())
    assert selection["models"]["policy"]["reasoning"]


def test_second_run_does_nothing(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    proc = run_snakemake(workdir, "--configfile", "test.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_report_rebuild_gives_identical_bytes(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    names = ["report.html", "report.json", "metrics.csv"]
    before = {name: (workdir / "reports/tiny" / name).read_bytes() for name in names}
    run_snakemake(workdir, "reports/tiny/report.html", "--configfile", "test.yaml", "--forcerun", "report")
    for name in names:
        assert (workdir / "reports/tiny" / name).read_bytes() == before[name], name


def test_snakemake_report_has_stage_categories(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    run_snakemake(workdir, "--configfile", "test.yaml", "--report", "reports/snakemake-report.html")
    html = (workdir / "reports/snakemake-report.html").read_text(errors="replace")
    for category in ["Forecaster", "Policy", "Engines", "Report"]:
        assert category in html


def test_forcerun_forecaster_reruns_downstream_only(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    proc = run_snakemake(workdir, "-n", "--configfile", "test.yaml", "--forcerun", "train_forecaster")
    jobs = {
        line.split()[1].rstrip(":")
        for line in proc.stdout.splitlines()
        if line.startswith(("rule ", "localrule "))
    }
    assert {"train_forecaster", "precompute", "train_policy", "export_onnx", "report"} <= jobs
    assert not jobs & {"acquire", "manifest", "segments", "embeddings", "environment"}


def _planned(workdir: Path, overrides: dict) -> set[str]:
    """The rules a dry run would run after the finished run, with ``overrides`` on its config."""
    changed = write_config(workdir, deep_merge(copy.deepcopy(FAST), overrides), name="changed.yaml")
    proc = run_snakemake(workdir, "-n", "--configfile", str(changed))
    return {
        line.split()[1].rstrip(":")
        for line in proc.stdout.splitlines()
        if line.startswith(("rule ", "localrule "))
    }


def test_a_config_change_reruns_the_stages_that_read_it(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    # A new seed is new data: everything from acquire on.
    assert {"acquire", "manifest", "segments", "embeddings", "train_forecaster", "report"} <= _planned(
        workdir, {"seed": 8}
    )
    # A split setting: segments and what follows, not the raw data.
    planned = _planned(workdir, {"segments": {"embargo_bars": 40}})
    assert {"segments", "train_forecaster", "train_policy_fold"} <= planned
    assert not planned & {"acquire", "manifest", "embeddings"}
    # A PPO setting: the policy and what follows, not the forecaster.
    planned = _planned(workdir, {"policy": {"ppo": {"learning_rate": 1e-3}}})
    assert {"train_policy_fold", "evaluate_policy", "export_onnx", "report"} <= planned
    assert not planned & {"acquire", "segments", "embeddings", "train_forecaster", "precompute"}
    # How often state is saved, or where runs are tracked, is not what a run computes. (The device
    # is: the environment preflight records it, and its stages rerun on the new one.)
    assert _planned(workdir, {"checkpoint": {"every_minutes": 5}, "tracking": {"backend": "mlflow"}}) == set()

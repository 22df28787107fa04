"""The required-artifact checklist: a complete run passes; each broken artifact fails by name."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from tests.fixtures_run import build_reported_run
from trainrelay.report.validate import run_validate, validate_run


@pytest.fixture(scope="module")
def complete(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reported_run(tmp_path_factory.mktemp("run"))


@pytest.fixture
def run_copy(complete: Path, tmp_path: Path) -> Path:
    shutil.copytree(complete, tmp_path / "w")
    return tmp_path / "w" / "results" / "fixture"


def _failed(result: dict) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in result["checks"] if not c["passed"]}


def test_complete_run_passes_every_check(
    complete: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results = complete / "results" / "fixture"
    result = validate_run(results)
    assert result["passed"], _failed(result)
    assert len(result["checks"]) == 22
    assert {s["status"] for s in result["stages"]} == {"done"}
    assert [s["stage"] for s in result["stages"]][:3] == ["environment", "manifest", "segments"]
    out = tmp_path / "validation.json"
    assert run_validate(argparse.Namespace(results=str(results), reports=None, out=str(out))) == 0
    written = json.loads(out.read_text())
    assert written["passed"] is True
    assert set(written["checks"][0]) >= {"name", "passed", "detail"}
    assert "all 22 checks passed" in capsys.readouterr().out


def test_each_broken_artifact_fails_by_name(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    results = run_copy
    parity = results / "models" / "onnx_parity.json"
    data = json.loads(parity.read_text())
    data["policy"]["passed"] = False
    parity.write_text(json.dumps(data))
    onnx_file = results / "models" / "forecaster.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:40])  # truncated by a crash
    (results / "artifacts" / "loss" / "ppo.csv").unlink()
    loss = pl.read_csv(results / "artifacts" / "loss" / "forecaster.csv")
    loss.with_columns(pl.lit(float("nan")).alias("train_loss")).write_csv(
        results / "artifacts" / "loss" / "forecaster.csv"
    )
    bench = pl.read_parquet(results / "benchmark" / "metrics.parquet")
    bench.with_columns(pl.lit(None, dtype=pl.String).alias("reason")).write_parquet(
        results / "benchmark" / "metrics.parquet"
    )
    (results / "checkpoints" / "ppo_policy.zip").write_bytes(b"not a zip")

    result = validate_run(results)
    failed = _failed(result)
    assert not result["passed"]
    expected = {"onnx parity passed", "forecaster.onnx", "ppo loss", "forecaster loss", "benchmark metrics"}
    assert set(failed) == expected | {"policy checkpoint"}
    assert "policy parity did not pass" in failed["onnx parity passed"]
    assert failed["ppo loss"] == "missing: artifacts/loss/ppo.csv"
    assert "train_loss has 6 NaN/null values" in failed["forecaster loss"]
    assert "without a reason" in failed["benchmark metrics"]
    stages = {s["stage"]: s["status"] for s in result["stages"]}
    assert stages["train_policy"] == "failed" and stages["export_onnx"] == "failed"
    assert stages["manifest"] == "done" and stages["report"] == "done"

    code = run_validate(argparse.Namespace(results=str(results), reports=None, out=None))
    err = capsys.readouterr().err
    assert code == 1
    assert "6 check(s) failed" in err and "forecaster.onnx" in err and "policy checkpoint" in err


def test_missing_report_and_stage_marked_missing(run_copy: Path) -> None:
    shutil.rmtree(run_copy.parent.parent / "reports")
    shutil.rmtree(run_copy / "benchmark")
    result = validate_run(run_copy)
    stages = {s["stage"]: s["status"] for s in result["stages"]}
    assert stages["report"] == "missing" and stages["benchmark"] == "missing"
    assert _failed(result)["report.pdf"].startswith("missing: ")


def test_non_finite_policy_metric_fails(run_copy: Path) -> None:
    path = run_copy / "metrics" / "policy.json"
    data = json.loads(path.read_text())
    data["strategies"]["policy"]["sharpe"] = None
    path.write_text(json.dumps(data))
    assert _failed(validate_run(run_copy)) == {
        "policy metrics": "policy.json: strategies.policy has no finite sharpe"
    }


def test_a_verdict_without_its_interval_fails(run_copy: Path) -> None:
    path = run_copy / "metrics" / "policy.json"
    data = json.loads(path.read_text())
    del data["strategies"]["buy_and_hold"]["sharpe_ci_low"]
    data["strategies"]["policy"]["sharpe_diff_p_value"] = float("nan")
    path.write_text(json.dumps(data))
    failed = _failed(validate_run(run_copy))
    assert failed == {"policy metrics": "policy.json: strategies.policy has no finite sharpe_diff_p_value"}
    data["strategies"]["policy"]["sharpe_diff_p_value"] = 0.5
    path.write_text(json.dumps(data))
    assert _failed(validate_run(run_copy)) == {
        "policy metrics": "policy.json: strategies.buy_and_hold has no finite sharpe_ci_low"
    }

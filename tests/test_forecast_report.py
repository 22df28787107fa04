"""The forecaster's per-channel table in the report and the validate check of forecaster.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.fixtures_run import build_reported_run, fixture_config
from trainrelay.report.analysis import forecast_channel_table, forecast_table
from trainrelay.report.build import build_report
from trainrelay.report.validate import validate_run


@pytest.fixture(scope="module")
def complete(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reported_run(tmp_path_factory.mktemp("run"))


def test_report_shows_every_model_and_baseline_per_channel(complete: Path) -> None:
    reports = complete / "reports" / "fixture"
    report = json.loads((reports / "report.json").read_text())
    rows = report["forecast_channels"]
    subjects = [(r["model"], r["channel"]) for r in rows]
    # torch models first (patchtst, dlinear, naive), then the baselines, channels sorted
    assert subjects[:3] == [("patchtst", "log_return"), ("patchtst", "mom_4"), ("patchtst", "realized_vol")]
    assert subjects[-2:] == [("har_rv", "realized_vol"), ("zero", "log_return")]
    by = {(r["model"], r["channel"]): r for r in rows}
    assert all(r["kept"] == (r["model"] == "patchtst") for r in rows)
    assert by[("patchtst", "realized_vol")]["test_qlike"] == pytest.approx(0.42 * 1.06 / 3)
    assert by[("patchtst", "log_return")]["val_direction_accuracy"] == pytest.approx(0.5 + 0.41 / 20)
    assert by[("patchtst", "mom_4")]["val_qlike"] is None and by[("patchtst", "mom_4")]["note"] is None
    zero = by[("zero", "log_return")]
    assert zero["val_direction_accuracy"] is None and "no sign" in zero["note"]
    assert report["forecast_selection"]["kept"] == "patchtst"
    assert [r["model"] for r in report["forecast"] if r["kept"]] == ["patchtst"]
    assert report["simple"]["forecast"]["model"] == "patchtst"  # the kept model, not the first
    html = (reports / "report.html").read_text()
    assert '<table id="forecast-channels">' in html and "patchtst <strong>(kept)</strong>" in html
    assert "lowest validation MSE of 2 models" in html and "HAR-RV averages over 96, 672, 2880 bars" in html
    assert "less history than the longest average: test 0.0 %, train 25.0 %, val 0.0 %" in html
    csv = (reports / "metrics.csv").read_text()
    assert "forecast_channel,zero/log_return,val_direction_accuracy," in csv


def test_the_simple_summary_follows_the_kept_model_not_the_list_order() -> None:
    metrics = {
        "models": {
            "patchtst": {"val_mse": 0.5, "val_mae": 0.5, "test_mse": 0.5, "test_mae": 0.5},
            "tcn": {"val_mse": 0.4, "val_mae": 0.4, "test_mse": 0.45, "test_mae": 0.4},
            "naive": {"val_mse": 0.9, "val_mae": 0.9, "test_mse": 0.9, "test_mae": 0.9},
        },
        "model": "tcn",
    }
    rows = forecast_table(metrics)
    assert [(r["model"], r["kept"]) for r in rows] == [("patchtst", False), ("tcn", True), ("naive", False)]
    assert forecast_channel_table(metrics) == []  # written before the per-channel table: no rows


@pytest.fixture
def run_copy(complete: Path, tmp_path: Path) -> Path:
    shutil.copytree(complete, tmp_path / "w")
    return tmp_path / "w" / "results" / "fixture"


def _break(results: Path, change) -> dict[str, str]:
    path = results / "metrics" / "forecaster.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    result = validate_run(results)
    return {c["name"]: c["detail"] for c in result["checks"] if not c["passed"]}


def test_validate_passes_the_complete_forecaster_metrics(complete: Path) -> None:
    result = validate_run(complete / "results" / "fixture")
    check = next(c for c in result["checks"] if c["name"] == "forecaster metrics")
    assert check["passed"] and "kept patchtst (lowest validation MSE of 2 models" in check["detail"]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda d: d.pop("per_channel"), "per_channel (models x channels x split x metric) is missing"),
        (lambda d: d["per_channel"].pop("dlinear"), "per_channel.dlinear is missing"),
        (lambda d: d.update(model="gru"), "model (the kept one) is 'gru', not one of models"),
        (lambda d: d["selection"].pop("reason"), "selection.reason (why the kept model was kept) is missing"),
        (
            lambda d: d["per_channel"]["naive"]["mom_4"]["test"].update(mse=None),
            "per_channel.naive.mom_4.test has no finite mse",
        ),
        (
            lambda d: d["per_channel"]["har_rv"]["realized_vol"]["val"].pop("qlike"),
            "per_channel.har_rv.realized_vol.val.qlike is missing and no reason is recorded",
        ),
        (
            lambda d: d["per_channel"]["zero"]["log_return"].pop("unavailable"),
            "per_channel.zero.log_return.val.direction_accuracy is missing and no reason is recorded",
        ),
    ],
)
def test_validate_names_what_is_missing_from_forecaster_json(run_copy: Path, change, detail: str) -> None:
    assert _break(run_copy, change) == {"forecaster metrics": f"forecaster.json: {detail}"}


def test_summary_and_recommendation_follow_the_kept_model(run_copy: Path) -> None:
    """Kept dlinear (not the first row, patchtst): the summary and the advice speak of dlinear."""
    path = run_copy / "metrics" / "forecaster.json"
    data = json.loads(path.read_text())
    data["model"] = data["selection"]["kept"] = "dlinear"
    path.write_text(json.dumps(data))
    reports = run_copy.parent.parent / "reports" / "fixture"
    outputs = {k: reports / f"report.{k}" for k in ("html", "pdf", "json")} | {"csv": reports / "metrics.csv"}
    build_report(run_copy, outputs, fixture_config(), git_commit="unknown")
    report = json.loads(outputs["json"].read_text())
    assert report["simple"]["forecast"]["model"] == "dlinear"
    assert any("The dlinear forecaster" in line for line in report["recommendations"])
    assert not any("The patchtst forecaster" in line for line in report["recommendations"])

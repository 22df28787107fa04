"""The report: values, determinism, charts, one-line errors and "not run" for optional inputs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from tests.fixtures_run import build_results_tree, fixture_config
from trainrelay.core.fingerprint import config_fingerprint
from trainrelay.errors import DataError
from trainrelay.report.build import build_report, current_git_commit


def _outputs(directory: Path) -> dict[str, Path]:
    return {
        "html": directory / "report.html",
        "pdf": directory / "report.pdf",
        "json": directory / "report.json",
        "csv": directory / "metrics.csv",
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    results = build_results_tree(root)
    outputs = _outputs(root / "reports" / "fixture")
    build_report(results, outputs, fixture_config(), git_commit="0123456789abcdef0123456789abcdef01234567")
    return results, outputs


def test_report_json_holds_the_numbers(built: tuple[Path, dict[str, Path]]) -> None:
    _results, outputs = built
    report = json.loads(outputs["json"].read_text())
    assert report["run"] == "fixture"
    assert report["git_commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert report["config_fingerprint"] == config_fingerprint(fixture_config())
    assert report["data_through"] == "2024-02-29T23:45:00Z"  # the inputs' own time, not the clock
    patchtst = next(row for row in report["forecast"] if row["model"] == "patchtst")
    assert patchtst["test_mse_vs_naive_pct"] == pytest.approx((0.437 - 0.612) / 0.612 * 100)
    assert [row["model"] for row in report["forecast"]] == ["patchtst", "dlinear", "naive"]
    assert report["data"]["rows"] == 2 * (31 + 29) * 96 + 2 * (31 + 29) * 3
    assert report["data"]["symbols"] == ["BTCUSDT", "ETHUSDT"]
    # the chosen engine comes from selection.json; its speed-up is measured against torch eager CPU
    forecaster = next(m for m in report["simple"]["models"] if m["model"] == "forecaster")
    assert forecaster["chosen"]["engine"] == "ort_cpu" and forecaster["chosen"]["batch"] == 32
    assert forecaster["speedup_p50"] == pytest.approx(0.80 * (1 + 32 / 16) / (0.31 * (1 + 32 / 16)))
    assert "ort_cpu" in forecaster["deploy"]["summary"] or "ONNX Runtime" in forecaster["deploy"]["summary"]
    assert "CPUExecutionProvider" in forecaster["deploy"]["code"]
    baseline = [d for d in report["benchmark"]["deltas"] if d["is_baseline"]]
    assert {d["engine"] for d in baseline} == {"torch_eager_cpu"}
    assert all(d["speedup_p50"] == pytest.approx(1.0) for d in baseline)
    # memory in the comparison is an engine's own VRAM; process RSS would only show measuring order
    assert all(d["vram_mb"] is None for d in report["benchmark"]["deltas"] if d["device"] == "cpu")
    assert not any("rss_delta_mb" in d for d in report["benchmark"]["deltas"])
    # unavailable and failed engines fail the constraints with their reason, never with a number
    trt = next(r for r in report["benchmark"]["evaluation"] if r["engine"] == "ort_tensorrt_fp16")
    assert not trt["meets_all"] and "TensorRT is not installed" in " ".join(trt["notes"])
    # engines that could not run here: one row per reason with how to enable them, one recommendation
    not_run = {e["reason"]: e for e in report["benchmark"]["not_run"]}
    assert [g["engine"] for g in not_run["TensorRT is not installed"]["engines"]] == ["ort_tensorrt_fp16"]
    assert "make setup-gpu" in not_run["TensorRT is not installed"]["how_to_enable"]
    assert not_run["TensorRT is not installed"]["models"] == ["forecaster", "policy"]
    assert [line for line in report["recommendations"] if "could not run on this machine" in line] == [
        "2 engines could not run on this machine (ort_tensorrt_fp16, torch_cuda_graph_bf16): the table "
        "“Engines not run on this machine” says why and how to enable each."
    ]
    assert any(line.startswith("ort_cuda was tried and failed: CUDAExecutionProvider could not be created")
               for line in report["recommendations"])  # fmt: skip
    assert report["policy"]["ablations"]["no_text"]["sharpe"] == 1.12
    # every strategy row carries its interval, the paired difference to buy-and-hold and costs
    policy = report["policy"]["table"][0]
    assert policy["strategy"] == "policy"
    assert (policy["sharpe_ci_low"], policy["sharpe_ci_high"]) == (-2.9, 5.4)
    assert (policy["sharpe_diff_ci_low"], policy["sharpe_diff_ci_high"], policy["sharpe_diff_p_value"]) == (
        -1.6,
        2.5,
        0.64,
    )
    assert policy["deflated_sharpe"] == 0.38 and policy["sharpe_cost_1x"] == policy["sharpe"]
    assert policy["cumulative_return_cost_0x"] >= policy["cumulative_return_cost_2x"]
    # the fixture's pooled test (two ~5-day blocks) is too short: the verdict and advice say so
    assert report["policy"]["verdict"].startswith("Too short to tell: the walk-forward test covers 10.6 days")
    assert any("too short to tell (difference +0.47, 95 % CI -1.60 to 2.50)" in line
               for line in report["recommendations"])  # fmt: skip
    assert not any("beats buy-and-hold" in line for line in report["recommendations"])
    assert set(report["sources"]) >= {"benchmark/metrics.parquet", "metrics/policy.json"}


def test_html_has_both_views_and_real_charts(built: tuple[Path, dict[str, Path]]) -> None:
    _results, outputs = built
    html = outputs["html"].read_text()
    assert 'id="simple"' in html and 'id="technical"' in html
    assert "0123456789abcdef0123456789abcdef01234567" in html
    assert "ort_cpu · cpu · fp32 · batch 32" in html
    assert "-28.6 %" in html  # patchtst test MSE vs naive
    assert "CUDA is not available" in html
    # the intervals are on the page (the PDF renders this same HTML)
    assert "policy Sharpe (95 % CI)</th><td>1.21 (-2.9 to 5.4) vs buy-and-hold 0.74" in html
    assert 'id="policy-intervals"' in html and 'id="policy-costs"' in html and 'id="policy-folds"' in html
    assert '<td>policy</td><td class="num">1.21</td><td class="num ci">-2.9 to 5.4</td>' in html
    assert "Too short to tell: the walk-forward test covers 10.6 days" in html
    charts = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(charts) >= 6  # losses, PPO, MSE bars, equity, latency per model
    for chart in charts:
        svg = base64.b64decode(chart).decode()
        assert svg.count("<path") > 10
        assert "<dc:date>" not in svg  # no build time inside the SVG


def test_metrics_csv_and_pdf(built: tuple[Path, dict[str, Path]]) -> None:
    _results, outputs = built
    frame = pl.read_csv(outputs["csv"], infer_schema=False)
    assert frame.columns == ["section", "subject", "metric", "value"]
    row = frame.filter(
        (pl.col("section") == "forecast") & (pl.col("subject") == "naive") & (pl.col("metric") == "test_mse")
    )
    assert row["value"].to_list() == ["0.612"]
    interval = frame.filter((pl.col("section") == "policy") & (pl.col("subject") == "policy"))
    values = dict(zip(interval["metric"].to_list(), interval["value"].to_list(), strict=True))
    assert values["sharpe_ci_low"] == "-2.9" and values["sharpe_diff_p_value"] == "0.64"
    assert "sharpe_cost_2x" in values and "cumulative_return_cost_0x" in values
    speed = frame.filter(
        (pl.col("section") == "delta_vs_baseline")
        & (pl.col("subject") == "policy/ort_cpu/cpu/fp32/batch1")
        & (pl.col("metric") == "speedup_p50")
    )
    assert float(speed["value"][0]) == pytest.approx(0.80 / 0.31)
    pdf = outputs["pdf"].read_bytes()
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
    assert len(pdf) > 20_000


def test_rebuild_gives_identical_bytes(built: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    results, first = built
    second = _outputs(tmp_path / "again")
    build_report(results, second, fixture_config(), git_commit="0123456789abcdef0123456789abcdef01234567")
    for name in ("html", "json", "csv", "pdf"):
        assert first[name].read_bytes() == second[name].read_bytes(), name


def test_missing_required_input_fails_with_one_line(
    built: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    results, _ = built
    copy = tmp_path / "results" / "fixture"
    shutil.copytree(results, copy)
    (copy / "metrics" / "policy.json").unlink()
    with pytest.raises(DataError) as err:
        build_report(copy, _outputs(tmp_path / "out"), fixture_config(), git_commit="unknown")
    message = str(err.value)
    assert "\n" not in message
    assert "metrics/policy.json" in message and "evaluate_policy" in message
    assert not (tmp_path / "out" / "report.html").exists()


def test_malformed_field_is_named(built: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    results, _ = built
    copy = tmp_path / "results" / "fixture"
    shutil.copytree(results, copy)
    path = copy / "metrics" / "forecaster.json"
    data = json.loads(path.read_text())
    del data["models"]["naive"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"forecaster\.json: field `models` lacks naive"):
        build_report(copy, _outputs(tmp_path / "out"), fixture_config(), git_commit="unknown")


def test_optional_inputs_are_shown_as_not_run(tmp_path: Path) -> None:
    results = build_results_tree(tmp_path, ablations=False, embeddings=False)
    outputs = _outputs(tmp_path / "reports" / "fixture")
    report = build_report(results, outputs, fixture_config(), git_commit="unknown")
    assert report["policy"]["ablations"] is None and report["embeddings"] is None and report["tuning"] is None
    html = outputs["html"].read_text()
    assert re.search(r"Ablations: <span class=\"na\">not run</span>", html)
    assert re.search(r"Text embeddings: <span class=\"na\">not run</span>", html)
    assert any(line.startswith("Ablations were not run") for line in report["recommendations"])


def test_git_commit_is_head_inside_a_repo_and_unknown_outside(tmp_path: Path, monkeypatch) -> None:
    # git must not find a repository above tmp_path (the "outside" case must be outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    outside = tmp_path / "outside"
    outside.mkdir()
    assert current_git_commit(outside) == "unknown"

    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    git("init", "-q", "-b", "main")
    for text in ["one", "two"]:  # two commits: HEAD, not the first one
        (repo / "sub" / "file.txt").write_text(text)
        git("add", ".")
        git("commit", "-q", "-m", text)
    # HEAD's hash read from the repository's files, not through `git rev-parse`
    head = (repo / ".git" / "refs" / "heads" / "main").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert current_git_commit(repo) == head
    assert current_git_commit(repo / "sub") == head  # from inside the work tree too

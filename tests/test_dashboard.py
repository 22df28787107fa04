"""Dashboard state, run history, and the static page rendered in headless Chromium."""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.fixtures_run import build_results_tree
from trainrelay.errors import ConfigError
from trainrelay.report.dashboard import run_dashboard, write_dashboard

PAGE = Path(__file__).resolve().parents[1] / "reports" / "dashboard" / "index.html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_results_tree(tmp_path_factory.mktemp("run"))


def test_state_and_run_history(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "dashboard" / "data" / "dashboard-state.json"
    write_dashboard(results, out, "local_run_001", persist_run_history=True)
    state = write_dashboard(results, out, "local_run_002", persist_run_history=True)
    assert [r["run_id"] for r in state["runs"]] == ["local_run_001", "local_run_002"]
    assert (out.parent / "runs" / "local_run_001.json").is_file()
    assert json.loads(out.read_text()) == state
    current = state["current"]
    assert current["run_id"] == "local_run_002" and current["run"] == "fixture"
    stages = {s["stage"]: s["status"] for s in current["stages"]}
    assert stages["train_forecaster"] == "done"
    assert stages["report"] == "missing"  # no report was built for this tree
    assert current["validation"]["checks_passed"] == 18 and current["validation"]["checks_total"] == 22
    engines = {e["model"]: e["label"] for e in current["engines"]}
    assert engines == {
        "forecaster": "ort_cpu · cpu · fp32 · batch 32",
        "policy": "ort_cpu · cpu · fp32 · batch 1",
    }
    assert current["metrics"]["forecaster"]["patchtst"]["test_mse"] == 0.437
    # the policy's intervals and the facts behind its verdict reach the page
    policy = current["metrics"]["policy"]["policy"]
    assert (policy["sharpe_ci_low"], policy["sharpe_ci_high"], policy["sharpe_diff_p_value"]) == (
        -2.9,
        5.4,
        0.64,
    )
    assert current["metrics"]["significance"]["too_short"] is True
    assert current["metrics"]["significance"]["trials"]["count"] == 3
    assert current["metrics"]["verdict"].startswith("Too short to tell")
    assert current["losses"]["forecaster"]["epoch"] == [1, 2, 3, 4, 5, 6]
    assert len(current["losses"]["ppo"]["episode_reward"]) == 10
    # a run shown without persisting joins the list but leaves no snapshot behind
    state = write_dashboard(results, out, "scratch", persist_run_history=False)
    assert [r["run_id"] for r in state["runs"]] == ["local_run_001", "local_run_002", "scratch"]
    assert state["runs"][-1]["snapshot"] is None and not (out.parent / "runs" / "scratch.json").exists()


def test_validation_json_is_used_when_present(results: Path, tmp_path: Path) -> None:
    copy = tmp_path / "results" / "fixture"
    shutil.copytree(results, copy)
    checks = [{"name": "x", "stage": "benchmark", "passed": False, "detail": "broken", "missing": False}]
    (copy / "validation.json").write_text(json.dumps({"passed": False, "checks": checks}))
    state = write_dashboard(copy, tmp_path / "state.json", "r1")
    assert state["current"]["validation"]["source"] == "validation.json"
    assert state["current"]["stages"] == [{"stage": "benchmark", "status": "failed"}]


def test_partial_run_and_bad_run_id(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "results" / "fixture"
    shutil.copytree(results, copy)
    shutil.rmtree(copy / "benchmark")
    state = write_dashboard(copy, tmp_path / "state.json", "partial")
    assert state["current"]["benchmark"] is None and state["current"]["engines"] == []
    assert {s["stage"]: s["status"] for s in state["current"]["stages"]}["benchmark"] == "missing"
    with pytest.raises(ConfigError, match="run id"):
        write_dashboard(copy, tmp_path / "state.json", "../escape")
    args = argparse.Namespace(results=str(tmp_path / "nope"), out=str(tmp_path / "s.json"), run_id="a",
                              persist_run_history=False, reports=None)  # fmt: skip
    assert run_dashboard(args) == 1
    assert "results directory does not exist" in capsys.readouterr().err


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    site = tmp_path / "dashboard"
    site.mkdir()
    shutil.copy(PAGE, site / "index.html")
    out = site / "data" / "dashboard-state.json"
    write_dashboard(results, out, "local_run_000", persist_run_history=True)
    write_dashboard(results, out, "local_run_001", persist_run_history=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000",
        ]  # fmt: skip
        dom = subprocess.run(
            [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        # an older run from the history is fetched from data/runs/<id>.json
        older = subprocess.run(
            [CHROMIUM, *flags, "--dump-dom", url + "?run=local_run_000"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert 'data-rendered="true"' in dom, dom[-2000:]
    assert 'data-run-id="local_run_001"' in dom and "run local_run_001 (fixture)" in dom
    for stage in ("manifest", "train_forecaster", "train_policy", "export_onnx", "benchmark"):
        assert f'data-stage="{stage}"' in dom
    assert "train_forecaster: done" in dom and "report: missing" in dom
    assert "ort_cpu · cpu · fp32 · batch 32" in dom  # the forecaster's chosen engine
    assert ">0.437<" in dom and ">1.21<" in dom  # patchtst test MSE, policy Sharpe
    assert 'id="policy-intervals"' in dom and ">-2.9 to 5.4<" in dom and ">-1.6 to 2.5<" in dom
    assert "too short to tell" in dom and "3 configuration(s) tried" in dom
    assert "TensorRT is not installed" in dom
    assert dom.count("<polyline") >= 4  # forecaster train/val loss, PPO reward, PPO losses
    assert 'data-run-id="local_run_000"' in older and "run local_run_000 (fixture)" in older

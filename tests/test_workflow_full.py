"""The whole DAG on a tiny config: real snakemake, values checked, rebuilds deterministic."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import FAST, finished_copy, jobs_in, run_snakemake, write_config
from trainrelay.deep_merge import deep_merge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_run(finished_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """This module's copy of the session's finished FAST run, and the seconds the run took."""
    workdir = finished_copy(finished_template, tmp_path_factory.mktemp("full") / "wf")
    return workdir, float((workdir / "run-seconds.txt").read_text())


def test_what_the_run_prints(full_run: tuple[Path, float]) -> None:
    """A line per started and finished stage with its time, no library chatter without --verbose,
    and the last lines name the report, the chosen engines and the verdict."""
    workdir, _ = full_run
    output = (workdir / "run-output.txt").read_text()
    for stage in ("segments", "train_forecaster", "train_policy_fold (fold=1)", "report"):
        assert f"trainrelay: {stage} started" in output
        finished = rf"trainrelay: {re.escape(stage)} finished in ([0-9.]+ s|[0-9]+ min|[0-9]+ h)"
        assert re.search(finished, output), stage
    assert "fontTools" not in output and "Glyph" not in output  # the PDF's font subsetting
    ours = [line for line in output.splitlines() if line.startswith("trainrelay: ")]
    verdict = json.loads((workdir / "results/tiny/metrics/policy.json").read_text())["verdict"]
    selection = json.loads((workdir / "results/tiny/benchmark/selection.json").read_text())
    engine = selection["models"]["forecaster"]["chosen"]["engine"]
    assert ours[-3] == "trainrelay: report: reports/tiny/report.html (PDF: reports/tiny/report.pdf)"
    assert ours[-2].startswith("trainrelay: engines: forecaster -> " + engine) and "policy -> " in ours[-2]
    assert ours[-1] == f"trainrelay: verdict: {verdict}"


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
    expected = _engines_this_machine_runs()
    assert set(rows["engine"]) == set(expected)  # every configured engine has rows, run or not
    metrics = [c for c, dtype in rows.schema.items() if dtype == pl.Float64]
    for (engine,), group in rows.group_by("engine"):
        if expected[engine]:
            # the probe ran it here, so the benchmark must have measured it, on every model and batch
            assert group["status"].to_list() == ["ok"] * group.height, (engine, group["reason"].to_list())
            assert (group["latency_p50_ms"] > 0).all() and (group["throughput_sps"] > 0).all(), engine
        else:
            # it cannot run here: a row per model and batch with a one-line reason, never a number
            assert group["status"].to_list() == ["unavailable"] * group.height, engine
            reasons = group["reason"].to_list()
            assert all(r and len(r) > 10 and "\n" not in r for r in reasons), (engine, reasons)
            assert group.select(metrics).null_count().row(0) == (group.height,) * len(metrics), engine
            assert group["correct"].null_count() == group.height, engine
    import torch

    from trainrelay.benchmark.engines import ENGINE_SPECS

    if not torch.cuda.is_available():
        gpu = {e for e, spec in ENGINE_SPECS.items() if spec.device == "cuda"}
        assert gpu and not gpu & {e for e, ok in expected.items() if ok}
        assert set(rows.filter(pl.col("status") == "unavailable")["engine"]) == gpu
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
    # Snakemake embeds the report's data as JS objects: `var categories = {category: {subcategory:
    # [result, ...]}}` and `var results = {result: {..., "job_properties": {"rule": ...}}}`.
    categories = _report_data(html, "categories")
    results = _report_data(html, "results")
    placed = {
        name: category
        for category, subcategories in categories.items()
        for names in subcategories.values()
        for name in names
    }
    rule_of = {name: result["job_properties"]["rule"] for name, result in results.items()}
    expected = {
        "results/tiny/artifacts/loss/forecaster.csv": ("Forecaster", "train_forecaster"),
        "results/tiny/artifacts/loss/ppo.csv": ("Policy", "train_policy"),
        "results/tiny/metrics/policy.json": ("Policy", "evaluate_policy"),
        "results/tiny/benchmark/metrics.csv": ("Engines", "benchmark"),
        "reports/tiny/report.html": ("Report", "report"),
        "reports/tiny/metrics.csv": ("Report", "report"),
    }
    assert {name: (placed.get(name), rule_of.get(name)) for name in expected} == expected
    # every result sits in exactly one of the stage categories (none left in Snakemake's "Other")
    assert sorted(placed) == sorted(results) and len(placed) == sum(
        len(names) for subs in categories.values() for names in subs.values()
    )
    assert set(placed.values()) <= {"Forecaster", "Policy", "Engines", "Report"}


def test_forcerun_forecaster_reruns_downstream_only(full_run: tuple[Path, float]) -> None:
    workdir, _ = full_run
    proc = run_snakemake(workdir, "-n", "--configfile", "test.yaml", "--forcerun", "train_forecaster")
    jobs = set(jobs_in(proc.stdout))
    assert {"train_forecaster", "precompute", "train_policy", "export_onnx", "report"} <= jobs
    assert not jobs & {"acquire", "manifest", "segments", "embeddings", "environment"}


def _planned(workdir: Path, overrides: dict) -> set[str]:
    """The rules a dry run would run after the finished run, with ``overrides`` on its config."""
    changed = write_config(workdir, deep_merge(copy.deepcopy(FAST), overrides), name="changed.yaml")
    proc = run_snakemake(workdir, "-n", "--configfile", str(changed))
    return set(jobs_in(proc.stdout))


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
    # is: the environment preflight records it, and its stages rerun on the new one.) Compared with
    # the unchanged config's plan: tests before this one on the same run may have left a stage to redo.
    unchanged = _planned(workdir, {})
    assert not unchanged & {"acquire", "segments", "train_forecaster", "train_policy_fold", "report"}
    assert (
        _planned(workdir, {"checkpoint": {"every_minutes": 5}, "tracking": {"backend": "mlflow"}})
        == unchanged
    )


def _report_data(html: str, name: str) -> dict:
    """The JSON object Snakemake's HTML report assigns to ``var <name>`` in its ``<script id=name>``."""
    import re

    match = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', html, re.S)
    assert match, f"no `var {name}` in the report"
    return json.loads(match.group(1))


def _engines_this_machine_runs() -> dict[str, bool]:
    """Which benchmark engines must run here, probed without trainrelay.benchmark: torch's own CUDA check,
    and for ONNX Runtime a session actually created with the provider (first in its provider list)
    that runs a one-node model; a provider merely listed by the build does not count.
    """
    import contextlib

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu finds pip CUDA libraries only once preloaded
        with contextlib.suppress(Exception):
            ort.preload_dlls()

    def ort_runs(provider: str) -> bool:
        if provider not in ort.get_available_providers():
            return False
        try:
            session = ort.InferenceSession(model.SerializeToString(), providers=[provider])
            if session.get_providers()[0] != provider:
                return False
            session.run(None, {"x": np.ones((1, 4), np.float32)})
        except Exception:
            return False
        return True

    cuda = torch.cuda.is_available()
    return {
        "torch_eager_cpu": True,
        "ort_cpu": ort_runs("CPUExecutionProvider"),
        "torch_eager_cuda": cuda,
        "torch_cuda_graph": cuda,
        "torch_cuda_graph_bf16": cuda and torch.cuda.is_bf16_supported(),
        "ort_cuda": ort_runs("CUDAExecutionProvider"),
        "ort_tensorrt_fp16": ort_runs("TensorrtExecutionProvider"),
    }

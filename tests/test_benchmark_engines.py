"""Engine probing and the benchmark runner on small models of our own (CPU engines run here)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import torch
from torch import nn

from trainrelay.benchmark.engines import (
    ENGINE_SPECS,
    EngineSettings,
    EngineUnavailable,
    ModelUnderTest,
    make_engine,
    probe,
)
from trainrelay.benchmark.stage import METRIC_SCHEMA, run_benchmark, tile_batch, write_outputs
from trainrelay.export import export_module

torch.set_num_threads(1)
HAS_CUDA = torch.cuda.is_available()
ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()

SETTINGS = {
    "engines": list(ENGINE_SPECS),
    "batches": [4, 1],
    "warmup_iterations": 5,
    "warmup_ms": 10,
    "iterations": 6,
    "trials": 3,
    "sample_interval_ms": 5,
    "tolerance": {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2},
    "constraints": {"latency_p95_ms": {"max": 1000}, "throughput_sps": {"min": 1}, "vram_mb": {"max": 2048}},
    "objective": {"policy": "latency"},
    "tie_tolerance": 0.05,
}


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> ModelUnderTest:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).eval()
    path = tmp_path_factory.mktemp("onnx") / "policy.onnx"
    samples = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    export_module(module, torch.from_numpy(samples), path)
    return ModelUnderTest("policy", module, path, samples)


def _settings(tmp_path) -> EngineSettings:
    return EngineSettings(threads=1, batches=(1, 4), trt_cache_dir=tmp_path / "trt_cache")


def test_tile_batch_cycles_real_samples():
    samples = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(tile_batch(samples, 5)[:, 0], [0, 2, 4, 0, 2])


@pytest.mark.skipif(HAS_CUDA, reason="checks the reason given when CUDA is absent")
def test_torch_cuda_engines_are_unavailable_with_the_reason(policy, tmp_path):
    for name in ("torch_eager_cuda", "torch_cuda_graph", "torch_cuda_graph_bf16"):
        with pytest.raises(EngineUnavailable, match=r"no CUDA device: torch .* sees none"):
            probe(make_engine(name, policy, _settings(tmp_path)), policy.samples[:1], (1, 1))


@pytest.mark.skipif(ORT_CUDA, reason="checks the reason given when the provider is not in the build")
@pytest.mark.parametrize(("name", "provider"), [("ort_cuda", "CUDA"), ("ort_tensorrt_fp16", "Tensorrt")])
def test_ort_gpu_providers_are_probed_by_running_not_listing(policy, tmp_path, name, provider):
    with pytest.raises(EngineUnavailable) as caught:
        probe(make_engine(name, policy, _settings(tmp_path)), policy.samples[:1], (1, 1))
    message = str(caught.value)
    assert message.startswith(
        f"{provider}ExecutionProvider is not in this onnxruntime {ort.__version__} build"
    )
    assert "make setup-gpu" in message and "\n" not in message


def test_a_broken_model_file_is_unavailable_with_the_first_error_line(policy, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    model = ModelUnderTest("policy", policy.module, broken, policy.samples)
    with pytest.raises(EngineUnavailable) as caught:
        probe(make_engine("ort_cpu", model, _settings(tmp_path)), policy.samples[:1], (1, 1))
    assert "\n" not in str(caught.value) and str(caught.value)


def test_runner_measures_available_engines_and_marks_the_rest(policy, tmp_path):
    result = run_benchmark([policy], SETTINGS, threads=1, trt_cache_dir=tmp_path / "trt_cache")
    keys = [(r["engine"], r["batch"]) for r in result.rows]
    assert keys == [(e, b) for e in ENGINE_SPECS for b in (1, 4)]  # config order, batches ascending
    by_key = {(r["engine"], r["batch"]): r for r in result.rows}
    for batch in (1, 4):
        for engine in ("torch_eager_cpu", "ort_cpu"):
            r = by_key[(engine, batch)]
            assert r["status"] == "ok" and r["correct"] is True and r["rel_l2_error"] < 1e-5
            assert r["latency_p50_ms"] <= r["latency_p95_ms"] <= r["latency_p99_ms"]
            assert r["throughput_sps"] == pytest.approx(batch * 1000 / r["latency_mean_ms"])
            assert r["peak_rss_mb"] > 0 and r["cpu_util_pct"] > 0 and r["build_seconds"] > 0
            assert r["gpu_util_pct"] is None and r["vram_mb"] is None
        if not HAS_CUDA:
            r = by_key[("torch_cuda_graph", batch)]
            assert (
                r["status"] == "unavailable"
                and r["latency_p95_ms"] is None
                and "no CUDA device" in r["reason"]
            )
    assert by_key[("torch_eager_cpu", 1)]["rel_l2_error"] == 0.0  # the reference itself
    ok = [r for r in result.rows if r["status"] == "ok"]
    assert result.raw.height == len(ok) * 6 * 3
    assert result.raw.group_by("engine", "batch").len()["len"].to_list() == [18] * len(ok)

    names = {"m": "metrics.parquet", "c": "metrics.csv", "r": "raw.parquet", "s": "selection.json"}
    paths = {k: tmp_path / f for k, f in names.items()}
    write_outputs(result, SETTINGS, ["policy"], metrics_parquet=paths["m"], metrics_csv=paths["c"],
                  raw_parquet=paths["r"], selection_json=paths["s"])  # fmt: skip
    metrics = pl.read_parquet(paths["m"])
    assert metrics.columns == list(METRIC_SCHEMA) and metrics.height == len(result.rows)
    assert pl.read_csv(paths["c"]).height == metrics.height
    assert pl.read_parquet(paths["r"]).columns == [
        "model",
        "engine",
        "batch",
        "trial",
        "iteration",
        "latency_ms",
    ]
    selection = json.loads(paths["s"].read_text())
    chosen = selection["models"]["policy"]["chosen"]
    measured = metrics.filter(pl.col("status") == "ok")
    best = measured.sort("latency_p95_ms").row(0, named=True)
    assert chosen["latency_p95_ms"] <= best["latency_p95_ms"] * 1.05
    assert any(s.startswith("Chosen: ") for s in selection["models"]["policy"]["reasoning"])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_engines_run_and_are_correct(policy, tmp_path):
    settings = {**SETTINGS, "engines": ["torch_eager_cuda", "torch_cuda_graph", "torch_cuda_graph_bf16"]}
    if ORT_CUDA:
        settings["engines"] += ["ort_cuda"]
    result = run_benchmark([policy], settings, threads=1, trt_cache_dir=tmp_path / "trt_cache")
    for r in result.rows:
        assert r["status"] == "ok", r
        assert r["correct"] is True and r["vram_mb"] is not None


def test_iobinding_runner_copies_in_and_out_each_call(policy):
    # The CUDA engines' IO-binding path, exercised with CPU buffers (the same ONNX Runtime API).
    from trainrelay.benchmark.engines import iobinding_runner

    session = ort.InferenceSession(str(policy.onnx_path), providers=["CPUExecutionProvider"])
    batch = tile_batch(policy.samples, 4)
    run, _keep = iobinding_runner(ort, session, batch, (4, 1), "cpu")
    expected = session.run(None, {"x": batch})[0]
    np.testing.assert_allclose(run(), expected, rtol=1e-6)
    batch[:] = batch[::-1].copy()  # new values in the same host array are picked up by the next call
    np.testing.assert_allclose(run(), session.run(None, {"x": batch})[0], rtol=1e-6)

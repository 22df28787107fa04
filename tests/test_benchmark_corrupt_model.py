"""A corrupt ONNX file is an error about the file, never an engine that is "unavailable" here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainrelay.benchmark.engines import ModelUnderTest
from trainrelay.benchmark.stage import run_benchmark
from trainrelay.errors import DataError
from trainrelay.export import export_module
from trainrelay.export.onnx_export import check_onnx_file

FIX = "rerun `snakemake -j1 --forcerun export_onnx`"
SETTINGS = {
    "engines": ["torch_eager_cpu", "ort_cpu"],
    "batches": [1],
    "warmup_iterations": 1,
    "warmup_ms": 1,
    "iterations": 2,
    "trials": 1,
    "sample_interval_ms": 5,
    "tolerance": {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2},
    "constraints": {},
    "objective": {"policy": "latency"},
    "tie_tolerance": 0.05,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, np.ndarray]:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).eval()
    path = tmp_path_factory.mktemp("onnx") / "policy.onnx"
    samples = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    export_module(module, torch.from_numpy(samples), path)
    return module, path, samples


def test_a_valid_model_passes(exported: tuple[nn.Module, Path, np.ndarray]) -> None:
    check_onnx_file(exported[1], FIX)


@pytest.mark.parametrize(
    ("cut", "why"),
    [(0.5, "InvalidProtobuf"), (0.9, "InvalidProtobuf"), (0.0, "empty file")],
)
def test_a_cut_file_names_itself_and_the_fix(
    exported: tuple[nn.Module, Path, np.ndarray], tmp_path: Path, cut: float, why: str
) -> None:
    data = exported[1].read_bytes()
    broken = tmp_path / "forecaster.onnx"
    broken.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DataError) as caught:
        check_onnx_file(broken, FIX)
    assert str(caught.value) == f"{broken} is not a valid ONNX model ({why}): {FIX}"


def test_a_missing_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"forecaster\.onnx is missing: rerun"):
        check_onnx_file(tmp_path / "forecaster.onnx", FIX)


def test_benchmark_stops_before_measuring_a_corrupt_model(
    exported: tuple[nn.Module, Path, np.ndarray], tmp_path: Path
) -> None:
    module, path, samples = exported
    broken = tmp_path / "policy.onnx"
    broken.write_bytes(path.read_bytes()[:100])
    model = ModelUnderTest("policy", module, broken, samples)
    # not rows of "unavailable" engines and a torch engine chosen instead: one error with the fix
    with pytest.raises(DataError, match=r"policy\.onnx is not a valid ONNX model \(InvalidProtobuf\): rerun"):
        run_benchmark([model], SETTINGS, threads=1, trt_cache_dir=tmp_path / "trt", onnx_fix=FIX)

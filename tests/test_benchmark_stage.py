"""The stage's CUDA context set-up before VRAM baselines (runs without a GPU: CUDA is faked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainrelay.benchmark import stage
from trainrelay.benchmark.engines import EngineSettings, EngineUnavailable, ModelUnderTest
from trainrelay.benchmark.stage import init_cuda_context

SETTINGS = {"tolerance": {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}}


@pytest.fixture
def fresh_guard(monkeypatch):
    """An empty 'context made' set, so one test's devices do not leak into another."""
    monkeypatch.setattr(stage, "_CUDA_CONTEXT_READY", set())
    return stage._CUDA_CONTEXT_READY


def test_init_cuda_context_is_a_no_op_without_cuda(monkeypatch, fresh_guard):
    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated a tensor without CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "ones", no_allocation)
    assert init_cuda_context(0) is False
    assert fresh_guard == set()  # not marked, so a later call with CUDA would still make the context


def test_init_cuda_context_touches_each_device_once(monkeypatch, fresh_guard):
    real_ones = torch.ones
    allocated, synced = [], []

    def fake_ones(*size, device=None, **kwargs):
        allocated.append(str(device))
        return real_ones(*size, **kwargs)  # a CPU tensor stands in for the device one

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "ones", fake_ones)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(str(device)))
    assert [init_cuda_context(3), init_cuda_context(3), init_cuda_context(1)] == [True, True, True]
    assert allocated == ["cuda:3", "cuda:1"]
    assert synced == ["cuda:3", "cuda:1"]
    assert fresh_guard == {1, 3}


class _Closed:
    closed = False

    def close(self) -> None:
        self.closed = True


def _measure_unavailable(monkeypatch, engine_name: str, events: list[str]) -> list[dict]:
    """Run _measure_engine up to the probe (which fails), recording the order of GPU steps."""

    def init(device_id: int) -> bool:
        events.append(f"init {device_id}")
        return False

    def baseline(device_id: int) -> float:
        events.append(f"baseline {device_id}")
        return 1234.0

    def probe(*args):
        events.append("probe")
        raise EngineUnavailable("no CUDA device here")

    engine = _Closed()
    monkeypatch.setattr(stage, "init_cuda_context", init)
    monkeypatch.setattr(stage, "gpu_memory_used_mb", baseline)
    monkeypatch.setattr(stage, "make_engine", lambda *args: engine)
    monkeypatch.setattr(stage, "probe", probe)
    model = ModelUnderTest("policy", None, Path("policy.onnx"), np.zeros((2, 3), dtype=np.float32))
    settings = EngineSettings(threads=1, batches=(1, 4), trt_cache_dir=Path("trt"), device_id=2)
    references = {1: np.zeros((1, 1), dtype=np.float32), 4: np.zeros((4, 1), dtype=np.float32)}
    rows = stage._measure_engine(model, engine_name, SETTINGS, settings, references, [])
    assert engine.closed
    return rows


def test_cuda_engine_baseline_is_read_after_the_context_exists(monkeypatch):
    events: list[str] = []
    rows = _measure_unavailable(monkeypatch, "ort_cuda", events)
    assert events == ["init 2", "baseline 2", "probe"]
    assert [(r["batch"], r["status"], r["reason"]) for r in rows] == [
        (1, "unavailable", "no CUDA device here"),
        (4, "unavailable", "no CUDA device here"),
    ]


def test_cpu_engine_touches_no_gpu(monkeypatch):
    events: list[str] = []
    rows = _measure_unavailable(monkeypatch, "ort_cpu", events)
    assert events == ["probe"]
    assert [r["status"] for r in rows] == ["unavailable", "unavailable"]

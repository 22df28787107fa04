"""Timing method and resource sampling."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from trainrelay.benchmark.timing import latency_summary, time_trials, warm_up
from trainrelay.core.sampler import ResourceSampler


def test_warm_up_meets_both_minimums():
    calls = []
    start = time.perf_counter()
    done = warm_up(lambda: calls.append(1), min_iterations=50, min_seconds=0.05)
    assert done == len(calls) >= 50
    assert time.perf_counter() - start >= 0.05
    assert warm_up(lambda: time.sleep(0.002), min_iterations=3, min_seconds=0.0) == 3


def test_time_trials_reads_the_clock_after_sync():
    synced = []
    trials = time_trials(
        lambda: None, iterations=5, trials=3, sync=lambda: (time.sleep(0.002), synced.append(1))
    )
    assert [len(t) for t in trials] == [5, 5, 5] and len(synced) == 15
    assert min(float(t.min()) for t in trials) >= 2.0  # the 2 ms spent in sync is inside every sample


def test_summarise_reports_the_median_trial():
    trials = [np.full(100, 3.0), np.arange(1, 101, dtype=float), np.full(100, 100.0)]
    summary = latency_summary(trials, batch=10)
    assert summary.trial == 1  # means 3, 50.5, 100 -> the middle one
    assert summary.mean_ms == pytest.approx(50.5)
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p95_ms == pytest.approx(95.05)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.throughput_sps == pytest.approx(10 * 1000 / 50.5)
    assert latency_summary([np.full(4, 2.0), np.full(4, 1.0)], batch=1).trial == 1  # even count: lower middle


def test_sampler_measures_cpu_time_and_peak_rss():
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ResourceSampler(interval_s=0.002) as sampler:
        block = np.ones((64, 2**20 // 8))  # 64 MiB held during the window
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            block[0, 0] += 1.0
        del block
    expected = 100.0 * (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    usage = sampler.usage
    # The busy loop's share of a core depends on what else runs on the machine; the sampler must
    # agree with the process's own CPU clock over the same window.
    assert usage.cpu_util_pct == pytest.approx(expected, abs=15.0)
    assert usage.cpu_util_pct > 5.0
    assert usage.peak_rss_mb > 64
    assert usage.gpu_util_pct is None and usage.vram_mb is None  # CPU engine: no GPU columns


class FakeNVML:
    """pynvml as a MIG instance answers it: memory yes, utilisation NVMLError NotSupported.

    NVML cannot run on a machine without an NVIDIA driver, so this one stands in for it.
    """

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.handles: list[bytes] = []
        self.used = 1000 * 2**20

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> bytes:
        self.handles.append(uuid)
        return uuid

    def nvmlDeviceGetUtilizationRates(self, handle: bytes) -> object:
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetMemoryInfo(self, handle: bytes) -> object:
        self.used += 50 * 2**20
        return type("Memory", (), {"used": self.used})()


def test_sampler_on_a_mig_gpu_keeps_vram_and_notes_the_missing_utilisation(monkeypatch):
    from trainrelay.core import sampler as sampler_module

    nvml = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    # CUDA device 0 of this process is the MIG instance with this UUID (CUDA_VISIBLE_DEVICES remaps).
    mig = "MIG-5f2b7c1e-0000-4000-8000-000000000001"
    monkeypatch.setattr(sampler_module, "_cuda_uuid", lambda index: mig)
    with ResourceSampler(interval_s=0.002, gpu_baseline_mb=1000.0, device_index=0) as sampler:
        time.sleep(0.05)
    usage = sampler.usage
    assert nvml.handles and set(nvml.handles) == {mig.encode()}
    assert usage.gpu_util_pct is None and usage.vram_mb is not None and usage.vram_mb >= 100
    assert usage.notes == ["gpu_util_pct not measured: NVML utilisation query failed: Not Supported"]


def test_sampler_falls_back_to_the_driver_when_nvml_memory_fails(monkeypatch):
    """An NVML memory query that fails once is not asked again: VRAM comes from the CUDA driver
    (none on this machine, so no value), and the sampler keeps running."""
    from trainrelay.core import sampler as sampler_module

    nvml = FakeNVML()
    calls = []

    def broken_memory(handle: bytes) -> object:
        calls.append(handle)
        raise nvml.NVMLError("GPU is lost")

    nvml.nvmlDeviceGetMemoryInfo = broken_memory
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(
        sampler_module, "_cuda_uuid", lambda index: "GPU-5f2b7c1e-0000-4000-8000-000000000002"
    )
    with ResourceSampler(interval_s=0.002, gpu_baseline_mb=1000.0, device_index=0) as sampler:
        time.sleep(0.05)
    assert len(calls) == 1
    assert sampler.usage.vram_mb is None and sampler.usage.gpu_util_pct is None
    assert "VRAM read from the CUDA driver: NVML memory query failed: GPU is lost" in sampler.usage.notes
    assert not any("stopped early" in note for note in sampler.usage.notes)

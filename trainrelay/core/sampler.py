"""Resource use while an engine runs: CPU time, peak RSS, GPU utilisation and VRAM.

A background thread samples the process RSS (psutil) and, on a CUDA engine, the GPU's
utilisation and used memory through NVML (``nvidia-ml-py``, a GPU extra). CPU utilisation is
not sampled: it is the process's CPU time (``time.process_time``, nanosecond clock, all threads)
over the wall time of the measured window, exact where sampling would be noisy (100 % = one core
busy; the sampler thread's own polling is included and small). VRAM is reported over a baseline
read before the engine was built, so it is what the engine added. Where NVML is missing, used
VRAM comes from the CUDA driver (``torch.cuda.mem_get_info``) and GPU utilisation is not
measured; :attr:`ResourceSampler.notes` says so, to be carried into the metrics row.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch


def _cuda_uuid(device_index: int) -> str:
    """NVML's UUID ("GPU-..." or "MIG-...") of CUDA device ``device_index`` as this process sees it."""
    uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def _nvml_handle(device_index: int) -> tuple[Any, Any] | str:
    """(pynvml module, device handle), or the reason NVML cannot be used.

    The handle is found by UUID, not by index: NVML numbers every GPU of the machine and ignores
    CUDA_VISIBLE_DEVICES, so on a shared node (Slurm --gpus=1) NVML index 0 may be another job's GPU.
    """
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed (make setup-gpu)"
    try:
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(_cuda_uuid(device_index).encode())
    except Exception as exc:  # NVMLError_LibraryNotFound, driver mismatch, no such UUID...
        return f"NVML failed: {exc}"


def gpu_memory_used_mb(device_index: int = 0) -> float | None:
    """Used memory of the whole GPU in MiB (NVML, else the CUDA driver); None without CUDA."""
    nvml = _nvml_handle(device_index)
    if not isinstance(nvml, str):
        pynvml, handle = nvml
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    return _driver_memory_used_mb(device_index)


def _driver_memory_used_mb(device_index: int) -> float | None:
    """Used memory of the whole GPU in MiB as the CUDA driver reports it; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(device_index)
    return (total - free) / 2**20


@dataclass
class Usage:
    cpu_util_pct: float
    peak_rss_mb: float
    gpu_util_pct: float | None
    vram_mb: float | None
    notes: list[str] = field(default_factory=list)


class ResourceSampler:
    """Context manager; ``usage`` is filled in on exit.

    ``gpu_baseline_mb`` is the GPU's used memory before the engine existed (None: a CPU engine,
    GPU columns stay empty).
    """

    def __init__(
        self, interval_s: float = 0.005, gpu_baseline_mb: float | None = None, device_index: int = 0
    ):
        self.interval_s = interval_s
        self.gpu = gpu_baseline_mb is not None
        self.gpu_baseline_mb = gpu_baseline_mb
        self.device_index = device_index
        self.usage: Usage | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._rss_peak = 0
        self._gpu_util: list[float] = []
        self._vram_peak: float | None = None
        self._notes: list[str] = []
        self._nvml: tuple[Any, Any] | None = None
        self._util_supported = True

    def _sample(self) -> None:
        self._rss_peak = max(self._rss_peak, self._process.memory_info().rss)
        if not self.gpu:
            return
        used = None
        if self._nvml is not None:
            pynvml, handle = self._nvml
            if self._util_supported:
                try:
                    self._gpu_util.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                except pynvml.NVMLError as exc:  # NotSupported on MIG instances, per NVML's docs
                    self._util_supported = False
                    self._notes.append(f"gpu_util_pct not measured: NVML utilisation query failed: {exc}")
            try:
                used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            except pynvml.NVMLError as exc:
                self._nvml = None
                self._notes.append(f"VRAM read from the CUDA driver: NVML memory query failed: {exc}")
        if used is None:  # NVML was found unusable already (on entry or above): not asked again
            used = _driver_memory_used_mb(self.device_index)
        if used is not None:
            self._vram_peak = used if self._vram_peak is None else max(self._vram_peak, used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as exc:  # a dead sampler must not pass for a quiet GPU
                self._notes.append(f"resource sampling stopped early: {exc}")
                return

    def __enter__(self) -> ResourceSampler:
        if self.gpu:
            nvml = _nvml_handle(self.device_index)
            if isinstance(nvml, str):
                self._notes.append(f"gpu_util_pct not measured: {nvml}")
            else:
                self._nvml = nvml
        self._sample()
        self._cpu_start = time.process_time()
        self._wall_start = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="trainrelay-resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self._wall_start
        cpu = time.process_time() - self._cpu_start
        self._stop.set()
        self._thread.join()
        self._sample()
        vram = None
        if self.gpu and self._vram_peak is not None:
            vram = max(0.0, self._vram_peak - float(self.gpu_baseline_mb))
        self.usage = Usage(
            cpu_util_pct=100.0 * cpu / wall if wall > 0 else 0.0,
            peak_rss_mb=self._rss_peak / 2**20,
            gpu_util_pct=sum(self._gpu_util) / len(self._gpu_util) if self._gpu_util else None,
            vram_mb=vram,
            notes=list(self._notes),
        )
